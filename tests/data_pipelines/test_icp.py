"""In-Context Pretraining order: a permutation of the kept documents, deterministic, related
documents adjacent, duplicates dropped and never adjacent (docs/objectives.md)."""

from __future__ import annotations

import builtins
import math

import numpy as np
import pytest

from data_pipelines import icp, knn
from data_pipelines.errors import DataError

K_TOPICS = 20


def topic_corpus(n: int, k_topics: int = K_TOPICS, length: int = 80, seed: int = 0
                 ) -> tuple[list[np.ndarray], np.ndarray]:
  """n documents of token ids, each from one of k_topics planted topics: half of a document's
  tokens come from its topic's 200-id vocabulary, half from a Zipfian background shared by all
  topics (ids 0..7999). Returns (documents, topic of each)."""
  rng = np.random.default_rng(seed)
  topic = rng.integers(0, k_topics, n)
  words = rng.integers(0, 8000, (k_topics, 200))
  docs = []
  for t in topic:
    doc = np.concatenate([words[t][rng.zipf(1.5, length // 2) % 200],
                          rng.zipf(1.3, length - length // 2) % 8000])
    rng.shuffle(doc)
    docs.append(doc.astype(np.int64))
  return docs, topic


def adjacent_same(path: np.ndarray, topic: np.ndarray) -> float:
  return float(np.mean(topic[path[1:]] == topic[path[:-1]]))


def test_planted_topics_are_adjacent():
  """2,000 documents, 20 topics: random order puts a same-topic pair next to each other with
  probability 1/20 = 0.05; the ICP path does so for > 0.6 of its pairs (measured: 0.85),
  while the corpus order stays within 5 binomial standard errors of 0.05."""
  docs, topic = topic_corpus(2000)
  path, report = icp.order_documents(docs, icp.OrderSpec(), show_progress=False)
  assert sorted(path.tolist()) == list(range(2000))
  assert report.num_duplicates == 0
  ours = adjacent_same(path, topic)
  corpus = adjacent_same(np.arange(2000), topic)
  sigma = math.sqrt(0.05 * 0.95 / 1999)
  assert abs(corpus - 1 / K_TOPICS) < 5 * sigma
  assert ours > 0.6, ours
  assert ours > 10 * corpus


def test_permutation_and_tokens_conserved_and_deterministic():
  docs, _ = topic_corpus(500, seed=1)
  docs[7] = np.zeros(0, np.int64)  # an empty document is ordered too
  spec = icp.OrderSpec(k=5, seed=3)
  path, _ = icp.order_documents(docs, spec, show_progress=False)
  again, _ = icp.order_documents(docs, spec, show_progress=False)
  np.testing.assert_array_equal(path, again)
  assert sorted(path.tolist()) == list(range(500))
  assert sum(len(docs[i]) for i in path) == sum(len(d) for d in docs)


def test_duplicates_dropped_and_never_adjacent():
  """Exact copies and near-copies (one token changed) are dropped, the first copy kept; no
  two consecutive documents of the path are near-duplicates."""
  docs, _ = topic_corpus(300, seed=2)
  originals = [3, 50, 120]
  for i in originals:
    for _ in range(15):  # more copies than k: the hash catches those the kNN lists cannot
      docs.append(docs[i].copy())
    near = docs[i].copy()
    near[0] = (near[0] + 1) % 8000
    docs.append(near)
  spec = icp.OrderSpec(k=10, dedup=0.9)
  path, report = icp.order_documents(docs, spec, show_progress=False)
  assert report.num_duplicates == 3 * 16
  assert sorted(path.tolist()) == list(range(300))  # the first of each group stays
  emb = icp.tfidf_embed(docs, spec.dim)
  adjacent = np.einsum("nd,nd->n", emb[path[:-1]], emb[path[1:]])
  assert adjacent.max() < spec.dedup


def test_traverse_follows_most_similar_unvisited_neighbour():
  """A hand-made kNN graph: the path starts at the lowest-degree node, always takes the first
  unvisited neighbour, and restarts at the next lowest-degree unvisited node."""
  ids = np.array([[1, 2], [2, 0], [1, 0], [4, 2], [3, 0]])
  path, paths = icp.traverse(ids, np.ones(5, bool))
  # in-degrees: 0:3, 1:2, 2:3, 3:1, 4:1 -> start at 3 (degree 1, lower index than 4)
  assert path.tolist() == [3, 4, 0, 1, 2]
  assert paths == 1
  kept = np.array([True, True, True, False, True])
  path, paths = icp.traverse(ids, kept)
  # 4 loses its in-edge from 3: degree 0 -> start there; 4 -> 0 -> 1 -> 2
  assert path.tolist() == [4, 0, 1, 2]


def test_exact_knn_matches_brute_force():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(300, 16)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  ids, sims = knn.nearest_neighbours(emb, 7)
  full = emb @ emb.T
  np.fill_diagonal(full, -np.inf)
  expected = np.argsort(-full, axis=1, kind="stable")[:, :7]
  np.testing.assert_array_equal(ids, expected)
  np.testing.assert_allclose(sims, np.take_along_axis(full, expected, 1), rtol=1e-5)


def test_faiss_search_agrees_with_exact():  # faiss-cpu is in the test extras
  docs, _ = topic_corpus(3000, seed=4)
  emb = icp.tfidf_embed(docs)
  exact, _ = knn.nearest_neighbours(emb, 10)
  approx, sims = knn.nearest_neighbours(emb, 10, exact_max=1000)
  assert (approx[:, 0] == exact[:, 0]).mean() > 0.95  # the nearest neighbour (measured 0.990)
  recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact)])
  assert recall > 0.95, recall  # measured 0.991
  assert np.all(approx != np.arange(3000)[:, None])
  assert np.all(np.diff(sims, axis=1) <= 0)
  np.testing.assert_array_equal(knn.nearest_neighbours(emb, 10, exact_max=1000)[0], approx)


def test_large_corpus_without_faiss_is_one_clear_error(monkeypatch):
  real_import = builtins.__import__

  def no_faiss(name, *args, **kwargs):
    if name == "faiss":
      raise ImportError("no faiss")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_faiss)
  emb = np.eye(50, dtype=np.float32)
  with pytest.raises(DataError, match=r"needs faiss: pip install 'faiss-cpu"):
    knn.nearest_neighbours(emb, 3, exact_max=10)


@pytest.mark.parametrize("n, k, needle", [(1, 10, "has 1 document"), (5, 5, "icp_k (5)")])
def test_too_few_documents(n, k, needle):
  docs, _ = topic_corpus(n)
  with pytest.raises(DataError) as e:
    icp.order_documents(docs, icp.OrderSpec(k=k), what="corpus x", show_progress=False)
  assert needle in str(e.value)
