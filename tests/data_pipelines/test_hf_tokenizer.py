"""`HFTokenizer`: a checkpoint's own HuggingFace tokenizer (WordPiece `vocab.txt`, or a
`tokenizer.json`) with its special ids, `##` / `▁` word starts and whole-word masking."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from data_pipelines.errors import DataError
from data_pipelines.hf_tokenizer import HFTokenizer
from data_pipelines.objectives import mlm, span_corruption
from data_pipelines.tokenizer import Tokenizer as SPTokenizer
from data_pipelines.tokenizer import load_tokenizer

WORDPIECE = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat",
             "on", "mat", "un", "##believ", "##able", "##s", "play", "##ing", ".", "!", "a",
             "dog", "##gy"]


@pytest.fixture
def wordpiece_dir(tmp_path) -> str:
  folder = tmp_path / "wp"
  folder.mkdir()
  (folder / "vocab.txt").write_text("\n".join(WORDPIECE) + "\n", encoding="utf-8")
  return str(folder)


def test_wordpiece_vocab_txt_ids_and_word_starts(wordpiece_dir):
  tok = load_tokenizer(wordpiece_dir)
  assert isinstance(tok, HFTokenizer) and tok.kind == "hf" and tok.vocab_size == len(WORDPIECE)
  assert tok.special_ids == {"pad": 0, "unk": 2, "cls": 3, "sep": 4, "mask": 5, "bos": None,
                             "eos": None}
  info = tok.vocab_info()
  assert (info.pad_id, info.unk_id, info.cls_id, info.sep_id, info.mask_id, info.eos_id) == (
      0, 2, 3, 4, 5, 4)  # no </s>: [SEP] separates documents
  assert info.is_special[[0, 2, 3, 4, 5]].all() and info.is_special.sum() == 5
  assert tok.num_sentinels == 0 and len(info.sentinel_ids) == 0
  ids = tok.encode("The cat sat on unbelievable mats!")  # lower-cased, as BertTokenizer
  pieces = [tok.id_to_piece(i) for i in ids]
  assert pieces == ["the", "cat", "sat", "on", "un", "##believ", "##able", "mat", "##s", "!"]
  assert info.word_start[ids].tolist() == [not p.startswith("##") for p in pieces]
  assert info.sentence_end[ids].tolist() == [p == "!" for p in pieces]
  assert tok.decode(ids) == "the cat sat on unbelievable mats!"
  assert [x.tolist() for x in tok.encode_batch(["a dog", "doggy"])] == [[19, 20], [20, 21]]
  assert tok.sha256 == load_tokenizer(os.path.join(wordpiece_dir, "vocab.txt")).sha256


def test_wordpiece_whole_word_masking(wordpiece_dir):
  tok = load_tokenizer(wordpiece_dir)
  info = tok.vocab_info()
  block = tok.encode("the unbelievable dog playing on a mat . unbelievable cats sat doggy "
                     "playing the mat")
  starts = info.word_start[block]
  word_of = np.cumsum(starts) - 1  # every token's word index
  assert not starts.all()  # there are continuation pieces to keep together
  params = mlm.MLMParams(max_predictions=len(block), mask_prob=0.3, whole_word=True)
  saw_multi_piece = False
  for seed in range(50):
    ex = mlm.make_example(block, np.random.default_rng(seed), params, info)
    assert ex["input_ids"][0] == info.cls_id and ex["input_ids"][-1] == info.sep_id
    chosen = np.flatnonzero(ex["labels"][1:-1] != mlm.IGNORE_INDEX)
    words = np.unique(word_of[chosen])
    # Whole words: every piece of a chosen word is chosen.
    np.testing.assert_array_equal(chosen, np.flatnonzero(np.isin(word_of, words)))
    saw_multi_piece |= any(np.count_nonzero(word_of == w) > 1 for w in words)
    replaced = ex["input_ids"][1:-1][chosen]
    assert not np.isin(replaced, [0, 2, 3, 4]).any()  # never pad/unk/cls/sep
  assert saw_multi_piece


def _metaspace_dir(folder) -> str:
  """A T5-style sentencepiece (Metaspace, Unigram) tokenizer.json with 3 sentinels."""
  pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0), ("▁the", -1.0),
            ("▁cat", -1.5), ("s", -2.0), ("▁sat", -1.5), (".", -1.0), ("▁on", -1.5),
            ("▁mat", -1.5), ("a", -3.0), ("t", -3.0), ("m", -3.0), ("c", -3.0), ("h", -3.0),
            ("e", -3.0), ("o", -3.0), ("n", -3.0), ("?", -1.0)]
  tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
  tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
  tok.add_special_tokens([AddedToken(p, special=True, normalized=False)
                          for p in ("<pad>", "</s>", "<unk>")])
  tok.add_special_tokens([AddedToken(f"<extra_id_{i}>", special=True, normalized=False)
                          for i in (2, 1, 0)])
  os.makedirs(folder)
  tok.save(os.path.join(folder, "tokenizer.json"))
  with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump({"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
               "tokenizer_class": "T5Tokenizer"}, f)
  return str(folder)


def test_metaspace_tokenizer_json(tmp_path):
  folder = _metaspace_dir(tmp_path / "t5")
  tok = load_tokenizer(folder)
  assert tok.vocab_size == 23 and tok.num_sentinels == 3
  np.testing.assert_array_equal(tok.sentinel_ids, [22, 21, 20])  # <extra_id_0> on top
  info = tok.vocab_info()
  assert (info.pad_id, info.eos_id, info.unk_id) == (0, 1, 2)
  assert tok.missing_roles(["eos"]) == [] and tok.missing_roles(["mask", "cls"]) == ["mask",
                                                                                    "cls"]
  ids = tok.encode("the cats sat on the mat.")
  pieces = [tok.id_to_piece(i) for i in ids]
  assert pieces == ["▁the", "▁cat", "s", "▁sat", "▁on", "▁the", "▁mat", "."]
  assert info.word_start[ids].tolist() == [p.startswith("▁") for p in pieces]
  assert info.sentence_end[ids].tolist() == [p == "." for p in pieces]
  assert info.is_special[[0, 1, 2, 20, 21, 22]].all() and info.is_special.sum() == 6
  assert not np.isin(info.normal_ids, [0, 1, 2, 20, 21, 22]).any()
  assert tok.decode([*ids, 22]) == "the cats sat on the mat.<extra_id_0>"
  assert tok.decode([22, 4, 5, 21, 6, 0, 1]) == "<extra_id_0> the cat<extra_id_1>s"
  # Span corruption takes the sentinels (and </s>) from the tokenizer.
  block = np.tile(ids, 4)
  ex = span_corruption.make_example(block, np.random.default_rng(0),
                                    span_corruption.SpanCorruptionParams(), info)
  assert ex["input_ids"][-1] == 1 and ex["labels"][-1] == 1
  assert set(ex["input_ids"][ex["input_ids"] >= 20].tolist()) <= {20, 21, 22}


def test_load_tokenizer_specs(tmp_path):
  assert isinstance(load_tokenizer("bundled"), SPTokenizer)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(DataError):
    load_tokenizer(str(empty))
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "tokenizer.json").write_text("{not json", encoding="utf-8")
  with pytest.raises(DataError, match="could not be loaded"):
    load_tokenizer(str(bad))


def test_metaspace_xlnet_start_pieces(tmp_path):
  """XLNet's start pieces (`VocabInfo.start_piece`, issue 17.6) from a tokenizer.json: a bare
  `.` starts a word there but not in the `▁` table the other objectives use."""
  tok = load_tokenizer(_metaspace_dir(tmp_path / "t5"))
  info = tok.vocab_info()
  ids = tok.encode("the cats sat on the mat.")
  pieces = [tok.id_to_piece(i) for i in ids]
  assert info.start_piece[ids].tolist() == [p.startswith("▁") or p == "." for p in pieces]
  assert not info.word_start[ids[-1]]
  assert info.start_piece[[0, 1, 2, 20, 21, 22]].all()  # specials, as in word_start
