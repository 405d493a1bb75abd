"""ALBERT's rows (data_pipelines.objectives.sentence_order): SOP pairs are two consecutive
segments of one document, labelled 1 exactly when swapped, swapped half the time; a
one-sentence document falls back to a random pair; n-grams of whole words with P(n) ~ 1/n."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from data_pipelines.objectives import mlm
from data_pipelines.objectives import sentence_order as sop
from data_pipelines.vocab import IGNORE_INDEX, SPECIAL_PIECES, VocabInfo

V = 1000
SEQ = 64  # row length; blocks are SEQ - 3


def _vocab() -> VocabInfo:
  """Ids >= 10: even ids start a word, multiples of 7 end a sentence."""
  ids = np.arange(V)
  is_special = ids < len(SPECIAL_PIECES)
  word_start = (ids % 2 == 0) | is_special
  sentence_end = (ids % 7 == 0) & ~is_special
  return VocabInfo(vocab_size=V, is_special=is_special, word_start=word_start,
                   sentinel_ids=np.zeros(0, np.int32), sentence_end=sentence_end)


VOCAB = _vocab()


def _params(**kw) -> sop.SOPParams:
  masking = mlm.MLMParams(max_predictions=mlm.default_max_predictions(SEQ, 0.15, True),
                          whole_word=True, max_ngram=3)
  return sop.SOPParams(masking=masking, **kw)


def _original(example: dict[str, np.ndarray]) -> np.ndarray:
  ids = example["input_ids"].copy()
  masked = example["labels"] != IGNORE_INDEX
  ids[masked] = example["labels"][masked]
  return ids


def _segments(example: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(first, second) segment of `[CLS] first [SEP] second [SEP] pad`, unmasked."""
  ids = _original(example)
  seps = np.flatnonzero(ids == VOCAB.sep_id)
  assert ids[0] == VOCAB.cls_id and seps.size == 2
  return ids[1:seps[0]], ids[seps[0] + 1:seps[1]]


def test_a_swapped_pair_is_labelled_1_and_a_pair_in_order_0():
  doc = np.arange(10, 10 + SEQ - 3)  # a block cut from mid-document; sentences end at 7k
  starts = sop._sentence_starts(doc, VOCAB)
  whole = doc[starts[0]:starts[-1]]  # its whole sentences (the partial ends are left out)
  seen = set()
  for seed in range(200):
    ex = sop.make_example(doc, np.random.default_rng(seed), _params(), VOCAB)
    first, second = _segments(ex)
    assert first.size and second.size
    label = int(ex["sentence_order_label"])
    a, b = (first, second) if label == 0 else (second, first)
    # a and b are consecutive segments of whole sentences, split at a sentence start
    np.testing.assert_array_equal(np.concatenate([a, b]), whole)
    assert VOCAB.sentence_end[a[-1]] and not VOCAB.sentence_end[b[0]]
    # token types: 0 through the first [SEP], 1 on the second segment and its [SEP]
    types = ex["token_type_ids"]
    np.testing.assert_array_equal(types[:first.size + 2], 0)
    np.testing.assert_array_equal(types[first.size + 2:first.size + second.size + 3], 1)
    seen.add((label, a.size))
  assert {label for label, _ in seen} == {0, 1}
  # every inner sentence boundary is used as the split (uniform over them)
  assert len({size for _, size in seen}) == len(starts) - 2


def test_both_segments_start_and_end_at_sentence_boundaries_in_either_order():
  """The order cannot be read off the segments' edges (as in the reference, whose segments
  are lists of sentences): a block edge inside a document drops the partial sentence there,
  and a document's own start and end (EOS) are kept."""
  eos = VOCAB.eos_id
  doc = np.arange(10, 10 + SEQ - 3)
  for seed in range(100):
    first, second = _segments(sop.make_example(doc, np.random.default_rng(seed), _params(),
                                               VOCAB))
    for segment in (first, second):
      assert VOCAB.sentence_end[segment[-1]]
  # a document that starts inside the block (after EOS) and ends at its edge keeps its first
  # sentence, even without a preceding full stop, and drops its partial last one
  tail = np.arange(10, 30)  # 14, 21, 28 end sentences
  block = np.concatenate([[11, 12, eos], tail, np.arange(30, 30 + SEQ - 3 - 23)])
  pair = sop.choose_pair(block, np.zeros(1), VOCAB)
  assert pair.kind == "pair" and pair.a[0] == 3
  assert VOCAB.sentence_end[block[pair.b[1] - 1]] and not VOCAB.sentence_end[block[pair.b[1]]]
  # one whole sentence between two partial ones: consecutive segments with their partial
  # ends ("partial", the edges then hint at the order; counted in the data warning)
  lone = np.array([16, 17, 18, 21, 23, 25, 27, 28, 29, 30] + [31] * (SEQ - 13))
  assert sop.pair_kind(lone, VOCAB) == "partial"
  ex = sop.make_example(lone, np.random.default_rng(0), _params(swap_prob=0.0), VOCAB)
  first, second = _segments(ex)
  np.testing.assert_array_equal(np.concatenate([first, second]), lone)


