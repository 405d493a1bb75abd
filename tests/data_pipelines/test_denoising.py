"""Invariants of the BART denoising objective (docs/objectives.md, BART denoising).

Blocks hold distinct normal ids (plus repeated specials), so every normal token of a source can
be traced back to its one position in the target.
"""

from __future__ import annotations

import collections
import math

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from data_pipelines.errors import DataError
from data_pipelines.objectives import denoising as dn
from data_pipelines.objectives import denoising_noises as noises
from data_pipelines.vocab import VocabInfo

VOCAB = VocabInfo.synthetic(4000, num_sentinels=8, word_start_every=3, seed=1,
                            sentence_end_every=12)
BOS, EOS, UNK, MASK = VOCAB.bos_id, VOCAB.eos_id, VOCAB.unk_id, VOCAB.mask_id
SPECIAL = VOCAB.is_special
OFF = {"text_infilling": 0.0, "permute_sentences": 0.0}  # every noise off
SETTINGS = hypothesis.settings(max_examples=200, deadline=None,
                               suppress_health_check=[hypothesis.HealthCheck.too_slow])

ratio = st.floats(0.0, 1.0)
params_strategy = st.builds(
    dn.DenoisingParams, text_infilling=ratio, token_masking=ratio, token_deletion=ratio,
    permute_sentences=ratio, rotate=ratio, insert=ratio, random_ratio=ratio,
    poisson_lambda=st.floats(0.05, 30.0))
lengths = st.integers(1, 24) | st.integers(25, 600)
seeds = st.integers(0, 2**32 - 1)


def _block(seed: int, length: int, unk: bool = True) -> np.ndarray:
  """int32[length]: distinct normal ids, some EOS document separators, maybe an <unk>."""
  rng = np.random.default_rng(seed)
  block = rng.choice(VOCAB.normal_ids, size=length, replace=False)
  block[rng.random(length) < 0.03] = EOS
  if unk and length > 3 and rng.random() < 0.5:
    block[rng.integers(length)] = UNK
  return block.astype(np.int32)


def _noise(block: np.ndarray, seed: int, **kwargs) -> tuple[np.ndarray, dict[str, int]]:
  ex, stats = dn.noise_with_stats(block, np.random.default_rng(seed),
                                  dn.DenoisingParams(**kwargs), VOCAB)
  np.testing.assert_array_equal(ex["labels"], np.concatenate([[BOS], block, [EOS]]))
  return ex["input_ids"], stats


def _specials(seq: np.ndarray) -> list[int]:
  """The specials of a sequence in order, placed <mask>s aside."""
  return [t for t in seq.tolist() if SPECIAL[t] and t != MASK]


def _is_subsequence(short: np.ndarray, long: np.ndarray) -> bool:
  it = iter(long.tolist())
  return all(any(t == u for u in it) for t in short.tolist())


def _word_starts(target: list[int]) -> list[bool]:
  """Reference word starts of a framed target, as a plain loop (mlm.py's definition)."""
  out = [False] * len(target)
  for i in range(1, len(target) - 1):
    if not SPECIAL[target[i]]:
      out[i] = bool(VOCAB.word_start[target[i]]) or bool(SPECIAL[target[i - 1]])
  return out


def _sentences(inner: list[int]) -> list[list[int]]:
  """Reference sentence split: a sentence ends after a run of full stops (sentence-end
  pieces and EOS) and at the last token."""
  stop = [bool(VOCAB.sentence_end[t]) or t == EOS for t in inner]
  out, cur = [], []
  for i, tok in enumerate(inner):
    cur.append(tok)
    if i + 1 == len(inner) or (stop[i] and not stop[i + 1]):
      out.append(cur)
      cur = []
  return out


# --- all noises together ------------------------------------------------------------------


