"""Where prepared data is cached: the key of a preparation, its local directory, and the
shared remote (gs://) copy that hosts download instead of preparing again.

The key changes with everything that changes the output (`cache_key`), so a directory under
the cache root is never reused for other inputs; `prepare.ensure_prepared` ties it together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil

from data_pipelines import icp, sources, storage
from data_pipelines.manifest import FORMAT_VERSION, MANIFEST_NAME, packing_entry
from data_pipelines.packing import PackSpec
from data_pipelines.tokenizer import Tokenizer

_LOG = logging.getLogger(__name__)


def cache_key(corpus_spec: str, tokenizer: Tokenizer, block_length: int,
              validation_fraction: float = 0.02, pack: PackSpec | None = None,
              separated: bool = True, order: icp.OrderSpec | None = None) -> str:
  """`<readable corpus>-L<block_length>[-<readable pack key>][-icp]-<16 hex>` from everything
  that changes the output; blocks mode with separators (`pack=None`, `separated=True`) in
  corpus order keeps the key it had before packing, separator-less blocks and the ICP order
  existed. `separated` is ignored in documents mode (no separators there)."""
  identity = [FORMAT_VERSION, sources.fingerprint(corpus_spec), tokenizer.sha256, block_length,
              validation_fraction]
  if pack is not None:
    identity.append(packing_entry(pack, block_length))
  elif not separated:
    # Not the separated blocks' key: caches prepared with EOS between documents (all before
    # span corruption dropped them) are never reused for it.
    identity.append({"separator": None})
  if order is not None:
    identity.append(order.fingerprint())
  digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
  readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(corpus_spec.rstrip("/")))[-40:]
  mode = "" if pack is None else "-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", pack.key)[:40]
  mode += "-icp" if order is not None else ""
  return f"{readable or 'corpus'}-L{block_length}{mode}-{digest}"


def prepared_dir(cache_root: str, corpus_spec: str, tokenizer: Tokenizer, block_length: int,
                 validation_fraction: float = 0.02, pack: PackSpec | None = None,
                 separated: bool = True, order: icp.OrderSpec | None = None) -> str:
  """Where the prepared data for these inputs lives under `cache_root`."""
  return os.path.join(cache_root, cache_key(corpus_spec, tokenizer, block_length,
                                            validation_fraction, pack, separated, order))


def upload_prepared(directory: str, remote: str) -> None:
  """Copies a prepared directory to gs://, the manifest last: a remote directory with a
  manifest is complete (readers download only those)."""
  for name in sorted(os.listdir(directory)):
    if name != MANIFEST_NAME:
      storage.upload(os.path.join(directory, name), storage.join(remote, name))
  storage.upload(os.path.join(directory, MANIFEST_NAME), storage.join(remote, MANIFEST_NAME))
  _LOG.info("uploaded the prepared data to %s", remote)


def download_prepared(remote: str, directory: str) -> None:
  """Copies a complete remote preparation into the local cache (ArrayRecord readers open local
  files), through a temporary directory renamed when whole."""
  tmp = directory + f".download-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  storage.download(remote, tmp)
  shutil.rmtree(directory, ignore_errors=True)
  os.rename(tmp, directory)
  _LOG.info("downloaded the prepared data from %s", remote)
