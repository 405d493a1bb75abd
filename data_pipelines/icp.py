"""In-Context Pretraining order (Shi et al. 2023): related documents next to each other.

`order_documents` turns a split's documents (token ids) into the order they are concatenated
in before being cut into windows:

1. Embed each document: hashed n-gram TF-IDF (`tfidf_embed`), or vectors the caller supplies
   (`pretrain/data.py`: mean-pooled states of a checkpoint), L2-normalised.
2. k nearest neighbours by cosine (`knn.nearest_neighbours`: exact for small corpora, an
   inverted-file search on faiss for large ones).
3. Drop duplicates: exact copies (same ids) and near-duplicates (TF-IDF cosine >= `dedup`,
   whatever embedding orders the documents), keeping the first in corpus order.
4. The greedy approximate maximum travelling-salesman path of the paper: start at the
   unvisited document of lowest degree (how often it is another document's neighbour, ties by
   index), move to its most similar unvisited neighbour, and at a dead end restart at the next
   unvisited document of lowest degree. Every kept document is visited exactly once.
5. A final pass over the path drops any document whose predecessor is a near-duplicate the
   kNN lists missed (approximate search), so copies are never adjacent.

Memory grows linearly with the corpus (embeddings N x dim floats, kNN lists N x k), and so
does the work: an inverted-file search with lists of constant size (knn.py; measured 19.8x
from 100 k to 1 M documents) and a traversal of one pass with O(k) work per document.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from array import array
from collections.abc import Callable, Sequence

import numpy as np
import tqdm

from data_pipelines import knn
from data_pipelines.errors import DataError

ORDERS = ("random", "icp")
_BUCKETS_LOG2 = 20  # hashed feature space for document frequencies (2^20 buckets)
_CHUNK_TOKENS = 1 << 22  # tokens hashed per vectorised step
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing multiplier
_MIX2 = np.uint64(0xC2B2AE3D27D4EB4F)

Embedder = Callable[[Sequence[np.ndarray]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class OrderSpec:
  """How a split is ordered; `fingerprint()` goes into the cache key and the manifest.

  embedding: "tfidf", or a name for the caller's `embed` (e.g. a checkpoint and its step).
  """
  k: int = 10
  dedup: float = 0.9  # cosine at or above which two documents are near-duplicates
  embedding: str = "tfidf"
  dim: int = 256  # TF-IDF: dense dimensions the hashed features are projected to
  seed: int = 0  # shuffles the windows
  embed: Embedder | None = dataclasses.field(default=None, compare=False)

  def fingerprint(self) -> dict:
    return {"order": "icp", "k": self.k, "dedup": self.dedup, "embedding": self.embedding,
            "dim": self.dim if self.embedding == "tfidf" else None, "seed": self.seed,
            "exact_max": knn.EXACT_MAX, "search": knn.SEARCH}


@dataclasses.dataclass(frozen=True)
class OrderReport:
  """What ordering one split did."""
  num_documents: int  # before removing duplicates
  num_duplicates: int  # removed: exact copies + near-duplicates
  num_paths: int  # restarts of the traversal + 1
  mean_adjacent_similarity: float  # cosine of consecutive documents in the path
  seconds: dict[str, float]

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _mix(x: np.ndarray) -> np.ndarray:
  """A uint64 hash of uint64 keys (multiply, xor-shift, multiply)."""
  x = x * _MIX
  x ^= x >> np.uint64(29)
  return x * _MIX2


def _doc_features(docs: Sequence[np.ndarray], lo: int, hi: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Unique (document, bucket) pairs of docs[lo:hi] with their counts: token unigrams and
  bigrams hashed into 2^_BUCKETS_LOG2 buckets. Returns (doc int64, bucket int64, tf int64)."""
  lengths = np.array([len(d) for d in docs[lo:hi]], np.int64)
  ids = (np.concatenate([np.asarray(d, np.uint64) for d in docs[lo:hi]])
         if lengths.sum() else np.zeros(0, np.uint64))
  doc = np.repeat(np.arange(hi - lo, dtype=np.int64), lengths)
  same = doc[1:] == doc[:-1]  # bigrams never cross documents
  with np.errstate(over="ignore"):
    uni = _mix(ids)
    bi = _mix(_mix(ids[:-1][same]) ^ ids[1:][same] ^ np.uint64(1))
  keys = np.concatenate([uni, bi]) >> np.uint64(64 - _BUCKETS_LOG2)
  owner = np.concatenate([doc, doc[1:][same]])
  pairs, tf = np.unique(owner << _BUCKETS_LOG2 | keys.astype(np.int64), return_counts=True)
  return pairs >> _BUCKETS_LOG2, pairs & ((1 << _BUCKETS_LOG2) - 1), tf