@SETTINGS
@hypothesis.given(params=params_strategy, length=lengths, seed=seeds)
def test_frame_length_bound_and_specials(params, length, seed):
  block = _block(seed, length)
  ex = dn.make_example(block, np.random.default_rng(seed), params, VOCAB)
  source, target = ex["input_ids"], ex["labels"]
  assert source.dtype == np.int32 and target.dtype == np.int32
  assert target.tolist() == [BOS] + block.tolist() + [EOS]
  assert source[0] == BOS and source[-1] == EOS
  assert len(source) <= dn.max_source_length(len(target), params)
  # Specials are never deleted or replaced, replacements are never specials: the specials
  # other than <mask> are the target's (as a multiset; permutation and rotation move them).
  assert sorted(_specials(source)) == sorted(_specials(target))
  if params.permute_sentences == 0 and params.rotate == 0:
    assert _specials(source) == _specials(target)
  # The masking stages alone never lengthen the source.
  masking_only = dn.DenoisingParams(**{**params.__dict__, "insert": 0.0})
  masked = dn.make_example(block, np.random.default_rng(seed), masking_only, VOCAB)
  assert len(masked["input_ids"]) <= len(target)
  # Deterministic, and the stats path makes the same draws.
  again, _ = dn.noise_with_stats(block, np.random.default_rng(seed), params, VOCAB)
  np.testing.assert_array_equal(again["input_ids"], source)


def test_determinism_and_stats_agree():
  block = _block(0, 510)
  params = dn.DenoisingParams(token_masking=0.1, token_deletion=0.1, insert=0.1, rotate=0.5)
  a = dn.make_example(block, np.random.default_rng(7), params, VOCAB)
  b, _ = dn.noise_with_stats(block, np.random.default_rng(7), params, VOCAB)
  c = dn.make_example(block, np.random.default_rng(8), params, VOCAB)
  np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
  assert not np.array_equal(a["input_ids"], c["input_ids"])
  assert not np.array_equal(a["input_ids"], a["labels"])


def test_all_noises_off_is_identity():
  block = _block(1, 100)
  source, stats = _noise(block, 0, **OFF)
  assert source.tolist() == [BOS] + block.tolist() + [EOS] and stats == {}


# --- sentence permutation -------------------------------------------------------------------


@SETTINGS
@hypothesis.given(length=lengths, seed=seeds, p=st.floats(0.0, 1.0))
def test_permutation_moves_whole_sentences(length, seed, p):
  block = _block(seed, length)
  source, stats = _noise(block, seed, **dict(OFF, permute_sentences=p))
  sentences = _sentences(block.tolist())
  assert dn.count_sentences(block, VOCAB) == len(sentences)
  if p > 0:
    n = len(sentences)
    assert stats["sentences"] == n
    assert stats["permuted_sentences"] == (math.ceil(n * p) if math.ceil(n * p) >= 2 else 0)
  assert len(source) == length + 2 and source[0] == BOS and source[-1] == EOS
  assert sorted(source.tolist()) == sorted([BOS, EOS] + block.tolist())
  # The interior is the target's sentences, each contiguous, in some order.
  inner, pos, unused = source[1:-1].tolist(), 0, list(sentences)
  while pos < len(inner):
    match = next(s for s in unused if inner[pos:pos + len(s)] == s)
    unused.remove(match)
    pos += len(match)
  assert not unused


def test_full_permutation_is_uniform():
  # Three sentences (the last without a full stop): each of the 6 orders about 1/6.
  end = int(np.flatnonzero(VOCAB.sentence_end)[0])
  plain = VOCAB.normal_ids[~VOCAB.sentence_end[VOCAB.normal_ids]][:5]
  block = np.array([plain[0], end, plain[1], plain[2], EOS, plain[3], plain[4]], np.int32)
  assert dn.count_sentences(block, VOCAB) == 3
  draws = 3000
  counts = collections.Counter(
      tuple(_noise(block, seed, **dict(OFF, permute_sentences=1.0))[0].tolist())
      for seed in range(draws))
  assert len(counts) == 6
  chi2 = sum((c - draws / 6) ** 2 / (draws / 6) for c in counts.values())
  assert chi2 < 25.7  # 5 degrees of freedom: P(chi2 > 25.7) ≈ 1e-4