def test_sop_labels_are_balanced_within_the_binomial_interval():
  doc = np.arange(10, 10 + SEQ - 3)
  n = 4000
  swapped = sum(int(sop.make_example(doc, np.random.default_rng([7, i]), _params(),
                                     VOCAB)["sentence_order_label"]) for i in range(n))
  low, high = stats.binom.interval(0.999, n, 0.5)
  assert low <= swapped <= high, (swapped, low, high)


def test_a_one_sentence_document_falls_back_to_a_random_pair_labelled_1():
  eos = VOCAB.eos_id
  # three one-sentence documents (no sentence end inside), the longest in the middle
  long_doc = np.array([i for i in range(101, 200, 2) if i % 7][:20])
  short_docs = [np.arange(200, 210), np.arange(300, 312)]
  block = np.concatenate([short_docs[0], [eos], long_doc, [eos], short_docs[1], [eos]])
  block = np.concatenate([block, np.zeros(SEQ - 3 - block.size, np.int64)])
  assert sop.pair_kind(block, VOCAB) == "random"
  partners = set()
  for seed in range(50):
    ex = sop.make_example(block, np.random.default_rng(seed), _params(swap_prob=1.0), VOCAB)
    first, second = _segments(ex)
    assert int(ex["sentence_order_label"]) == 1
    np.testing.assert_array_equal(first, long_doc)  # never swapped
    partners.add(int(second[0]))
  assert partners == {200, 300}
  # one sentence filling the whole block: split at a word start, swapped as a pair
  lone = np.array([i for i in range(400, 600) if i % 7][:SEQ - 3])
  assert sop.pair_kind(lone, VOCAB) == "mid_sentence"
  ex = sop.make_example(lone, np.random.default_rng(0), _params(swap_prob=1.0), VOCAB)
  first, second = _segments(ex)
  assert int(ex["sentence_order_label"]) == 1 and first.size and second.size
  np.testing.assert_array_equal(np.concatenate([second, first]), lone)
  assert VOCAB.word_start[first[0]]
  assert sop.pair_kind(np.zeros(SEQ - 3, np.int64), VOCAB) == "empty"


def test_ngram_lengths_are_drawn_with_p_proportional_to_1_over_n():
  words = 30000
  run_start = np.zeros(words, bool)
  run_start[0] = True
  units = mlm.ngram_units(run_start, np.random.default_rng(0), 3)
  lengths = np.bincount(units)[:-1]  # the last n-gram may be cut by the end
  observed = np.bincount(lengths, minlength=4)[1:]
  expected = lengths.size * np.array([1, 1 / 2, 1 / 3]) / (1 + 1 / 2 + 1 / 3)
  # chi-square at 99.9% (2 degrees of freedom): a fixed seed, the tolerance from the sample
  assert stats.chisquare(observed, expected).pvalue > 1e-3, (observed, expected)
  assert lengths.max() == 3


def test_ngrams_never_cross_a_run_start():
  rng = np.random.default_rng(1)
  for _ in range(50):
    run_start = rng.random(40) < 0.2
    run_start[0] = True
    units = mlm.ngram_units(run_start, rng, 3)
    assert np.all(np.diff(units) >= 0) and units[0] == 0
    # a run start always begins a new n-gram
    starts = np.flatnonzero(run_start)[1:]
    assert np.all(units[starts] == units[starts - 1] + 1)


def test_masks_cover_whole_words_only_and_never_a_special():
  doc = np.arange(10, 10 + SEQ - 3)
  spans = []
  for seed in range(300):
    ex = sop.make_example(doc, np.random.default_rng(seed), _params(), VOCAB)
    ids, masked = _original(ex), ex["labels"] != IGNORE_INDEX
    assert not np.any(masked & VOCAB.is_special[ids])
    real = ex["attention_mask"] > 0
    special = VOCAB.is_special[ids] | ~real
    starts = VOCAB.word_start[ids] | np.concatenate([[True], special[:-1]])
    word = np.cumsum(starts)
    for w in np.unique(word[masked]):
      assert np.all(masked[(word == w) & ~special]), (seed, w)
    edges = np.diff(np.concatenate([[0], masked.astype(np.int8), [0]]))
    spans += list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
  # about 15% of the words are masked, in spans longer than single words on average
  assert np.mean(spans) > 2.0


@pytest.mark.parametrize("swap_prob, label", [(0.0, 0), (1.0, 1)])
def test_swap_prob_0_and_1_fix_the_label(swap_prob, label):
  doc = np.arange(10, 10 + SEQ - 3)
  for seed in range(20):
    ex = sop.make_example(doc, np.random.default_rng(seed), _params(swap_prob=swap_prob), VOCAB)
    assert int(ex["sentence_order_label"]) == label
