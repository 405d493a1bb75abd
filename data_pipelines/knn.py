"""k nearest neighbours of L2-normalised document embeddings by inner product (cosine).

Small corpora (up to `EXACT_MAX` documents) get the exact answer from blocked matrix products
(memory: one block of similarities at a time). Larger ones need `faiss` (the optional extra
`pretrain[icp]`): an inverted-file index (IVF, flat lists, inner product) whose coarse
quantiser is trained on a fixed-seed sample; with 2 sqrt(N) lists and 8 probed, a query scans
~4 sqrt(N) vectors, so the search grows as N^1.5 (docs/benchmarks.md).

Both return the neighbours of each row sorted by similarity, highest first, ties broken by the
lower index, the row itself excluded: the same inputs give the same lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from data_pipelines.errors import DataError

EXACT_MAX = 20_000  # above this, exact search costs O(n^2 d): faiss takes over
_BLOCK = 1024  # query rows per matrix product
_NPROBE = 8  # IVF lists visited per query
_TRAIN_PER_LIST = 40  # training sample per IVF list (faiss asks for >= 39)

Progress = Callable[[int], None]  # called with the number of rows just finished


def nearest_neighbours(emb_ND: np.ndarray, k: int, exact_max: int = EXACT_MAX,
                       progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Returns (ids int32[N, k], similarities float32[N, k]) of each row's k most similar rows.

  A row with fewer than k findable neighbours (approximate search only) is padded with id -1
  and similarity -inf.

  Raises:
    DataError: k < 1 or k >= N, or N > exact_max without faiss installed.
  """
  n = len(emb_ND)
  if not 1 <= k < n:
    raise DataError(f"k nearest neighbours needs 1 <= k < the number of documents; got k={k} "
                    f"for {n} documents")
  emb_ND = np.ascontiguousarray(emb_ND, np.float32)
  if n <= exact_max:
    return _exact(emb_ND, k, progress)
  try:
    import faiss  # the optional extra, needed for large corpora only
  except ImportError:
    raise DataError(f"the nearest-neighbour search over {n} documents (more than {exact_max}) "
                    f"needs faiss: pip install 'faiss-cpu>=1.15.1' (the extra "
                    f"t5x-like-pretrain[icp])") from None
  return _ivf(faiss, emb_ND, k, progress)


def _sorted_topk(sims_BN: np.ndarray, ids_BN: np.ndarray | None, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """The k best columns of each row, by similarity then lower id."""
  part = np.argpartition(-sims_BN, k - 1, axis=1)[:, :k] if sims_BN.shape[1] > k else (
      np.broadcast_to(np.arange(sims_BN.shape[1]), sims_BN.shape))
  sims = np.take_along_axis(sims_BN, part, axis=1)
  ids = part if ids_BN is None else np.take_along_axis(ids_BN, part, axis=1)
  # Deterministic order: similarity descending, then id ascending (invalid -1 ids last).
  key_ids = np.where(ids < 0, np.iinfo(np.int64).max, ids)
  order = np.lexsort((key_ids, -sims), axis=1)
  return (np.take_along_axis(ids, order, axis=1).astype(np.int32),
          np.take_along_axis(sims, order, axis=1).astype(np.float32))


def _exact(emb_ND: np.ndarray, k: int, progress: Progress | None
           ) -> tuple[np.ndarray, np.ndarray]:
  n = len(emb_ND)
  ids, sims = np.empty((n, k), np.int32), np.empty((n, k), np.float32)
  for start in range(0, n, _BLOCK):
    stop = min(n, start + _BLOCK)
    s_BN = emb_ND[start:stop] @ emb_ND.T
    s_BN[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not its own neighbour
    ids[start:stop], sims[start:stop] = _sorted_topk(s_BN, None, k)
    if progress:
      progress(stop - start)
  return ids, sims


def _ivf(faiss, emb_ND: np.ndarray, k: int, progress: Progress | None
         ) -> tuple[np.ndarray, np.ndarray]:
  n, d = emb_ND.shape
  nlist = max(1, int(2 * math.sqrt(n)))
  quantizer = faiss.IndexFlatIP(d)
  index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
  sample = np.random.default_rng(0).choice(n, min(n, nlist * _TRAIN_PER_LIST), replace=False)
  index.cp.seed = 1234
  index.train(emb_ND[np.sort(sample)])
  index.add(emb_ND)
  index.nprobe = min(nlist, _NPROBE)
  ids, sims = np.empty((n, k), np.int32), np.empty((n, k), np.float32)
  block = 16 * _BLOCK
  for start in range(0, n, block):
    stop = min(n, start + block)
    s, i = index.search(emb_ND[start:stop], k + 1)
    # Drop the row itself (not always first: a near-duplicate may tie with it).
    i = np.where(i == np.arange(start, stop)[:, None], -1, i)
    s = np.where(i < 0, -np.inf, s).astype(np.float32)
    ids[start:stop], sims[start:stop] = _sorted_topk(s, i, k)
    if progress:
      progress(stop - start)
  return ids, sims