@pytest.mark.parametrize("block,expected", [
    ([], 0), ([10], 1), ([EOS], 1), ([10, 11, 12], 1), ([EOS, 10], 2), ([10, EOS, EOS, 11], 2),
    ([10, EOS, 11, EOS], 2)])
def test_count_sentences(block, expected):
  plain = VOCAB.normal_ids[~VOCAB.sentence_end[VOCAB.normal_ids]]
  block = [t if t == EOS else int(plain[t]) for t in block]
  assert dn.count_sentences(np.array(block, np.int32), VOCAB) == expected


def test_vocab_without_sentence_ends_splits_at_eos_only():
  vocab = VocabInfo.synthetic(4000, num_sentinels=8, word_start_every=3, seed=1)
  assert vocab.sentence_end is None
  np.testing.assert_array_equal(vocab.word_start, VOCAB.word_start)  # drawn first
  block = _block(3, 300)
  # A sentence ends after a run of EOS, or at the last token.
  ends = [i for i, t in enumerate(block.tolist())
          if i + 1 == len(block) or (t == EOS and block[i + 1] != EOS)]
  assert dn.count_sentences(block, vocab) == len(ends) > 1


# --- text infilling -------------------------------------------------------------------------


def _naive_infilling(target: np.ndarray, rng: np.random.Generator,
                     params: dn.DenoisingParams) -> np.ndarray:
  """fairseq's add_whole_word_mask (span-poisson, replace_length 1) as a per-token loop, with
  specials as barriers, on the draws of `denoising._infill_draws`."""
  x = target.tolist()
  special = [bool(SPECIAL[t]) for t in x]
  special[0] = special[-1] = True
  starts_word = _word_starts(x)
  word_pos = [i for i, s in enumerate(starts_word) if s]
  tables = noises.vocab_tables(VOCAB)
  starts, lengths, num_zero, replacement = noises._infill_draws(len(word_pos), rng, params,
                                                                tables, VOCAB)
  keep = [True] * len(x)
  for start, length, new in zip(starts.tolist(), lengths.tolist(), replacement.tolist()):
    i = word_pos[start]
    x[i] = new
    left = length - 1
    i += 1
    while not special[i]:
      if starts_word[i]:
        left -= 1
        if left < 0:
          break
      keep[i] = False  # extension: deleted, even when another span starts here
      i += 1
  deleted = keep.count(False)
  out = np.array([t for t, k in zip(x, keep) if k], np.int32)
  num_insert = min(num_zero, deleted)  # covered - surviving spans = deleted tokens
  if num_insert:
    out, _ = noises._insert(out, num_insert, rng, params.random_ratio, tables, VOCAB)
  return out


@SETTINGS
@hypothesis.given(length=lengths, seed=seeds, p=st.floats(0.01, 1.0),
                  lam=st.floats(0.05, 12.0), random_ratio=st.sampled_from([0.0, 0.1, 0.5]))
def test_infilling_matches_naive_fairseq_loop(length, seed, p, lam, random_ratio):
  block = _block(seed, length)
  params = dn.DenoisingParams(**dict(OFF, text_infilling=p, poisson_lambda=lam,
                                     random_ratio=random_ratio))
  fast = dn.make_example(block, np.random.default_rng(seed), params, VOCAB)["input_ids"]
  target = np.concatenate([[BOS], block, [EOS]]).astype(np.int32)
  np.testing.assert_array_equal(fast, _naive_infilling(target, np.random.default_rng(seed),
                                                       params))


