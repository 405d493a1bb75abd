"""Invariants of the XLNet permutation-LM objective (docs/objectives.md, "XLNet permutation LM").

Statistical tests use fixed seeds and bounds at ~1e-4 tail probability for their sample sizes.
"""

from __future__ import annotations

import math

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from data_pipelines import tokenizer
from data_pipelines.errors import DataError
from data_pipelines.objectives import permutation_lm as pl
from data_pipelines.vocab import VocabInfo
from t5x_like import config as config_lib

VOCAB = VocabInfo.synthetic(4000, num_sentinels=8, word_start_every=3, seed=1)
SEP, CLS, EOS, UNK = VOCAB.sep_id, VOCAB.cls_id, VOCAB.eos_id, VOCAB.unk_id
SPECIAL = VOCAB.is_special
SETTINGS = hypothesis.settings(max_examples=120, deadline=None,
                               suppress_health_check=[hypothesis.HealthCheck.too_slow])
seeds = st.integers(0, 2**32 - 1)


def _block(seed: int, length: int, specials: bool = True) -> np.ndarray:
  """int32[length] normal ids with (optionally) a few EOS separators and an <unk>."""
  rng = np.random.default_rng(seed)
  block = rng.choice(VOCAB.normal_ids, size=length)
  if specials:
    block[rng.random(length) < 0.03] = EOS
    if length > 3 and rng.random() < 0.5:
      block[rng.integers(length)] = UNK
  return block.astype(np.int32)


def _example(block, seed, reverse=False, **kwargs):
  return pl.make_example(block, np.random.default_rng(seed), pl.PermutationLMParams(**kwargs),
                         VOCAB, reverse=reverse)


def _kinds(ex):
  """(bool[L] targets, bool[L] functional, bool[L] context) of an example."""
  target = ex["target_mapping"].sum(0) > 0
  functional = np.isin(np.arange(ex["input_ids"].size),
                       [np.flatnonzero(ex["input_ids"] == SEP)[0], ex["input_ids"].size - 2,
                        ex["input_ids"].size - 1])
  return target, functional, ~(target | functional)


def _check(ex, num_predict, perm_size):
  ids, seg, pm = ex["input_ids"], ex["token_type_ids"], ex["perm_mask"]
  tm, labels = ex["target_mapping"], ex["labels"]
  length = ids.size
  assert ids.dtype == seg.dtype == labels.dtype == np.int32
  assert pm.dtype == tm.dtype == np.float32
  assert pm.shape == (length, length) and tm.shape == (num_predict, length)
  assert set(np.unique(pm).tolist()) <= {0.0, 1.0}
  # target_mapping: one-hot rows at distinct ascending positions; labels are those tokens.
  assert (tm.sum(1) == 1).all() and set(np.unique(tm).tolist()) == {0.0, 1.0}
  positions = tm.argmax(1)
  assert (np.diff(positions) > 0).all()
  np.testing.assert_array_equal(labels, ids[positions])
  target, functional, context = _kinds(ex)
  assert target.sum() == num_predict and not SPECIAL[ids[target]].any()
  # diag is 1 exactly at targets; context columns all 0; context rows see every context
  # position and no target or functional one.
  np.testing.assert_array_equal(pm.diagonal() == 1, target)
  assert (pm[:, context] == 0).all()
  assert (pm[np.ix_(context, ~context)] == 1).all()
  # Among targets, "i sees j" is a strict total order.
  sees = pm[np.ix_(target, target)] == 0
  assert not sees.diagonal().any()
  assert not (sees & sees.T).any()
  off = ~np.eye(num_predict, dtype=bool)
  assert (sees | sees.T)[off].all()
  s = sees.astype(np.int64)
  assert ((s @ s > 0) <= sees).all()  # transitive
  # Functional tokens see themselves; ordered positions (targets and functional) are totally
  # ordered by "sees", consistent with blocks of perm_size in order.
  ordered = ~context
  rank = (pm[np.ix_(ordered, ordered)] == 0).sum(1) - functional[ordered]
  assert sorted(rank.tolist()) == list(range(ordered.sum()))
  blocks = np.flatnonzero(ordered) // perm_size
  assert (np.diff(blocks[np.argsort(rank)]) >= 0).all()


