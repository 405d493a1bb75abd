"""Invariants of the masked-LM objective (docs/objectives.md, masked LM)."""

from __future__ import annotations

import math
import statistics

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from data_pipelines.objectives import mlm
from data_pipelines.vocab import VocabInfo

# Small vocabulary so random blocks hit specials, sentinels and word boundaries often.
VOCAB = VocabInfo.synthetic(64, num_sentinels=4, word_start_every=3, seed=1)
SETTINGS = hypothesis.settings(max_examples=150, deadline=None,
                               suppress_health_check=[hypothesis.HealthCheck.too_slow])


def _block(seed: int, length: int, special_rate: float, pad_len: int,
           vocab: VocabInfo = VOCAB) -> np.ndarray:
  """int32[length] ids: mostly normal, some EOS separators and sentinels, trailing pad."""
  rng = np.random.default_rng(seed)
  block = rng.choice(vocab.normal_ids, size=length)
  specials = np.concatenate([[vocab.eos_id, vocab.eos_id, vocab.unk_id], vocab.sentinel_ids])
  hit = rng.random(length) < special_rate
  block[hit] = rng.choice(specials, size=int(hit.sum()))
  if pad_len:
    block[length - min(pad_len, length):] = vocab.pad_id
  return block.astype(np.int32)


def _words(block: np.ndarray, vocab: VocabInfo) -> list[list[int]]:
  """Reference word segmentation, written as a plain loop: lists of block positions."""
  words: list[list[int]] = []
  prev_candidate = False  # position 0 follows [CLS]
  for i, tok in enumerate(block):
    candidate = not vocab.is_special[tok]
    if candidate:
      if vocab.word_start[tok] or not prev_candidate:
        words.append([i])
      else:
        words[-1].append(i)
    prev_candidate = candidate
  return words


def _rng(seed: int, epoch: int = 0, index: int = 0) -> np.random.Generator:
  return np.random.default_rng([seed, epoch, index])


blocks = st.builds(
    _block,
    seed=st.integers(0, 2**32 - 1),
    length=st.integers(0, 120),
    special_rate=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    pad_len=st.integers(0, 20) | st.just(0),
)


@SETTINGS
@hypothesis.given(block=blocks, seed=st.integers(0, 2**32 - 1),
                  mask_prob=st.sampled_from([0.15, 0.3, 0.5, 0.9]),
                  whole_word=st.booleans(), tight=st.booleans())