@SETTINGS
@hypothesis.given(length=lengths, seed=seeds, p=st.floats(0.01, 1.0), lam=st.floats(0.05, 12.0))
def test_infilling_counts_and_whole_words(length, seed, p, lam):
  block = _block(seed, length)
  source, s = _noise(block, seed, **dict(OFF, text_infilling=p, poisson_lambda=lam,
                                         random_ratio=0.0))
  target = [BOS] + block.tolist() + [EOS]
  starts_word = _word_starts(target)
  assert s["word_starts"] == sum(starts_word)
  assert s["sampled_words"] == math.ceil(sum(starts_word) * p)  # exact word budget
  assert s["covered_words"] <= s["sampled_words"]
  assert s["surviving_spans"] <= s["spans"] <= s["sampled_words"]
  assert s["infill_inserts"] <= s["zero_length_spans"]
  assert s["random_spans"] == 0
  assert (source == MASK).sum() == s["surviving_spans"] + s["infill_inserts"]
  assert len(source) == len(target) - s["covered_tokens"] + s["surviving_spans"] + s[
      "infill_inserts"]
  assert len(source) <= len(target)  # the insertion cap
  # Align: normal tokens are distinct and specials are never removed, so the non-mask source
  # tokens are the target minus the covered tokens, in order.
  removed = _removed_positions(np.array(target), source)
  assert len(removed) == s["covered_tokens"]
  # Removed tokens form runs of whole words: each run starts at a word start and is followed
  # by a word start, a special or the final </s>.
  runs = np.split(np.array(removed, int), np.flatnonzero(np.diff(removed) != 1) + 1)
  for run in runs if removed else []:
    assert starts_word[run[0]]
    assert starts_word[run[-1] + 1] or SPECIAL[target[run[-1] + 1]]
  assert sum(starts_word[i] for i in removed) == s["covered_words"]


def test_infilling_insertion_cap_binds_for_tiny_blocks():
  # One single-token word: the budget is 1 word; zero-length spans drawn before the first
  # non-zero one would be inserts, but covered - surviving = 0 leaves no room.
  params = dict(OFF, text_infilling=1.0, poisson_lambda=0.3, random_ratio=0.0)
  zeros = 0
  for seed in range(200):
    source, s = _noise(np.array([VOCAB.normal_ids[0]], np.int32), seed, **params)
    zeros += s["zero_length_spans"]
    assert s["infill_inserts"] == 0 and source.tolist() == [BOS, MASK, EOS]
  assert zeros > 50  # P(0) = e^-0.3 ≈ 0.74: the cap did bind


# 20: beyond λ ≈ 16 fairseq's truncated table collapses to zero-length spans (e^-λ < 1e-7
# stops its loop at k = 0); ours keeps the Poisson shape (docs/objectives.md).
@pytest.mark.parametrize("lam", [3.0, 0.7, 8.0, 20.0])
def test_span_lengths_are_poisson(lam):
  budget = 60000
  lengths, num_zero = dn.span_lengths(budget, np.random.default_rng(0), lam)
  assert lengths.sum() == budget and (lengths > 0).all()
  count = lengths.size + num_zero
  mean_tolerance = 4 * math.sqrt(lam / count)  # 4 standard errors of a Poisson mean
  assert abs(budget / count - lam) < mean_tolerance, (budget / count, lam)
  p0 = math.exp(-lam)
  assert abs(num_zero / count - p0) < 4 * math.sqrt(p0 * (1 - p0) / count) + 1 / count
  assert lengths.max() < 128


def test_span_lengths_small_budgets():
  rng = np.random.default_rng(0)
  for budget in range(20):
    lengths, _ = dn.span_lengths(budget, rng, 3.0)
    assert lengths.sum() == budget


def test_random_ratio_of_span_masks():
  random_spans = surviving = 0
  for seed in range(150):
    source, s = _noise(_block(seed, 510), seed, **dict(OFF, text_infilling=0.3,
                                                       random_ratio=0.3))
    random_spans += s["random_spans"]
    surviving += s["surviving_spans"]
    new = np.setdiff1d(source, _block(seed, 510))
    assert set(new[SPECIAL[new]].tolist()) <= {BOS, EOS, MASK}
  frac = random_spans / surviving
  assert abs(frac - 0.3) < 4 * math.sqrt(0.3 * 0.7 / surviving), (frac, surviving)


# --- token masking and deletion -------------------------------------------------------------