def _reachable(pm):
  """bool[L, L]: what the query stream at i depends on after any number of layers.

  Content stream i attends to j iff pm[i, j] == 0 or j == i; query stream iff pm[i, j] == 0.
  """
  content = (pm == 0) | np.eye(pm.shape[0], dtype=bool)
  closure = content.copy()
  while True:
    nxt = closure | ((closure.astype(np.int64) @ content.astype(np.int64)) > 0)
    if (nxt == closure).all():
      break
    closure = nxt
  return ((pm == 0).astype(np.int64) @ closure.astype(np.int64)) > 0


# --- invariants over random inputs ---------------------------------------------------------


@st.composite
def _cases(draw):
  length = draw(st.integers(8, 300))
  divisors = [d for d in range(1, length + 1) if length % d == 0]
  perm_size = draw(st.sampled_from([0] + divisors))
  num_predict = draw(st.sampled_from([0, 1, 2, length // 3]))
  return length, perm_size, num_predict, draw(st.booleans()), draw(seeds)


@SETTINGS
@hypothesis.given(case=_cases())
def test_invariants(case):
  length, perm_size, num_predict, reverse, seed = case
  block = _block(seed, length - 3)
  params = {"perm_size": perm_size, "num_predict": num_predict, "reverse": reverse}
  try:
    ex = _example(block, seed, **params)
  except DataError as err:  # only when the block has too few non-special tokens
    assert "non-special tokens" in str(err)
    return
  goal = num_predict or math.floor(length / 6 + 0.5)
  _check(ex, goal, perm_size or length)
  # No leak through any number of layers: the query stream at a target depends on neither
  # its own token nor the targets at or after it in the order.
  target, _, _ = _kinds(ex)
  reach = _reachable(ex["perm_mask"])
  later = ex["perm_mask"] == 1
  assert not (reach & later)[np.ix_(target, target)].any()
  again = _example(block, seed, **params)
  for key, value in ex.items():
    np.testing.assert_array_equal(again[key], value)


def test_default_shapes_and_layout():
  block = _block(3, 509)
  ex = _example(block, 3)
  _check(ex, 85, 512)
  ids, seg = ex["input_ids"], ex["token_type_ids"]
  a = int(np.flatnonzero(ids == SEP)[0])
  assert 1 <= a <= 508 and ids[-2] == SEP and ids[-1] == CLS
  np.testing.assert_array_equal(np.concatenate([ids[:a], ids[a + 1:-2]]), block)
  np.testing.assert_array_equal(seg, [0] * (a + 1) + [1] * (510 - a) + [2])
  # The split falls on a word start, so no word is cut between A and B.
  assert VOCAB.word_start[block[a]] or SPECIAL[block[a - 1]]
  assert pl.num_predict_for(512, pl.PermutationLMParams()) == 85
  assert pl.row_length(509) == 512


def test_reversed_rows_hold_reversed_text_cut_and_masked_on_natural_words():
  """bi_data rows: `rev(block)[:a] <sep> rev(block)[a:] <sep> <cls>`; the cut is a natural word
  boundary and a lone prediction (num_predict 1: one span of one token) is a natural word
  start, as the original's _sample_mask(reverse=True) gives."""
  block = _block(6, 125, specials=False)
  starts = pl._candidates(block, VOCAB)[1]
  cuts, picked = set(), set()
  for seed in range(300):
    ex = _example(block, seed, reverse=True, num_predict=1)
    ids = ex["input_ids"]
    a = int(np.flatnonzero(ids == SEP)[0])
    np.testing.assert_array_equal(np.concatenate([ids[:a], ids[a + 1:-2]]), block[::-1])
    assert ids[-2] == SEP and ids[-1] == CLS
    # Natural position of the token just before the cut in the reversed row starts a word.
    assert starts[block.size - a], (seed, a)
    cuts.add(a)
    (pos,) = np.flatnonzero(ex["target_mapping"][0])
    natural = block.size - (pos if pos < a else pos - 1) - 1
    assert starts[natural], (seed, pos)
    picked.add(natural)
  assert len(cuts) > 10
  # The walk runs over the natural order: its first span lies within the first context
  # window (6 tokens) of the natural text, i.e. at the end of the reversed row.
  assert len(picked) >= 3 and max(picked) < 12, picked
  forward = _example(block, 0, num_predict=1)
  assert not np.array_equal(forward["input_ids"][:-3], _example(block, 0, reverse=True)[
      "input_ids"][:-3])


@st.composite
def _reuse_cases(draw):
  reuse = draw(st.sampled_from([8, 12, 24]))
  rest = draw(st.sampled_from([8, 12, 24]))  # L - R, the 3 functional tokens included
  sizes = [d for d in range(1, min(reuse, rest) + 1) if reuse % d == 0 and rest % d == 0]
  perm_size = draw(st.sampled_from([0] + sizes))
  return reuse, rest, perm_size, draw(st.sampled_from([0, 2, 5])), draw(st.booleans()), \
      draw(seeds)


@SETTINGS
@hypothesis.given(case=_reuse_cases())
def test_reuse_layout_invariants(case):
  """Memory layout: `block[:R] A <sep> B <sep> <cls>`; the reuse part sees nothing after it,
  the rest sees all of it; P - P//2 targets in the reuse part and P//2 in the rest, each
  part with its own order, the reuse part first; no target leaks through any depth."""
  reuse, rest, perm_size, num_predict, reverse, seed = case
  length = reuse + rest
  block = _block(seed, length - 3, specials=False)
  ex = _example(block, seed, reverse=reverse, reuse_len=reuse, perm_size=perm_size,
                num_predict=num_predict)
  ids, seg, pm = ex["input_ids"], ex["token_type_ids"], ex["perm_mask"]
  goal = num_predict or math.floor(length / 6 + 0.5)
  text = block[::-1] if reverse else block
  np.testing.assert_array_equal(ids[:reuse], text[:reuse])
  a = reuse + int(np.flatnonzero(ids[reuse:] == SEP)[0])
  np.testing.assert_array_equal(np.concatenate([ids[reuse:a], ids[a + 1:-2]]), text[reuse:])
  np.testing.assert_array_equal(seg, [0] * (a + 1) + [1] * (length - a - 2) + [2])
  target = ex["target_mapping"].sum(0) > 0
  assert target[:reuse].sum() == goal - goal // 2 and target[reuse:].sum() == goal // 2
  np.testing.assert_array_equal(ex["labels"], ids[target])
  np.testing.assert_array_equal(pm.diagonal() == 1, target)
  assert (pm[:reuse, reuse:] == 1).all() and (pm[reuse:, :reuse] == 0).all()
  # Among all targets "sees" is a strict total order, the reuse part's targets first; each
  # part's order comes in blocks of its perm_size.
  sees = pm[np.ix_(target, target)] == 0
  assert not (sees & sees.T).any() and (sees | sees.T)[~np.eye(goal, dtype=bool)].all()
  rank = sees.sum(1)
  assert (rank[:goal - goal // 2] < goal - goal // 2).all()
  for part, size in ((slice(0, reuse), perm_size or reuse),
                     (slice(reuse, length), perm_size or rest)):
    t = np.flatnonzero(target[part])
    part_rank = (pm[part, part][np.ix_(t, t)] == 0).sum(1)
    assert (np.diff((t // size)[np.argsort(part_rank)]) >= 0).all()
  reach = _reachable(pm)
  assert not (reach & (pm == 1))[np.ix_(target, target)].any()
  # Nothing in the reuse part depends on the rest (the cached memory saw only its past).
  assert not reach[:reuse, reuse:].any()


def test_reuse_perm_mask_non_target_columns_are_not_all_zero():
  """Issue 17.8 (documents the original): with reuse_len > 0 the reuse part's rows cannot see
  any of the rest (the original's ones([R, L - R]) block), so the rest's context (non-target,
  non-functional) columns hold 1s; context columns are all 0 within each part."""
  block = _block(3, 45, specials=False)  # L = 48 = 24 + 24
  for seed in range(20):
    ex = _example(block, seed, reuse_len=24, perm_size=8, num_predict=8)
    context = _kinds(ex)[2]
    pm = ex["perm_mask"]
    rest_context = np.flatnonzero(context[24:]) + 24
    assert rest_context.size and (pm[:24, rest_context] == 1).all()
    assert (pm[24:, rest_context] == 0).all()
    assert (pm[:, np.flatnonzero(context[:24])] == 0).all()
    assert (pm[:, context] != 0).any(axis=0).sum() == rest_context.size


@pytest.mark.parametrize("preset", ["xlnet_base", "xlnet_large"])
def test_presets_pretrain_with_the_originals_data_flags(preset):
  """Issue 17.8: the XLNet README's pretraining data (data_utils.py --bi_data=True, train.py's
  default) and flags: bi_data on, seq_len 512, reuse_len 256, mem_len 384, perm_size 256,
  num_predict 85, mask_alpha 6 / mask_beta 1; the preset validates with bi_data (even batch,
  half of it divisible by grad_accum_steps)."""
  config = config_lib.load_config(preset)
  m, o = config.model, config.objective
  assert m.bi_data and (m.reuse_len, m.mem_len, config.data.seq_len) == (256, 384, 512)
  assert (o.perm_size, o.num_predict, o.mask_alpha, o.mask_beta) == (256, 85, 6.0, 1.0)
  assert (config.train.batch_size // 2) % config.optim.grad_accum_steps == 0


def test_reuse_layout_bad_input():
  block = _block(0, 29, specials=False)
  with pytest.raises(DataError, match="block too short.*need >= 30 \\(reuse_len 28 \\+ 2\\)"):
    _example(block, 0, reuse_len=28)
  with pytest.raises(DataError, match="perm_size 8 must divide both reuse_len 12 and the rest "
                                      "of the row, 20 tokens"):
    _example(block, 0, reuse_len=12, perm_size=8)


def test_determinism_per_seed():
  block = _block(0, 509)
  a, b, c = _example(block, 7), _example(block, 7), _example(block, 8)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["perm_mask"], c["perm_mask"])
  assert not np.array_equal(a["target_mapping"], c["target_mapping"])


def test_split_point_uniform_over_word_starts():
  block = _block(5, 61, specials=False)
  _, starts = pl._candidates(block, VOCAB)
  cuts = np.flatnonzero(starts[1:]) + 1
  n = 4000
  counts = np.zeros(block.size, np.int64)
  for seed in range(n):
    ids = _example(block, seed)["input_ids"]
    counts[np.flatnonzero(ids == SEP)[0]] += 1
  assert set(np.flatnonzero(counts).tolist()) == set(cuts.tolist())
  expected = n / cuts.size
  chi2 = ((counts[cuts] - expected) ** 2 / expected).sum()
  dof = cuts.size - 1
  assert chi2 < dof + 5 * math.sqrt(2 * dof)


def test_shared_permutation_across_blocks():
  # Every position predicted, so the order of targets is the whole permutation.
  block = _block(2, 45, specials=False)  # L = 48
  for seed in range(20):
    ex = _example(block, seed, perm_size=12, num_predict=45)
    target, functional, _ = _kinds(ex)
    ordered = target | functional
    rank = np.full(48, -1)
    rank[ordered] = (ex["perm_mask"][np.ix_(ordered, ordered)] == 0).sum(1) - functional[ordered]
    # The three functional positions take part in the order like targets, so all 48 ranks.
    np.testing.assert_array_equal(np.sort(rank), np.arange(48))
    offsets = rank.reshape(4, 12) - 12 * np.arange(4)[:, None]
    assert (offsets == offsets[0]).all() and sorted(offsets[0].tolist()) == list(range(12))


def test_order_is_uniform():
  # P(first target precedes last target) = 1/2 under a uniform permutation.
  block = _block(4, 125, specials=False)
  n, first = 2000, 0
  for seed in range(n):
    ex = _example(block, seed)
    pos = ex["target_mapping"].argmax(1)
    first += ex["perm_mask"][pos[-1], pos[0]] == 0
  assert abs(first - n / 2) < 4 * math.sqrt(n / 4)


# --- prediction choice (`_sample_mask`) ----------------------------------------------------


def test_spans_start_on_word_starts_and_stop_at_specials():
  params = pl.PermutationLMParams()
  for seed in range(50):
    row, _ = pl.layout(_block(seed, 509), 200, VOCAB)
    cand, starts = pl._candidates(row, VOCAB)
    target, span_starts, lengths = pl.select_targets(row, np.random.default_rng(seed), params,
                                                     VOCAB, 85)
    assert target.sum() == 85 and cand[target].all()
    assert starts[span_starts].all() and (lengths >= 1).all() and (lengths <= 5).all()
    ends = span_starts + lengths
    assert (span_starts[1:] > ends[:-1]).all()  # separated by at least one token
    for b, e in zip(span_starts, ends):
      assert cand[b:e].all() and target[b:e].all()
    assert lengths.sum() <= 85


def test_start_pieces_are_xlnets_is_start_piece():
  """Issue 17.6: as the original's `_is_start_piece`, a piece starting with `▁` (`▁` alone
  too) or `<`, or a bare punctuation piece of its set (ASCII less ' = >), starts a word; byte
  pieces `<0x..>` do not. BERT whole-word masking and BART keep the `▁` table."""
  tok = tokenizer.Tokenizer.load(tokenizer.bundled_tokenizer_path())
  info = tok.vocab_info()
  ids = tok.encode('Hello, world. (This) is "quoted"; ok?')
  pieces = [tok.id_to_piece(int(i)) for i in ids]
  assert pieces == ["▁H", "e", "ll", "o", ",", "▁wor", "l", "d", ".", "▁(", "This", ")", "▁is",
                    '▁"', "quoted", '";', "▁", "ok", "?"]
  starts = pl._candidates(ids.astype(np.int32), info)[1]
  # '";' is punctuation but not one character: it continues "quoted", as in the original.
  assert [p for p, s in zip(pieces, starts) if s] == [
      "▁H", ",", "▁wor", ".", "▁(", ")", "▁is", '▁"', "▁", "?"]
  # A span (one token here) may start at a bare punctuation piece, as in the original.
  row, _ = pl.layout(ids.astype(np.int32), 5, info)
  picked = {int(np.flatnonzero(pl.select_targets(row, np.random.default_rng(s),
                                                 pl.PermutationLMParams(), info, 1)[0])[0])
            for s in range(200)}
  assert {4, 9} & picked  # "," (row position 4) or "." (9, after the inserted <sep>)
  piece_id = {tok.id_to_piece(i): i for i in range(tok.sp_vocab_size)}
  for piece, expected in [(",", True), (".", True), ("(", True), ('"', True), ("?", True),
                          ("<", True), ("<?>", True), ("▁", True), ("▁the", True),
                          ("'", False), ("=", False), (">", False), ("–", False),
                          ("s", False), ("<0xE2>", False)]:
    i = piece_id[piece]
    assert info.start_piece[i] == expected, piece
    assert info.word_start[i] == piece.startswith("▁"), piece  # the `▁` table is unchanged


def test_span_lengths_and_context():
  # A row where every token starts a word and nothing is special: spans are exactly the drawn
  # n (except the last, which may hit the end), and start exactly at cur + l.
  params = pl.PermutationLMParams()
  length = 4000
  cand = np.ones(length, bool)
  lengths_all, gaps = [], []
  for seed in range(40):
    starts, lengths = pl.sample_spans(cand, cand, np.random.default_rng(seed), params, length)
    lengths_all.append(lengths[:-1])
    assert 0 <= starts[0] < 6 * lengths[0]
    gap = starts[1:] - (starts[:-1] + lengths[:-1])
    ctx = 6 * lengths
    assert (gap >= 1).all() and (gap <= ctx[:-1] + ctx[1:] - 1).all()
    gaps.append(gap[:-1])
  observed = np.bincount(np.concatenate(lengths_all), minlength=6)[1:]
  pmf = (1 / np.arange(1, 6)) / (1 / np.arange(1, 6)).sum()
  expected = observed.sum() * pmf
  chi2 = ((observed - expected) ** 2 / expected).sum()
  assert chi2 < 23.5  # 4 dof: P(chi2 > 23.5) ≈ 1e-4
  # Mean gap E[r + l] = E[c] = 6 E[n] with r in [1, c], l in [0, c) of neighbouring spans.
  gaps = np.concatenate(gaps)
  mean_n = float(np.dot(np.arange(1, 6), pmf))
  assert abs(gaps.mean() - 6 * mean_n) < 4 * gaps.std() / math.sqrt(gaps.size) + 0.05


def test_no_span_reaches_the_end_of_a_part():
  """Issue 17.7: as the original's `if end >= seg_len: break`, the walk ends where a span would
  reach a part's last token, so over many draws no span ends there, while the top-up still
  makes num_predict exact (and may pick the last token)."""
  params = pl.PermutationLMParams()
  cand = np.ones(40, bool)
  reaching = 0
  for seed in range(2000):
    starts, lengths = pl.sample_spans(cand, cand, np.random.default_rng(seed), params, 7)
    reaching += int((starts + lengths >= 40).any())
  assert reaching == 0  # 338 of these 2000 draws had one before
  # The same through select_targets on real rows (the <cls> is special anyway, so use a
  # reuse-like part of normal tokens whose last token is selectable), num_predict exact.
  last_by_top_up = 0
  for seed in range(500):
    part = _block(seed, 40, specials=False)
    target, starts, lengths = pl.select_targets(part, np.random.default_rng(seed), params,
                                                VOCAB, 7)
    assert target.sum() == 7 and not (starts + lengths >= 40).any()
    last_by_top_up += int(target[-1])
  assert last_by_top_up > 0


class _FixedDraws:
  """Stands in for the generator in `sample_spans`: its one `random((2, k))` call gets the given
  span-length draws (row 0) and context draws (row 1), padded with 0."""

  def __init__(self, n_draws: list[float], ctx_draws: list[float]):
    self.rows = (n_draws, ctx_draws)

  def random(self, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape)
    for r, values in enumerate(self.rows):
      out[r, :len(values)] = values
    return out


def test_a_span_that_would_run_past_the_end_ends_the_walk_even_if_a_special_cuts_it():
  """`x x x <sep> x x x x <sep> <cls>` (L = 10), every token a word start: n = 5 from
  position 5 would reach the end (5 + 5 >= 10), so the original stops there; ours must not
  keep it cut to [5, 8) at the <sep>. From position 4 (4 + 5 = 9 < 10) the original keeps
  [4, 9) and drops the <sep> as functional: ours keeps [4, 8)."""
  cand = np.array([1, 1, 1, 0, 1, 1, 1, 1, 0, 0], bool)
  params = pl.PermutationLMParams()  # max_span 5, context 6n = 30
  n5 = 0.999  # the top of the CDF: n = 5
  starts, lengths = pl.sample_spans(cand, cand, _FixedDraws([n5], [5.5 / 30]), params, 7)
  assert starts.size == 0, (starts, lengths)
  starts, lengths = pl.sample_spans(cand, cand, _FixedDraws([n5], [4.5 / 30]), params, 7)
  assert starts.tolist() == [4] and lengths.tolist() == [4]


def test_goal_cuts_the_last_span_and_top_up_is_exact():
  params = pl.PermutationLMParams(max_span=5)
  row, _ = pl.layout(_block(1, 97, specials=False), 50, VOCAB)
  for goal in (1, 2, 7, 50, 97):
    for seed in range(20):
      target, _, lengths = pl.select_targets(row, np.random.default_rng(seed), params, VOCAB,
                                             goal)
      assert target.sum() == goal and lengths.sum() <= goal


def test_spans_cover_about_one_seventh_before_top_up():
  # With alpha / beta = 6 each span of n tokens sits in a window of ~7n tokens.
  params = pl.PermutationLMParams()
  cand = np.ones(512, bool)
  covered = [pl.sample_spans(cand, cand, np.random.default_rng(s), params, 512)[1].sum()
             for s in range(200)]
  assert 512 / 7 * 0.8 < np.mean(covered) < 512 / 7 * 1.2


# --- HF compatibility and the model-level invariant -----------------------------------------


def test_hf_xlnet_accepts_the_batch_and_does_not_leak():
  import torch  # test dependencies (setup.py [test]); never skipped
  import transformers
  torch.manual_seed(0)
  config = transformers.XLNetConfig(vocab_size=VOCAB.vocab_size, d_model=16, n_layer=2,
                                    n_head=2, d_inner=32, dropout=0.0)
  model = transformers.XLNetLMHeadModel(config).eval()
  exs = [_example(_block(s, 29), s, num_predict=5) for s in range(2)]
  batch = {k: torch.from_numpy(np.stack([e[k] for e in exs])) for k in exs[0]}
  embeds = model.transformer.word_embedding(batch["input_ids"].long()).detach()
  embeds.requires_grad_(True)
  out = model(inputs_embeds=embeds, token_type_ids=batch["token_type_ids"].long(),
              perm_mask=batch["perm_mask"], target_mapping=batch["target_mapping"],
              labels=batch["labels"].long())
  assert out.logits.shape == (2, 5, VOCAB.vocab_size) and torch.isfinite(out.loss)
  for b, ex in enumerate(exs):
    pos = ex["target_mapping"].argmax(1)
    for k, i in enumerate(pos):
      (grad,) = torch.autograd.grad(out.logits[b, k].sum(), embeds, retain_graph=True)
      norms = grad[b].norm(dim=-1).numpy()
      hidden = ex["perm_mask"][i, pos] == 1  # itself and the targets after it in the order
      assert hidden[k] and (norms[pos[hidden]] == 0).all()
      assert (norms[pos[~hidden]] > 0).all()


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,value", [
    ("num_predict", -1), ("num_predict", 2.0), ("num_predict", True), ("perm_size", -2),
    ("max_span", 0), ("mask_alpha", 0.0), ("mask_alpha", float("nan")), ("mask_beta", -1.0),
    ("mask_beta", float("inf"))])
def test_bad_params_raise(name, value):
  with pytest.raises(DataError, match=f"PermutationLMParams.{name} must be") as info:
    pl.PermutationLMParams(**{name: value})
  assert "\n" not in str(info.value) and str(info.value).endswith(f"got {value!r}")


def test_bad_param_combinations_raise():
  with pytest.raises(DataError, match=r"mask_alpha / mask_beta must be >= 1.*got 1.0 / 2.0"):
    pl.PermutationLMParams(mask_alpha=1.0, mask_beta=2.0)


def test_bad_inputs_raise():
  rng = np.random.default_rng(0)
  block = _block(0, 509, specials=False)
  with pytest.raises(DataError, match="perm_size 100 must divide the row length 512"):
    _example(block, 0, perm_size=100)
  with pytest.raises(DataError, match="num_predict 512 must be < the row length 512"):
    _example(block, 0, num_predict=512)
  with pytest.raises(DataError, match="num_predict 510 exceeds the 509 non-special tokens"):
    _example(block, 0, num_predict=510)
  mostly_eos = np.full(60, EOS, np.int32)
  mostly_eos[:5] = block[:5]
  with pytest.raises(DataError, match="num_predict 11 exceeds the 5 non-special tokens"):
    _example(mostly_eos, 0)
  with pytest.raises(DataError, match="block too short for permutation LM: 1 tokens"):
    pl.make_example(block[:1], rng, pl.PermutationLMParams(), VOCAB)
  with pytest.raises(DataError, match="1-D integer"):
    pl.make_example(block.reshape(1, -1), rng, pl.PermutationLMParams(), VOCAB)
  with pytest.raises(DataError, match="1-D integer"):
    pl.make_example(block.astype(np.float32), rng, pl.PermutationLMParams(), VOCAB)


def test_smallest_block():
  block = _block(0, 2, specials=False)
  ex = _example(block, 0)  # L = 5, P = 1
  _check(ex, 1, 5)