def _chunks(docs: Sequence[np.ndarray]) -> list[tuple[int, int]]:
  bounds, start, tokens = [], 0, 0
  for i, d in enumerate(docs):
    tokens += len(d)
    if tokens >= _CHUNK_TOKENS:
      bounds.append((start, i + 1))
      start, tokens = i + 1, 0
  if start < len(docs):
    bounds.append((start, len(docs)))
  return bounds


def tfidf_embed(docs: Sequence[np.ndarray], dim: int = 256,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
  """float32[N, dim] L2-normalised TF-IDF vectors of token-id unigrams and bigrams.

  The tokenizer's pieces are whole frequent words and, for the rest, word pieces (character
  n-grams), so its unigrams and bigrams are the word and character n-grams of the text, in
  any language, and are hashed without another pass over the text. Term weight
  (1 + log tf) * idf with idf = log((1 + N) / (1 + df)) + 1 over 2^20 hashed buckets; the
  buckets are then projected to `dim` dense coordinates with a random sign (feature hashing),
  which preserves inner products in expectation. A document without tokens is all zeros.
  """
  n = len(docs)
  chunks = _chunks(docs)
  df = np.zeros(1 << _BUCKETS_LOG2, np.int64)
  for lo, hi in chunks:
    _, bucket, _ = _doc_features(docs, lo, hi)
    df += np.bincount(bucket, minlength=len(df))
  idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
  h = _mix(np.arange(1 << _BUCKETS_LOG2, dtype=np.uint64) ^ np.uint64(0x5bd1e995))
  column = (h % np.uint64(dim)).astype(np.int64)
  sign = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0)
  out = np.zeros((n, dim), np.float32)
  for lo, hi in chunks:
    doc, bucket, tf = _doc_features(docs, lo, hi)
    weight = (1.0 + np.log(tf)) * idf[bucket] * sign[bucket]
    flat = np.bincount(doc * dim + column[bucket], weights=weight, minlength=(hi - lo) * dim)
    out[lo:hi] = flat.reshape(hi - lo, dim)
    if progress:
      progress(hi - lo)
  norms = np.linalg.norm(out, axis=1, keepdims=True)
  return out / np.maximum(norms, 1e-12)


def exact_duplicates(docs: Sequence[np.ndarray]) -> np.ndarray:
  """bool[N]: True for a document whose ids equal an earlier document's."""
  seen: set[bytes] = set()
  dup = np.zeros(len(docs), bool)
  for i, d in enumerate(docs):
    digest = hashlib.blake2b(np.asarray(d, np.int64).tobytes(), digest_size=16).digest()
    dup[i] = digest in seen
    seen.add(digest)
  return dup


def near_duplicates(ids_NK: np.ndarray, sims_NK: np.ndarray, dropped: np.ndarray,
                    threshold: float) -> np.ndarray:
  """bool[N]: `dropped` plus every document with a kept, earlier neighbour at cosine >=
  threshold (either direction of the kNN lists): the first of each group of copies stays."""
  dropped = dropped.copy()
  rows, cols = np.nonzero(sims_NK >= threshold)
  a, b = rows, ids_NK[rows, cols].astype(np.int64)
  valid = b >= 0
  a, b = a[valid], b[valid]
  later, earlier = np.maximum(a, b), np.minimum(a, b)
  order = np.lexsort((earlier, later))
  for v, u in zip(later[order].tolist(), earlier[order].tolist()):
    if not dropped[u]:
      dropped[v] = True
  return dropped