@SETTINGS
@hypothesis.given(length=lengths, seed=seeds, p=st.floats(0.01, 1.0),
                  random_ratio=st.sampled_from([0.0, 0.3]))
def test_token_masking_count(length, seed, p, random_ratio):
  block = _block(seed, length)
  source, s = _noise(block, seed, **dict(OFF, token_masking=p, random_ratio=random_ratio))
  target = np.concatenate([[BOS], block, [EOS]])
  candidates = int((~SPECIAL[block]).sum())
  assert s["masked_tokens"] == math.ceil(candidates * p)
  assert len(source) == len(target)
  changed = source != target
  assert not SPECIAL[target[changed]].any()
  assert changed.sum() <= s["masked_tokens"]  # a random id may equal the original
  assert (source == MASK).sum() == s["masked_tokens"] - s["random_masked_tokens"]
  if random_ratio == 0:
    assert changed.sum() == s["masked_tokens"]


def test_token_masking_random_ratio():
  masked = random = 0
  for seed in range(40):
    _, s = _noise(_block(seed, 510), seed, **dict(OFF, token_masking=0.3, random_ratio=0.2))
    masked += s["masked_tokens"]
    random += s["random_masked_tokens"]
  assert abs(random / masked - 0.2) < 4 * math.sqrt(0.2 * 0.8 / masked)


@SETTINGS
@hypothesis.given(length=lengths, seed=seeds, p=st.floats(0.01, 1.0))
def test_token_deletion_count_and_subsequence(length, seed, p):
  block = _block(seed, length)
  source, s = _noise(block, seed, **dict(OFF, token_deletion=p))
  target = np.concatenate([[BOS], block, [EOS]])
  assert s["deleted_tokens"] == math.ceil(int((~SPECIAL[block]).sum()) * p)
  assert len(target) - len(source) == s["deleted_tokens"]
  assert _is_subsequence(source, target)
  assert _specials(source) == _specials(target)


@SETTINGS
@hypothesis.given(length=lengths, seed=seeds, infill=st.floats(0.01, 1.0),
                  mask=st.floats(0.0, 1.0), delete=st.floats(0.0, 1.0),
                  random_ratio=st.sampled_from([0.0, 0.5]))
def test_masking_and_deletion_never_pick_placed_tokens(length, seed, infill, mask, delete,
                                                       random_ratio):
  block = _block(seed, length)
  base = dict(OFF, text_infilling=infill, random_ratio=random_ratio)
  after_infill, s0 = _noise(block, seed, **base)  # the same draws come first
  # Candidates: non-special tokens (<mask> is special) minus infilling's random tokens.
  placed_random = s0["random_spans"] + math.ceil(s0["infill_inserts"] * random_ratio)
  free = int((~SPECIAL[after_infill]).sum()) - placed_random
  source, s = _noise(block, seed, **dict(base, token_masking=mask, token_deletion=delete))
  num_mask = math.ceil(free * mask)
  num_delete = math.ceil((free - num_mask) * delete)
  assert s.get("masked_tokens", 0) == num_mask
  assert s.get("deleted_tokens", 0) == num_delete
  # Every mask placed before survives deletion.
  assert (source == MASK).sum() == (after_infill == MASK).sum() + num_mask - s.get(
      "random_masked_tokens", 0)
  assert len(source) == len(after_infill) - num_delete


def _removed_positions(target: np.ndarray, source: np.ndarray) -> list[int]:
  """Target positions missing from the source (<mask>s ignored), by in-order alignment."""
  kept = source[source != MASK].tolist()
  pos, removed = 0, []
  for i, tok in enumerate(target.tolist()):
    if pos < len(kept) and kept[pos] == tok:
      pos += 1
    else:
      removed.append(i)
  assert pos == len(kept)
  return removed


@pytest.mark.parametrize("noise", ["text_infilling", "token_masking", "token_deletion",
                                   "insert"])
