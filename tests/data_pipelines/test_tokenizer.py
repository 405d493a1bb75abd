"""Tests for data_pipelines.tokenizer: special ids, sentinels, tables, determinism, errors."""

import json
import os
import pathlib

import numpy as np
import pytest

from data_pipelines import tokenizer, vocab
from data_pipelines.errors import DataError

TINY_VOCAB = 300
TINY_SENTINELS = 10
_SYLLABLES = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"]


def _lexicon(seed: int = 0, size: int = 400) -> list[str]:
  rng = np.random.default_rng(seed)
  return ["".join(rng.choice(_SYLLABLES, size=rng.integers(1, 4))) for _ in range(size)]


_WORDS = ["the", "fox", "dog", "lazy", "1984", "2023"] + _lexicon()


def tiny_documents(num_docs: int = 80, seed: int = 0) -> list[str]:
  """Synthetic documents of a few sentences of Zipf-distributed pseudo-words (deterministic)."""
  rng = np.random.default_rng(seed)
  weights = 1.0 / np.arange(1, len(_WORDS) + 1)
  weights /= weights.sum()
  docs = []
  for _ in range(num_docs):
    sentences = []
    for _ in range(rng.integers(1, 5)):
      words = rng.choice(_WORDS, size=rng.integers(4, 14), p=weights)
      sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?"]))
    docs.append(" ".join(sentences))
  return docs


def train_tiny(prefix: str) -> tokenizer.Tokenizer:
  """A ~300-id tokenizer over `tiny_documents` with 10 sentinels; trains in well under 1 s."""
  return tokenizer.train_tokenizer(tiny_documents(), prefix, vocab_size=TINY_VOCAB,
                                   num_sentinels=TINY_SENTINELS, byte_fallback=False,
                                   character_coverage=1.0, trained_on="tiny")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return train_tiny(str(tmp_path_factory.mktemp("tok") / "tiny"))


@pytest.fixture(scope="module")
def bundled():
  return tokenizer.load_tokenizer("bundled")


def test_special_ids_are_fixed(tiny):
  assert [tiny.id_to_piece(i) for i in range(6)] == list(vocab.SPECIAL_PIECES)
  assert tiny.vocab_size == TINY_VOCAB
  assert tiny.sp_vocab_size == TINY_VOCAB - TINY_SENTINELS


def test_sentinels_on_top_and_decode(tiny):
  assert tiny.id_to_piece(TINY_VOCAB - 1) == "<extra_id_0>"
  assert tiny.id_to_piece(TINY_VOCAB - TINY_SENTINELS) == f"<extra_id_{TINY_SENTINELS - 1}>"
  np.testing.assert_array_equal(tiny.sentinel_ids, TINY_VOCAB - 1 - np.arange(TINY_SENTINELS))
  ids = np.concatenate([tiny.encode("the fox"), [TINY_VOCAB - 1], tiny.encode("dog"),
                        [TINY_VOCAB - 2]])
  assert tiny.decode(ids) == "the fox<extra_id_0> dog<extra_id_1>"


def test_encode_never_produces_specials_or_sentinels(tiny):
  ids = np.concatenate(tiny.encode_batch(tiny_documents(10, seed=1) + ["<mask> <sep> </s>"]))
  assert ids.dtype == np.int32
  assert not np.isin(ids, [0, 1, 3, 4, 5]).any()
  assert ids.max() < tiny.sp_vocab_size


def test_encode_batch_matches_encode(tiny):
  docs = tiny_documents(5, seed=2)
  for doc, ids in zip(docs, tiny.encode_batch(docs)):
    np.testing.assert_array_equal(ids, tiny.encode(doc))
    assert tiny.decode(ids) == doc


def test_vocab_info_tables(tiny):
  info = tiny.vocab_info()
  assert info.vocab_size == TINY_VOCAB
  assert info.is_special[:6].all()
  assert info.is_special[tiny.sentinel_ids].all()
  assert info.is_special.sum() == 6 + TINY_SENTINELS
  for i in range(6, tiny.sp_vocab_size):
    assert info.word_start[i] == tiny.id_to_piece(i).startswith("▁")
  assert info.word_start[info.is_special].all()
  np.testing.assert_array_equal(info.sentinel_ids, tiny.sentinel_ids)