def traverse(ids_NK: np.ndarray, kept: np.ndarray,
             progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
  """The greedy approximate max-TSP path over the kept documents.

  ids_NK: each document's neighbours, most similar first (-1: none). Returns (int64 path of
  every kept document once, number of paths the traversal started).
  """
  n, k = ids_NK.shape
  valid = (ids_NK >= 0) & kept[np.maximum(ids_NK, 0)] & kept[:, None]
  degree = np.bincount(ids_NK[valid], minlength=n)
  candidates = np.flatnonzero(kept)
  starts = array("q", candidates[np.lexsort((candidates, degree[candidates]))].tobytes())
  neighbours = array("i", np.where(valid, ids_NK, -1).astype(np.int32).tobytes())
  visited = bytearray((~kept).astype(np.uint8).tobytes())
  path = array("q")
  paths, next_start, done = 0, 0, 0
  while len(path) < len(starts):
    while visited[starts[next_start]]:
      next_start += 1
    current = starts[next_start]
    paths += 1
    while current >= 0:
      visited[current] = 1
      path.append(current)
      base, current = current * k, -1
      for j in range(base, base + k):
        candidate = neighbours[j]
        if candidate >= 0 and not visited[candidate]:
          current = candidate
          break
    if progress and len(path) - done >= 10_000:
      progress(len(path) - done)
      done = len(path)
  if progress:
    progress(len(path) - done)
  return np.frombuffer(path, np.int64).copy(), paths


def order_documents(docs: Sequence[np.ndarray], spec: OrderSpec, what: str = "documents",
                    show_progress: bool | None = None) -> tuple[np.ndarray, OrderReport]:
  """The In-Context Pretraining order of `docs`: (int64 indices of the kept documents in path
  order, report). `what` names the documents in errors and progress bars.

  Raises:
    DataError: fewer than two documents, k not below the number of documents, or a large
      corpus without faiss.
  """
  n = len(docs)
  if n < 2:
    raise DataError(f"data.order=icp orders related documents next to each other, but "
                    f"{what} has {n} document{'s' if n != 1 else ''}; use data.order=random")
  if spec.k >= n:
    raise DataError(f"data.icp_k ({spec.k}) must be smaller than the number of documents "
                    f"({n} in {what}); lower data.icp_k")
  seconds = {}

  def bar(stage: str):
    return tqdm.tqdm(total=n, desc=f"icp {stage} ({what})", unit="doc", leave=False,
                     disable=None if show_progress is None else not show_progress)

  t = time.perf_counter()
  with bar("embed") as b:
    # Duplicates are a lexical notion: always judged on TF-IDF vectors (`lexical`).
    lexical = tfidf_embed(docs, spec.dim, None if spec.embed else b.update)
    emb = lexical
    if spec.embed is not None:
      emb = np.asarray(spec.embed(docs), np.float32)
      # Mean-pooled states share one large direction (all cosines near 1, every document a
      # "near-duplicate"): centring leaves what tells documents apart.
      emb = emb - emb.mean(axis=0, keepdims=True)
      emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
      b.update(n)
  seconds["embed"] = time.perf_counter() - t
  t = time.perf_counter()
  with bar("neighbours") as b:
    ids, sims = knn.nearest_neighbours(emb, spec.k, progress=b.update)
    lex_ids, lex_sims = (ids, sims) if emb is lexical else knn.nearest_neighbours(lexical, spec.k)
  seconds["neighbours"] = time.perf_counter() - t
  t = time.perf_counter()
  dropped = near_duplicates(lex_ids, lex_sims, exact_duplicates(docs), spec.dedup)
  seconds["dedup"] = time.perf_counter() - t
  t = time.perf_counter()
  with bar("path") as b:
    path, paths = traverse(ids, ~dropped, b.update)
  # Copies the kNN lists missed (approximate search) must still never be adjacent.
  adjacent = np.einsum("nd,nd->n", lexical[path[:-1]], lexical[path[1:]])
  if np.any(adjacent >= spec.dedup):
    keep = np.ones(len(path), bool)
    last = path[0]
    for i in range(1, len(path)):
      if float(lexical[last] @ lexical[path[i]]) >= spec.dedup:
        keep[i] = False
      else:
        last = path[i]
    path = path[keep]
  adjacent = np.einsum("nd,nd->n", emb[path[:-1]], emb[path[1:]])
  seconds["path"] = time.perf_counter() - t
  report = OrderReport(num_documents=n, num_duplicates=n - len(path), num_paths=paths,
                       mean_adjacent_similarity=float(adjacent.mean()) if len(adjacent) else 0.0,
                       seconds={k: round(v, 3) for k, v in seconds.items()})
  return path, report