def test_noise_positions_are_uniform(noise):
  # Per record, the fraction of the noised positions in the first half of the block; its mean
  # over records is 1/2 for a position-blind choice. 4 standard errors of that mean.
  fractions = []
  for seed in range(200):
    block = _block(seed, 300, unk=False)
    target = np.concatenate([[BOS], block, [EOS]])
    source, _ = _noise(block, seed, **{**OFF, noise: 0.2, "random_ratio": 0.0})
    if noise == "token_masking":
      where = np.flatnonzero(source != target) / len(target)
    elif noise == "insert":
      where = np.flatnonzero(source == MASK) / len(source)
    else:
      where = np.array(_removed_positions(target, source)) / len(target)
    fractions.append(np.mean(where < 0.5))
  tolerance = 4 * np.std(fractions, ddof=1) / math.sqrt(len(fractions))
  assert abs(np.mean(fractions) - 0.5) < tolerance, (np.mean(fractions), tolerance)


# --- insertion and rotation -----------------------------------------------------------------


@SETTINGS
@hypothesis.given(length=lengths, seed=seeds, p=st.floats(0.01, 1.0),
                  random_ratio=st.sampled_from([0.0, 0.1, 1.0]))
def test_insertion_count_and_removal_gives_input(length, seed, p, random_ratio):
  block = _block(seed, length)
  source, s = _noise(block, seed, **dict(OFF, insert=p, random_ratio=random_ratio))
  target = np.concatenate([[BOS], block, [EOS]])
  n = math.ceil(len(target) * p)
  assert s["inserted_tokens"] == n and len(source) == len(target) + n
  assert len(source) == dn.max_source_length(len(target), dn.DenoisingParams(insert=p))
  num_random = math.ceil(n * random_ratio)
  assert s["random_inserted_tokens"] == num_random
  assert (source == MASK).sum() == n - num_random
  assert _is_subsequence(target, source) and source[0] == BOS and source[-1] == EOS
  if random_ratio == 0:
    np.testing.assert_array_equal(source[source != MASK], target)
  new = [t for t in source.tolist() if t not in set(target.tolist()) | {MASK}]
  assert not any(SPECIAL[t] for t in new)


@SETTINGS
@hypothesis.given(length=lengths, seed=seeds)
def test_rotation_is_a_real_cyclic_shift(length, seed):
  block = _block(seed, length)
  source, s = _noise(block, seed, **dict(OFF, rotate=1.0))
  assert source[0] == BOS and source[-1] == EOS and len(source) == length + 2
  if length < 2:
    assert "rotation" not in s and source[1:-1].tolist() == block.tolist()
    return
  shift = s["rotation"]
  assert 1 <= shift <= length - 1
  assert source[1:-1].tolist() == np.roll(block, -shift).tolist()


def test_rotation_probability_and_uniform_shift():
  block = np.array(VOCAB.normal_ids[:4], np.int32)  # shifts 1, 2, 3
  draws = 3000
  shifts = [_noise(block, seed, **dict(OFF, rotate=0.5))[1].get("rotation", 0)
            for seed in range(draws)]
  counts = collections.Counter(shifts)
  rotated = draws - counts[0]
  assert abs(rotated / draws - 0.5) < 4 * math.sqrt(0.25 / draws)
  chi2 = sum((counts[k] - rotated / 3) ** 2 / (rotated / 3) for k in (1, 2, 3))
  assert set(counts) == {0, 1, 2, 3} and chi2 < 18.4  # 2 dof: P(chi2 > 18.4) ≈ 1e-4


def _fairseq_roll(tokens: np.ndarray, offset: int) -> np.ndarray:
  """fairseq `add_rolling_noise` for a given offset (it draws offset uniform in [1, L - 1])."""
  return np.concatenate([tokens[:1], tokens[offset:-1], tokens[1:offset], tokens[-1:]])


