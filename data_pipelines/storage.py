"""Paths that may be local or on Google Cloud Storage (`gs://bucket/...`).

Remote paths go through `etils.epath`, whose `gs://` backend is fsspec's `gcsfs` (the
`gcs` extra); orbax writes checkpoint arrays there through tensorstore's own GCS driver. What
cannot be written in place on an object store (an appended metrics file, a lock, the
ArrayRecord shards that the readers open by file name) lives in a local *mirror* directory
and is copied up (`upload`) or down (`download`) at well-defined points; see docs/tpu.md.

Credentials are checked once per process before the first remote access, because without them
gcsfs retries for about a minute and tensorstore forever before saying anything useful.
`STORAGE_EMULATOR_HOST` (a local GCS emulator, as the tests use) skips the check.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from typing import IO, Any

from data_pipelines.errors import DataError

REMOTE_PREFIXES = ("gs://",)


class StorageError(DataError):
  """A remote path cannot be used: no gcsfs, no credentials, or an access failure."""


def is_remote(path: str | os.PathLike | None) -> bool:
  return path is not None and str(path).startswith(REMOTE_PREFIXES)


def join(base: str, *parts: str) -> str:
  """os.path.join that keeps `gs://` intact (it already does; named for readers)."""
  return os.path.join(base, *parts)


def absolute(path: str) -> str:
  """A local path made absolute (orbax needs that); a remote one unchanged."""
  return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


@functools.cache
def _checked(bucket_uri: str) -> None:
  try:
    import gcsfs  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise StorageError(f"{bucket_uri}: gs:// paths need the gcsfs package; install it with "
                       "pip install 'gcsfs' (or this project's [gcs] extra)") from None
  if os.environ.get("STORAGE_EMULATOR_HOST"):
    return  # a local emulator (tests): no Google credentials involved
  import google.auth  # pylint: disable=import-outside-toplevel
  import google.auth.exceptions  # pylint: disable=import-outside-toplevel
  try:
    google.auth.default()
  except google.auth.exceptions.DefaultCredentialsError:
    raise StorageError(
        f"{bucket_uri}: no Google Cloud credentials found (on a TPU VM the VM's service "
        "account provides them; elsewhere run `gcloud auth application-default login` or set "
        "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file)") from None


def check(path: str) -> None:
  """Raises StorageError when `path` is remote and cannot be reached (checked once per bucket)."""
  if is_remote(path):
    match = re.match(r"gs://([^/]+)", str(path))
    if not match:
      raise StorageError(f"{path}: a gs:// path needs a bucket name (gs://BUCKET/...)")
    _checked(f"gs://{match.group(1)}")


def filesystem(path: str) -> Any:
  """The fsspec filesystem of a remote path (the one epath uses)."""
  check(path)
  import fsspec  # pylint: disable=import-outside-toplevel
  return fsspec.filesystem("gcs")


def path(p: str) -> Any:
  """An `etils.epath.Path` (gs:// through gcsfs, local paths absolute)."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  check(p)
  return epath.Path(absolute(p))


def open_file(p: str, mode: str = "rb") -> IO[Any]:
  if is_remote(p):
    return filesystem(p).open(p, mode)
  return open(p, mode)


def exists(p: str) -> bool:
  return filesystem(p).exists(p) if is_remote(p) else os.path.exists(p)


def isfile(p: str) -> bool:
  return filesystem(p).isfile(p) if is_remote(p) else os.path.isfile(p)


def isdir(p: str) -> bool:
  return filesystem(p).isdir(p) if is_remote(p) else os.path.isdir(p)


def read_text(p: str) -> str:
  with open_file(p, "rb") as f:
    return f.read().decode("utf-8")


def write_text(p: str, text: str) -> None:
  """Writes a whole file: in place on GCS (an object appears complete or not at all), through a
  temporary file and a rename locally."""
  if is_remote(p):
    with open_file(p, "wb") as f:
      f.write(text.encode("utf-8"))
    return
  tmp = p + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, p)


def remote_files(p: str) -> list[str]:
  """All files under a remote directory (or the file itself), as gs:// paths, sorted."""
  fs = filesystem(p)
  if fs.isfile(p):
    return [p]
  return sorted("gs://" + f for f in fs.find(p))


def remote_glob(pattern: str) -> list[str]:
  return sorted("gs://" + f for f in filesystem(pattern).glob(pattern))


def file_sha256(p: str) -> str:
  """The SHA-256 hex digest of a local file's bytes (tokenizer fingerprints)."""
  with open(p, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def stat_identity(p: str) -> str:
  """Size and generation of a remote object: changes whenever the object is rewritten."""
  info = filesystem(p).info(p)
  return f"{p}|{info.get('size')}|{info.get('generation') or info.get('etag') or info.get('updated')}"


def upload(local: str, remote: str) -> None:
  """Copies a local file or directory tree to `remote` (same relative layout), overwriting."""
  fs = filesystem(remote)
  if os.path.isdir(local):
    for root, _, files in os.walk(local):
      for name in sorted(files):
        src = os.path.join(root, name)
        fs.put_file(src, join(remote, os.path.relpath(src, local)))
  elif os.path.exists(local):
    fs.put_file(local, remote)


def download(remote: str, local: str) -> None:
  """Copies a remote file or directory tree to `local` (same relative layout)."""
  fs = filesystem(remote)
  if fs.isfile(remote):
    os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
    fs.get_file(remote, local)
    return
  prefix = remote.rstrip("/") + "/"
  for src in remote_files(remote):
    dst = os.path.join(local, src[len(prefix):])
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    fs.get_file(src, dst)


def local_mirror(p: str, kind: str = "workdirs") -> str:
  """The local directory that stands in for remote `p` on this machine (p itself if local).

  `$XDG_CACHE_HOME/t5x_like/<kind>/<bucket>/<path>` (or ~/.cache/...), so every host of a job
  and every re-run on one VM uses the same place.
  """
  if not is_remote(p):
    return os.path.abspath(os.path.expanduser(p))
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  rel = str(p)[len("gs://"):].strip("/")
  safe = re.sub(r"[^A-Za-z0-9_./-]+", "_", rel).replace("..", "_")
  if safe != rel:  # two different remote names must not share a mirror
    safe += "-" + hashlib.sha256(rel.encode()).hexdigest()[:8]
  return os.path.join(base, "t5x_like", kind, "gs", safe)
