"""A local Google Cloud Storage emulator for tests of gs:// paths.

`gcp-storage-emulator` (pure Python, in memory) serves the GCS JSON API on localhost; the
environment it sets points both clients the code uses at it: fsspec's gcsfs (epath, our own
files) and tensorstore's GCS driver (orbax's checkpoint arrays). The code under test is the
production code for gs:// paths; only the endpoint differs.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

# Read once when gcsfs is imported: without it gcsfs first asks for the bucket layout over gRPC,
# which the emulator does not serve (set before any test imports gcsfs in this process).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def environment(url: str) -> dict[str, str]:
  """What a process needs to reach the emulator at `url` without Google credentials."""
  return {
      "STORAGE_EMULATOR_HOST": url,  # gcsfs and google-cloud-storage
      "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: anonymous access (read when fsspec is imported)
      # gcsfs otherwise first asks for the bucket layout over gRPC, which the emulator lacks
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore's GCS driver
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",  # tensorstore: skip credential discovery
      "TENSORSTORE_GCS_HTTP_VERSION": "1.1",
  }


_ORIGINAL_DOWNLOAD: list = []


def _download_with_generation(request, response, storage, *args, **kwargs):
  """The emulator's media download plus the `x-goog-generation` header that Cloud Storage
  sends and tensorstore reads (orbax's OCDBT manifest is read-modify-written by generation)."""
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=import-outside-toplevel
  _ORIGINAL_DOWNLOAD[0](request, response, storage, *args, **kwargs)
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except NotFound:
    return
  response["x-goog-generation"] = str(obj["generation"])
  response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))


def _patch_handlers() -> None:
  from gcp_storage_emulator import server  # pylint: disable=import-outside-toplevel
  from gcp_storage_emulator.handlers import objects  # pylint: disable=import-outside-toplevel
  if _ORIGINAL_DOWNLOAD:
    return
  _ORIGINAL_DOWNLOAD.append(objects.download)
  objects.download = _download_with_generation  # also what GET ...?alt=media calls
  server.HANDLERS = tuple(
      (pattern, {method: _download_with_generation if fn is _ORIGINAL_DOWNLOAD[0] else fn
                 for method, fn in methods.items()})
      for pattern, methods in server.HANDLERS)


@contextlib.contextmanager
def running(bucket: str = "bucket") -> Iterator[str]:
  """Starts the emulator with an empty `bucket`; yields its URL."""
  from gcp_storage_emulator import server  # pylint: disable=import-outside-toplevel
  _patch_handlers()
  port = _free_port()
  emulator = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  emulator.start()
  try:
    yield f"http://127.0.0.1:{port}"
  finally:
    emulator.stop()


@contextlib.contextmanager
def in_this_process(url: str) -> Iterator[None]:
  """Points this process's gcsfs and tensorstore at the emulator for the block's duration."""
  import fsspec.config  # pylint: disable=import-outside-toplevel
  env = environment(url)
  saved_env = {k: os.environ.get(k) for k in env}
  saved_conf = dict(fsspec.config.conf.get("gcs", {}))
  os.environ.update(env)
  fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"  # the env var is read at import
  try:
    yield
  finally:
    for k, v in saved_env.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    fsspec.config.conf["gcs"] = saved_conf
    from gcsfs import GCSFileSystem  # pylint: disable=import-outside-toplevel
    GCSFileSystem.clear_instance_cache()  # no instance bound to the stopped emulator remains
