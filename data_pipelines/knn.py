"""k nearest neighbours of L2-normalised document embeddings by inner product (cosine).

Small corpora (up to `EXACT_MAX` documents) get the exact answer from blocked matrix products
(memory: one block of similarities at a time). Larger ones need `faiss` (the optional extra
`pretrain[icp]`) for an inverted-file search whose work per row does not grow with N:

- centroids of lists of ~256 rows by two-level spherical k-means (fixed-seed samples);
- each row's 8 most similar centroids through an HNSW graph over the centroids;
- each row compared exactly with the rows of those 8 lists, list by list (one BLAS product
  per list).

A row meets ~2,048 candidates on average whatever N is; recall@10 against the exact search is
0.995 on the benchmark's 100,000 synthetic documents. Measured growth from 100,000 to
1,000,000 documents: 19.8x (uneven list sizes and cache misses; docs/benchmarks.md).

Both return the neighbours of each row sorted by similarity, highest first, ties broken by the
lower index, the row itself excluded: the same inputs give the same lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from data_pipelines.errors import DataError

# The approximate search's name and parameters, part of the order's cache key: a prepared
# order is reused only if the same search would find the same neighbours.
SEARCH = "lists256-probe8-hnsw32"
EXACT_MAX = 20_000  # above this, exact search costs O(n^2 d): faiss takes over
_BLOCK = 1024  # query rows per matrix product
_LIST = 256  # rows per list of the partition (approximate search)
_NPROBE = 8  # lists each list's rows are compared with (itself included)
_TRAIN_PER_LIST = 40  # k-means training rows per centroid (faiss asks for >= 39)
_KMEANS_ITERS = 10

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
  return _partitioned(faiss, emb_ND, k, progress)


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


def _kmeans(faiss, x_ND: np.ndarray, clusters: int, seed: int) -> np.ndarray:
  """float32[clusters, D] spherical k-means centroids, trained on at most _TRAIN_PER_LIST rows
  per centroid drawn with a fixed seed (deterministic: faiss's assignment is BLAS-blocked)."""
  if clusters <= 1:
    c = x_ND.mean(axis=0, keepdims=True)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
  n = len(x_ND)
  rows = np.random.default_rng(seed).choice(n, min(n, clusters * _TRAIN_PER_LIST), replace=False)
  km = faiss.Kmeans(x_ND.shape[1], clusters, niter=_KMEANS_ITERS, seed=seed, spherical=True,
                    max_points_per_centroid=_TRAIN_PER_LIST, min_points_per_centroid=1,
                    verbose=False)
  km.train(np.ascontiguousarray(x_ND[np.sort(rows)]))
  return km.centroids


def _assign(x_ND: np.ndarray, centroids_CD: np.ndarray) -> np.ndarray:
  """int64[N]: each row's most similar centroid (lowest index on ties)."""
  out = np.empty(len(x_ND), np.int64)
  for start in range(0, len(x_ND), 16 * _BLOCK):
    out[start:start + 16 * _BLOCK] = np.argmax(x_ND[start:start + 16 * _BLOCK] @ centroids_CD.T,
                                               axis=1)
  return out


def _group(keys_N: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices sorted by key, stably; bounds int[count + 1]): group g is
  order[bounds[g]:bounds[g + 1]]."""
  order = np.argsort(keys_N, kind="stable")
  return order, np.concatenate([[0], np.cumsum(np.bincount(keys_N, minlength=count))])


def _centroids(faiss, emb_ND: np.ndarray) -> np.ndarray:
  """float32[lists, D]: centroids of about N/_LIST lists by two-level k-means (√lists top
  clusters, each split by its own k-means in proportion to its size), so training grows
  linearly with N where one k-means over N/_LIST centroids would grow as N^2."""
  n = len(emb_ND)
  lists = max(1, round(n / _LIST))
  top = max(1, round(math.sqrt(lists)))
  order, bounds = _group(_assign(emb_ND, _kmeans(faiss, emb_ND, top, seed=1234)), top)
  centroids = [_kmeans(faiss, emb_ND[order[bounds[g]:bounds[g + 1]]],
                       max(1, round((bounds[g + 1] - bounds[g]) / _LIST)), seed=1234 + g)
               for g in range(top) if bounds[g + 1] > bounds[g]]
  return np.ascontiguousarray(np.concatenate(centroids), np.float32)


def _probe(faiss, emb_ND: np.ndarray, centroids_CD: np.ndarray) -> np.ndarray:
  """int64[N, P]: each row's P most similar centroids, most similar first, through an HNSW
  graph over the centroids (built on one thread: the graph, hence the answer, is the same on
  every run)."""
  graph = faiss.IndexHNSWFlat(centroids_CD.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
  graph.hnsw.efConstruction = 40
  threads = faiss.omp_get_max_threads()
  faiss.omp_set_num_threads(1)
  try:
    graph.add(centroids_CD)
  finally:
    faiss.omp_set_num_threads(threads)
  probes = min(_NPROBE, len(centroids_CD))
  graph.hnsw.efSearch = max(64, 2 * probes)
  out = np.empty((len(emb_ND), probes), np.int64)
  for start in range(0, len(emb_ND), 16 * _BLOCK):
    _, out[start:start + 16 * _BLOCK] = graph.search(emb_ND[start:start + 16 * _BLOCK], probes)
  return out


def _partitioned(faiss, emb_ND: np.ndarray, k: int, progress: Progress | None
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Approximate kNN, inverted-file style: rows are filed under their most similar centroid
  (lists of ~_LIST rows), and each row is compared exactly with the rows of its _NPROBE most
  similar lists. The comparison runs list by list (all rows probing a list against the list's
  rows: one BLAS product), merged into each row's running top k. A row meets
  ~_NPROBE x _LIST candidates on average whatever N is."""
  n = len(emb_ND)
  centroids = _centroids(faiss, emb_ND)
  lists = len(centroids)
  probe = _probe(faiss, emb_ND, centroids)
  probe[probe < 0] = lists  # HNSW found fewer lists: an empty list `lists` stands in
  need = np.count_nonzero(probe < lists, axis=1)
  members, m_bounds = _group(probe[:, 0], lists + 1)
  flat, q_bounds = _group(probe.ravel(), lists + 1)  # (row, slot) pairs grouped by list
  ids, sims = np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32)
  done = np.zeros(n, np.int8)
  for c in range(lists):
    rows = members[m_bounds[c]:m_bounds[c + 1]]
    queries = np.sort(flat[q_bounds[c]:q_bounds[c + 1]] // probe.shape[1])
    if len(rows) and len(queries):
      s = emb_ND[queries] @ emb_ND[rows].T
      i = np.broadcast_to(rows, s.shape)
      s[i == queries[:, None]] = -np.inf  # not its own neighbour
      ids[queries], sims[queries] = _sorted_topk(np.concatenate([sims[queries], s], axis=1),
                                                 np.concatenate([ids[queries], i], axis=1), k)
    if progress and len(queries):  # a probed list without rows counts as visited too
      done[queries] += 1
      finished = int(np.count_nonzero(done[queries] == need[queries]))
      if finished:
        progress(finished)
  return ids.astype(np.int32), sims