@pytest.mark.parametrize("length", [2, 3, 7])
def test_rotation_is_fairseqs_given_a_rotation_happened(length):
  # docs/objectives.md: fairseq's offsets 1 and L - 1 are both no-ops; ours draws only the
  # L - 3 real shifts, each the same rotation as one fairseq offset.
  block = np.array(VOCAB.normal_ids[:length], np.int32)
  framed = np.concatenate([[BOS], block, [EOS]])
  fairseq = {o: _fairseq_roll(framed, o).tolist() for o in range(1, len(framed))}
  assert fairseq[1] == framed.tolist() and fairseq[len(framed) - 1] == framed.tolist()
  real = {tuple(v) for o, v in fairseq.items() if v != framed.tolist()}
  assert len(real) == length - 1
  ours = set()
  for seed in range(40 * length):
    source, s = _noise(block, seed, **dict(OFF, rotate=1.0))
    assert "rotation" in s and source.tolist() == fairseq[s["rotation"] + 1]
    ours.add(tuple(source.tolist()))
  assert ours == real


# --- parameters, lengths, vocab -------------------------------------------------------------


@pytest.mark.parametrize("name", ["text_infilling", "token_masking", "token_deletion",
                                  "permute_sentences", "rotate", "insert", "random_ratio"])
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), float("inf"), "0.3", True])
def test_bad_ratio_raises(name, value):
  with pytest.raises(DataError, match=f"DenoisingParams.{name} must be a number in") as info:
    dn.DenoisingParams(**{name: value})
  message = str(info.value)
  assert "\n" not in message and message.endswith(f"got {value!r}")


@pytest.mark.parametrize("value", [0.0, -1.0, 0.009, float("nan"), float("inf"), None])
def test_bad_lambda_raises(value):
  with pytest.raises(DataError) as info:
    dn.DenoisingParams(poisson_lambda=value)
  assert str(info.value) == ("DenoisingParams.poisson_lambda must be a finite number >= 0.01, "
                             f"got {value!r}")


@pytest.mark.parametrize("lam", [0.01, 500.0, 1e300])
def test_boundary_params_accepted(lam):
  # Extreme λ still fill the budget (λ = 0.01: ~100 draws a span; huge λ: spans of 127 words).
  block = _block(0, 300)
  for ratio in (0.0, 1.0):
    params = dn.DenoisingParams(**{name: ratio for name in dn._RATIOS}, poisson_lambda=lam)
    source = dn.make_example(block, np.random.default_rng(0), params, VOCAB)["input_ids"]
    assert len(source) <= dn.max_source_length(302, params)


def test_lengths_helpers():
  assert dn.min_block_length(dn.DenoisingParams()) == 1
  assert dn.max_source_length(512, dn.DenoisingParams()) == 512
  assert dn.max_source_length(512, dn.DenoisingParams(insert=0.1)) == 512 + 52
  assert dn.max_source_length(3, dn.DenoisingParams(insert=1.0)) == 6
  with pytest.raises(TypeError):
    dn.max_source_length(512.0, dn.DenoisingParams())


def test_bad_blocks_raise():
  with pytest.raises(DataError, match="block too short for denoising: 0 tokens, need >= 1"):
    dn.make_example(np.zeros(0, np.int32), np.random.default_rng(0), dn.DenoisingParams(), VOCAB)
  with pytest.raises(DataError, match="1-D integer"):
    dn.make_example(np.zeros((2, 3), np.int32), np.random.default_rng(0), dn.DenoisingParams(),
                    VOCAB)


def test_synthetic_sentence_ends():
  assert VOCAB.sentence_end.dtype == bool and VOCAB.sentence_end.shape == (VOCAB.vocab_size,)
  assert not VOCAB.sentence_end[SPECIAL].any()
  frac = VOCAB.sentence_end[~SPECIAL].mean()
  n = int((~SPECIAL).sum())
  assert abs(frac - 1 / 12) < 4 * math.sqrt((1 / 12) * (11 / 12) / n)


def test_tokenizer_vocab_info_carries_sentence_ends():
  from data_pipelines.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top

  tok = load_tokenizer("bundled")
  vocab = tok.vocab_info()
  np.testing.assert_array_equal(vocab.sentence_end, tok.sentence_end)
  ids = tok.encode("The cat sat. Did it? Yes it did")
  assert dn.count_sentences(ids, vocab) == 3