def test_structure(block, seed, mask_prob, whole_word, tight):
  seq_len = block.size + 2
  bound = mlm.default_max_predictions(seq_len, mask_prob, whole_word)
  max_predictions = max(1, bound // 3) if tight else bound
  params = mlm.MLMParams(mask_prob=mask_prob, whole_word=whole_word,
                         max_predictions=max_predictions)
  out = mlm.make_example(block, _rng(seed), params, VOCAB)

  assert set(out) == {"input_ids", "attention_mask", "token_type_ids", "labels",
                      "dropped_by_objective"}
  cut = out.pop("dropped_by_objective")
  assert cut.shape == () and cut.dtype == np.int32
  for value in out.values():
    assert value.shape == (seq_len,) and value.dtype == np.int32
  ids, labels = out["input_ids"], out["labels"]
  assert ids[0] == VOCAB.cls_id and ids[-1] == VOCAB.sep_id
  assert labels[0] == labels[-1] == -100
  np.testing.assert_array_equal(out["token_type_ids"], 0)
  np.testing.assert_array_equal(out["attention_mask"], (ids != VOCAB.pad_id).astype(np.int32))

  body_ids, body_labels = ids[1:-1], labels[1:-1]
  selected = body_labels != -100
  np.testing.assert_array_equal(body_labels[selected], block[selected])
  np.testing.assert_array_equal(body_ids[~selected], block[~selected])
  assert not VOCAB.is_special[block[selected]].any()
  corrupted = body_ids[selected]
  assert np.all((corrupted == VOCAB.mask_id) | ~VOCAB.is_special[corrupted])
  count = int(selected.sum())
  assert count <= max_predictions
  # What the cap cut is reported: the same generator state without a cap selects count + cut.
  uncapped = mlm.MLMParams(mask_prob=mask_prob, whole_word=whole_word, max_predictions=seq_len)
  free = mlm.make_example(block, _rng(seed), uncapped, VOCAB)
  assert int(free["dropped_by_objective"]) == 0
  assert int((free["labels"] != -100).sum()) == count + int(cut)

  candidates = int((~VOCAB.is_special[block]).sum())
  if not whole_word:
    expected = mask_prob * candidates
    allowed = {math.floor(expected), math.ceil(expected)}
    assert count in {min(k, max_predictions) for k in allowed}
    return

  words = _words(block, VOCAB)
  assert sum(map(len, words)) == candidates
  chosen = []
  for word in words:
    hits = selected[word]
    assert hits.all() or not hits.any(), f"word {word} split"
    if hits.all():
      chosen.append(len(word))
  budget = mask_prob * len(words)
  assert len(chosen) <= math.ceil(budget)
  if len(chosen) < math.floor(budget):
    # Truncated: the next word of the random order did not fit.
    assert count > max_predictions - max(map(len, words))


@SETTINGS
@hypothesis.given(seq_len=st.integers(3, 1024), mask_prob=st.floats(0.01, 0.99),
                  seed=st.integers(0, 2**32 - 1))
def test_token_count_never_exceeds_default_bound(seq_len, mask_prob, seed):
  # Worst case for the bound: every block position is a candidate.
  block = _block(seed, seq_len - 2, special_rate=0.0, pad_len=0)
  bound = mlm.default_max_predictions(seq_len, mask_prob)
  # A bound of (at least) the true count range, so the clip cannot hide an overshoot.
  params = mlm.MLMParams(mask_prob=mask_prob, max_predictions=seq_len)
  count = int((mlm.make_example(block, _rng(seed), params, VOCAB)["labels"] != -100).sum())
  assert count <= bound
  assert bound == math.ceil(mask_prob * (seq_len - 2)) or bound == 1


def test_default_bound_is_reached():
  block = _block(0, 510, special_rate=0.0, pad_len=0)
  bound = mlm.default_max_predictions(512, 0.15)
  assert bound == 77  # ceil(0.15 * 510) = ceil(76.5)
  params = mlm.MLMParams(max_predictions=bound)
  counts = {int((mlm.make_example(block, _rng(s), params, VOCAB)["labels"] != -100).sum())
            for s in range(40)}
  assert counts == {76, 77}


def test_mean_count_matches_probabilistic_rounding():
  block = _block(3, 510, special_rate=0.1, pad_len=37)
  n = int((~VOCAB.is_special[block]).sum())
  params = mlm.MLMParams(mask_prob=0.15, max_predictions=510)
  expected = 0.15 * n
  frac = expected - math.floor(expected)
  assert 0.05 < frac < 0.95, "pick a block whose expected count is not near an integer"
  seeds = 2000
  counts = np.array([(mlm.make_example(block, _rng(s), params, VOCAB)["labels"] != -100).sum()
                     for s in range(seeds)])
  assert set(counts.tolist()) == {math.floor(expected), math.ceil(expected)}
  # count = floor + Bernoulli(frac): the mean's standard error is sqrt(frac (1 - frac) / seeds).
  tolerance = 4 * math.sqrt(frac * (1 - frac) / seeds)
  assert abs(counts.mean() - expected) < tolerance


@pytest.mark.parametrize("whole_word", [False, True])
def test_determinism(whole_word):
  block = _block(5, 254, special_rate=0.05, pad_len=10)
  params = mlm.MLMParams(max_predictions=60, whole_word=whole_word)
  a = mlm.make_example(block, _rng(7, epoch=0, index=3), params, VOCAB)
  b = mlm.make_example(block.copy(), _rng(7, epoch=0, index=3), params, VOCAB)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  for other in (_rng(7, epoch=1, index=3), _rng(8, epoch=0, index=3)):
    c = mlm.make_example(block, other, params, VOCAB)
    assert not np.array_equal(a["labels"] != -100, c["labels"] != -100)


def test_block_of_specials_selects_nothing():
  block = np.array([VOCAB.eos_id, VOCAB.pad_id, *VOCAB.sentinel_ids, VOCAB.unk_id], np.int32)
  for whole_word in (False, True):
    params = mlm.MLMParams(max_predictions=5, whole_word=whole_word)
    out = mlm.make_example(block, _rng(0), params, VOCAB)
    np.testing.assert_array_equal(out["labels"], -100)
    np.testing.assert_array_equal(out["input_ids"][1:-1], block)


def test_corruption_frequencies():
  """80/10/10 over >= 10k selections, with a random draw equal to the original counted as kept."""
  vocab = VocabInfo.synthetic(1000, num_sentinels=10)
  params = mlm.MLMParams(max_predictions=77)
  mask = rand_diff = same = 0
  for index in range(200):
    block = _block(index, 510, special_rate=0.02, pad_len=0, vocab=vocab)
    out = mlm.make_example(block, _rng(11, 0, index), params, vocab)
    selected = out["labels"][1:-1] != -100
    new, old = out["input_ids"][1:-1][selected], block[selected]
    mask += int((new == vocab.mask_id).sum())
    rand_diff += int(((new != vocab.mask_id) & (new != old)).sum())
    same += int((new == old).sum())
  n = mask + rand_diff + same
  assert n >= 10_000
  # Originals are normal ids, so a uniform normal draw equals the original with prob 1/|normal|.
  p_equal = 1 / vocab.normal_ids.size
  expected = {"mask": (mask, 0.8), "random & different": (rand_diff, 0.1 * (1 - p_equal)),
              "unchanged": (same, 0.1 + 0.1 * p_equal)}
  for name, (hits, p) in expected.items():
    tolerance = 4 * math.sqrt(p * (1 - p) / n)
    assert abs(hits / n - p) < tolerance, (name, hits / n, p, tolerance)


def test_random_replacements_uniform_over_normal_ids():
  vocab = VocabInfo.synthetic(80, num_sentinels=6)
  normal = vocab.normal_ids
  # Every selected token is a random draw, so the draws are observable directly.
  params = mlm.MLMParams(mask_prob=0.5, mask_token_frac=0.0, random_token_frac=1.0,
                         max_predictions=510)
  draws = []
  for index in range(40):
    block = _block(index, 510, special_rate=0.1, pad_len=0, vocab=vocab)
    out = mlm.make_example(block, _rng(13, 0, index), params, vocab)
    draws.append(out["input_ids"][1:-1][out["labels"][1:-1] != -100])
  draws = np.concatenate(draws)
  assert not vocab.is_special[draws].any()
  counts = np.bincount(draws, minlength=vocab.vocab_size)[normal]
  k, n = normal.size, draws.size
  assert n / k >= 50, "too few draws per id for the chi-square approximation"
  chi2 = float(((counts - n / k) ** 2 / (n / k)).sum())
  # Upper 1e-6 quantile of chi-square(k - 1) by the Wilson-Hilferty approximation.
  dof, z = k - 1, statistics.NormalDist().inv_cdf(1 - 1e-6)
  critical = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
  assert chi2 < critical, (chi2, critical)
  assert (counts > 0).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"mask_prob": 0.0}, "mask_prob must be in"),
    ({"mask_prob": 1.0}, "mask_prob must be in"),
    ({"mask_token_frac": -0.1}, "must be >= 0"),
    ({"random_token_frac": -0.1}, "must be >= 0"),
    ({"mask_token_frac": 0.9, "random_token_frac": 0.2}, "must be <= 1"),
    ({"max_predictions": 0}, "max_predictions must be >= 1"),
])
def test_bad_params(kwargs, message):
  with pytest.raises(ValueError, match=message):
    mlm.MLMParams(**{"max_predictions": 10, **kwargs})


def test_non_int_max_predictions():
  with pytest.raises(TypeError, match="max_predictions must be an int"):
    mlm.MLMParams(max_predictions=2.5)


def test_bad_block():
  params = mlm.MLMParams(max_predictions=3)
  with pytest.raises(ValueError, match="1-D integer"):
    mlm.make_example(np.zeros((2, 3), np.int32), _rng(0), params, VOCAB)
  with pytest.raises(ValueError, match="1-D integer"):
    mlm.make_example(np.zeros(3, np.float32), _rng(0), params, VOCAB)


def test_vocab_tables_cached_per_vocab():
  assert mlm.vocab_tables(VOCAB) is mlm.vocab_tables(VOCAB)
  other = VocabInfo.synthetic(64, num_sentinels=4, word_start_every=3, seed=2)
  assert mlm.vocab_tables(other) is not mlm.vocab_tables(VOCAB)