def test_sentence_end_table(tiny):
  ends = tiny.sentence_end
  assert ends.shape == (TINY_VOCAB,)
  assert ends[tiny.encode("Dog.")[-1]]
  assert not ends[:6].any() and not ends[tiny.sentinel_ids].any()
  for i in np.flatnonzero(ends):
    assert tiny.id_to_piece(i)[-1] in ".!?。？！"


def test_digits_are_split(tiny):
  pieces = [tiny.id_to_piece(i) for i in tiny.encode("1984")]
  assert all(len(p.lstrip("▁")) <= 1 for p in pieces)


def test_training_is_deterministic(tiny, tmp_path):
  again = train_tiny(str(tmp_path / "elsewhere" / "tiny"))
  assert again.sha256 == tiny.sha256


def test_sidecar_and_bare_model(tiny, tmp_path):
  with open(os.path.splitext(tiny.model_path)[0] + ".json") as f:
    meta = json.load(f)
  assert meta == {"num_sentinels": TINY_SENTINELS, "vocab_size": TINY_VOCAB,
                  "model_type": "unigram", "trained_on": "tiny", "sha256": tiny.sha256}
  bare = tmp_path / "bare.model"
  bare.write_bytes(pathlib.Path(tiny.model_path).read_bytes())
  loaded = tokenizer.Tokenizer.load(str(bare))
  assert loaded.num_sentinels == 0 and loaded.vocab_size == tiny.sp_vocab_size


def test_bpe(tmp_path):
  tok = tokenizer.train_tokenizer(tiny_documents(), str(tmp_path / "bpe"), vocab_size=200,
                                  model_type="bpe", num_sentinels=4, byte_fallback=False)
  assert [tok.id_to_piece(i) for i in range(6)] == list(vocab.SPECIAL_PIECES)
  assert tok.decode(tok.encode("the lazy dog")) == "the lazy dog"


def test_bundled_tokenizer(bundled):
  assert bundled.vocab_size == 8000 and bundled.num_sentinels == 100
  assert bundled.model_path == tokenizer.bundled_tokenizer_path()
  assert bundled.id_to_piece(7999) == "<extra_id_0>"
  korean = "한국어 문장을 인코딩하고 다시 디코딩합니다. 표 123개!"
  assert bundled.decode(bundled.encode(korean)) == korean
  english = "The built-in function len() returns 42 items."
  assert bundled.decode(bundled.encode(english)) == english
  # Byte fallback covers characters the corpora never saw.
  assert bundled.decode(bundled.encode("ψ→🙂")) == "ψ→🙂"
  info = bundled.vocab_info()
  byte_ids = [i for i in range(bundled.sp_vocab_size) if bundled.id_to_piece(i).startswith("<0x")]
  assert len(byte_ids) == 256 and not info.word_start[byte_ids].any()


def test_missing_model():
  with pytest.raises(DataError, match="does not exist"):
    tokenizer.load_tokenizer("/nonexistent/tok.model")


def test_not_a_sentencepiece_model(tmp_path):
  path = tmp_path / "junk.model"
  path.write_bytes(b"this is not a model")
  with pytest.raises(DataError, match="not a sentencepiece model"):
    tokenizer.load_tokenizer(str(path))


def test_vocab_too_small(tmp_path):
  with pytest.raises(DataError, match="vocab_size 100 is too small"):
    tokenizer.train_tokenizer(tiny_documents(), str(tmp_path / "t"), vocab_size=100)


def test_empty_training_input(tmp_path):
  with pytest.raises(DataError, match="no text"):
    tokenizer.train_tokenizer(["", "  \n "], str(tmp_path / "t"), vocab_size=300,
                              byte_fallback=False)


def test_bad_model_type(tmp_path):
  with pytest.raises(DataError, match="model_type 'wordpiece'"):
    tokenizer.train_tokenizer(tiny_documents(), str(tmp_path / "t"), model_type="wordpiece")


def test_stale_sidecar(tiny, tmp_path):
  model = tmp_path / "t.model"
  model.write_bytes(pathlib.Path(tiny.model_path).read_bytes())
  (tmp_path / "t.json").write_text(json.dumps({"num_sentinels": 3, "sha256": "0" * 64}))
  with pytest.raises(DataError, match="records sha256"):
    tokenizer.Tokenizer.load(str(model))
