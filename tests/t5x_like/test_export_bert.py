"""HF export of BERT: logits parity with transformers, tokenizer id parity with sentencepiece."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os

import flax.core.meta
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import sentencepiece as spm
import torch
import transformers

from t5x_like.export import common as export_common
from t5x_like.export import tokenizer as export_tok_lib
from t5x_like.families.bert import export as export_bert_lib
from t5x_like.families.bert.model import BertConfig, BertForMaskedLM

BUNDLED_SP = os.path.join(os.path.dirname(__file__), "..", "..", "data_pipelines", "corpora",
                          "tokenizer", "bundled_8k.model")
TINY = BertConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4,
                  intermediate_size=64, max_position_embeddings=64)
TIED = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}

# --------------------------------------------------------------------------------------
# Model export.


@functools.cache
def _random_params(config: BertConfig, seed: int = 0) -> dict:
  """Random params in our tree layout, every tensor random, LayerNorm scales around 1.

  Shapes come from `eval_shape(init)` (tracing only, no compile); values are drawn here so
  LayerNorm scales/biases and all biases are non-trivial and a swapped or dropped tensor in
  the mapping changes the logits. Cached: tests only read it.
  """
  shapes = jax.eval_shape(BertForMaskedLM(config).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 8), jnp.int32))
  shapes = flax.core.meta.unbox(shapes)["params"]
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    noise = rng.normal(size=x.shape).astype(np.float32)
    if name.endswith("['scale']"):
      value = 1.0 + 0.3 * noise
    elif name.endswith("['bias']"):
      value = 0.2 * noise
    else:  # kernels and embeddings
      value = 0.06 * noise
    return value.astype(x.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _inputs(config: BertConfig, batch: int = 3, length: int = 16, seed: int = 0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(6, config.vocab_size, (batch, length)).astype(np.int32)
  mask = np.ones((batch, length), np.int32)
  mask[1, 11:] = 0  # padded rows of different lengths
  mask[2, 5:] = 0
  ids[mask == 0] = 0
  types = np.zeros((batch, length), np.int32)
  types[:, length // 2:] = 1
  return ids, mask, types


@functools.cache
def _jitted_apply(config: BertConfig):
  return jax.jit(functools.partial(BertForMaskedLM(config).apply, deterministic=True))


def _ours(config: BertConfig, params: dict, ids, mask, types, masked_positions=None
          ) -> np.ndarray:
  """Our logits, deterministic (no dropout); jitted since eager dispatch is slow on CPU."""
  return np.asarray(_jitted_apply(config)({"params": params}, ids, mask, types,
                                          masked_positions=masked_positions))


def _hf_logits(model, ids, mask, types) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask),
                token_type_ids=torch.from_numpy(types).long())
  return out.logits.numpy()


def _export_and_compare(tmp_path, export_config: BertConfig, export_params: dict,
                        ref_config: BertConfig, params: dict | None = None) -> float:
  """Exports (config, params), returns max |HF - ours| with ours run as (ref_config, params)."""
  out = export_bert_lib.export_bert(export_params, export_config, str(tmp_path / "hf"))
  params = export_params if params is None else params
  ids, mask, types = _inputs(ref_config)
  ours = _ours(ref_config, params, ids, mask, types)
  hf, info = transformers.BertForMaskedLM.from_pretrained(out, output_loading_info=True)
  assert {k: v for k, v in info.items() if v} == {}, info  # no missing/unexpected keys
  hf.eval()
  assert hf.cls.predictions.decoder.weight.data_ptr() == (
      hf.bert.embeddings.word_embeddings.weight.data_ptr())  # re-tied on load
  hf_logits = _hf_logits(hf, ids, mask, types)
  assert hf_logits.shape == ours.shape
  diff = float(np.max(np.abs(hf_logits - ours)))
  # Negative control: one plausible mapping slip (swapped LayerNorm biases) must show.
  with torch.no_grad():
    ln_a = hf.bert.encoder.layer[1].attention.output.LayerNorm.bias
    ln_o = hf.bert.encoder.layer[1].output.LayerNorm.bias
    saved = ln_a.clone()
    ln_a.copy_(ln_o)
    ln_o.copy_(saved)
  assert np.max(np.abs(_hf_logits(hf, ids, mask, types) - ours)) > 1e-2
  auto = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
  assert type(auto) is transformers.BertForMaskedLM
  np.testing.assert_allclose(_hf_logits(auto, ids, mask, types), hf_logits, atol=1e-6)

  # The gathered MLM head scores exactly the positions it is asked for.
  positions = np.array([[0, 3, 7], [1, 10, 2], [4, 0, 4]], np.int32)
  gathered = _ours(ref_config, params, ids, mask, types, positions)
  np.testing.assert_allclose(gathered, np.take_along_axis(ours, positions[..., None], 1),
                             atol=1e-5)
  return diff


@pytest.mark.parametrize("scan", [False, True])
def test_logits_match_transformers(tmp_path, scan):
  config = dataclasses.replace(TINY, scan_layers=scan)
  params = _random_params(config)
  diff = _export_and_compare(tmp_path, config, params, config)
  print(f"max |logits diff| scan_layers={scan}: {diff:.2e}")
  assert diff < 1e-4
  # Logits must not be trivially tiny, or the tolerance would prove nothing.
  ids, mask, types = _inputs(config)
  assert np.std(_ours(config, params, ids, mask, types)) > 0.2


def test_bf16_compute_config_exports_f32_weights(tmp_path):
  # A training config computing in bf16: the export holds the f32 params, and HF (f32)
  # matches our model run in f32 compute, not the lossy bf16 forward pass.
  train_config = dataclasses.replace(TINY, dtype="bfloat16", param_dtype="float32")
  params = _random_params(train_config, seed=3)
  ref = dataclasses.replace(train_config, dtype="float32")
  assert _export_and_compare(tmp_path, train_config, params, ref) < 1e-4
  tensors = safetensors.numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
  assert {t.dtype for t in tensors.values()} == {np.dtype(np.float32)}


def test_bf16_params_are_widened(tmp_path):
  config = dataclasses.replace(TINY, param_dtype="bfloat16")
  params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), _random_params(config))
  ref = dataclasses.replace(config, param_dtype="float32")
  widened = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), params)
  assert _export_and_compare(tmp_path, config, params, ref, widened) < 1e-4
  tensors = safetensors.numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
  assert {t.dtype for t in tensors.values()} == {np.dtype(np.float32)}


def test_state_dict_keys_are_what_transformers_saves():
  hf = transformers.BertForMaskedLM(transformers.BertConfig(
      **export_bert_lib.hf_config_dict(TINY)))
  state = export_bert_lib.bert_to_hf_state_dict(_random_params(TINY), TINY)
  want = {k: tuple(v.shape) for k, v in hf.state_dict().items() if k not in TIED}
  assert {k: v.shape for k, v in state.items()} == want
  cfg = export_bert_lib.hf_config_dict(TINY)
  assert cfg["architectures"] == ["BertForMaskedLM"] and cfg["tie_word_embeddings"] is True
  assert (cfg["pad_token_id"], cfg["bos_token_id"], cfg["eos_token_id"]) == (0, 3, 1)


# --------------------------------------------------------------------------------------
# Tokenizer export.

_EN = [
    "the", "model", "reads", "text", "and", "predicts", "masked", "words", "from",
    "context", "while", "training", "on", "large", "data", "sets", "with", "many",
    "examples", "of", "language", "in", "the", "wild"
]
_KO = [
    "한국어", "문장", "서울", "대한민국", "수도", "처리", "데이터", "학습", "모델", "단어", "예측", "언어", "사람", "시간",
    "오늘", "날씨", "좋다", "합니다", "있습니다", "그리고", "하지만", "우리는", "컴퓨터", "프로그램"
]
# "<" and ">" appear in any real corpus; the literal "<0x41>" test needs them known (see
# the caveat in t5x_like/export/tokenizer.py).
_PUNCT = [".", ",", "!", "?", ":", ";", "(", ")", "-", "'", '"', "<", ">", "0x"]

TEXTS = [
    "Hello, world! The model predicts masked words.",
    "한국어 문장도 잘 처리되어야 합니다. 서울은 대한민국의 수도이다.",
    "mixed 한국어 and English 텍스트 with numbers 12345 and 3.14159, -42%",
    "multiple   spaces  here   and\ttabs\tand\nnew\nlines\r\nCRLF",
    "   leading and trailing spaces   ",
    "punctuation!!! (parens) [brackets] {braces} <angle> @#$%^&*_+=~`|\\/",
    "emoji 😀🎉👍 and rare CJK 龘 𠀋 鬱 and ä ö ü ß",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ ① ﬁ ㎏",  # NFKC-normalized by sp's nmt_nfkc
    "literal byte piece <0x41> and ▁ marks",
    "", " ", "a",
]


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  lines = []
  for _ in range(n):
    words = []
    for _ in range(rng.integers(4, 14)):
      r = rng.random()
      if r < 0.45:
        words.append(str(rng.choice(_EN)))
      elif r < 0.85:
        words.append(str(rng.choice(_KO)))
      elif r < 0.95:
        words.append(str(rng.integers(0, 10_000)))
      else:
        words[-1:] = [w + str(rng.choice(_PUNCT)) for w in words[-1:]]
    lines.append(" ".join(words).capitalize() + ".")
  return lines


def _train_sp(path, model_type: str, vocab_size: int) -> str:
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=vocab_size,
      model_type=model_type, pad_id=0, eos_id=1, unk_id=2, bos_id=3,
      control_symbols=["<sep>", "<mask>"], byte_fallback=True, hard_vocab_limit=False,
      minloglevel=2)
  path.write_bytes(model.getvalue())
  return str(path)


@pytest.fixture(scope="module", params=["unigram", "bpe", "bundled_8k"])
def sp_model(request, tmp_path_factory) -> tuple[str, int]:
  """(sp model path, num_sentinels)."""
  if request.param == "bundled_8k":
    if not os.path.exists(BUNDLED_SP):
      pytest.skip("bundled_8k.model not built")
    return BUNDLED_SP, 100
  path = tmp_path_factory.mktemp("sp") / f"{request.param}.model"
  return _train_sp(path, request.param, 500), 8


@pytest.fixture(scope="module")
def exported_tokenizer(sp_model, tmp_path_factory):
  model, num_sentinels = sp_model
  out = tmp_path_factory.mktemp("tok")
  export_tok_lib.export_sentencepiece_tokenizer(model, num_sentinels, str(out), "bert")
  return transformers.AutoTokenizer.from_pretrained(str(out)), model, num_sentinels


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_ids_match_sentencepiece(exported_tokenizer, text):
  tok, model, _ = exported_tokenizer
  sp = spm.SentencePieceProcessor(model_file=model)
  want = sp.encode(text)
  assert tok(text, add_special_tokens=False)["input_ids"] == want
  assert tok(text)["input_ids"] == [3] + want + [4]  # <s> ... <sep>
  assert tok.decode(want) == sp.decode(want)


def test_tokenizer_byte_fallback_is_exercised(exported_tokenizer):
  tok, model, _ = exported_tokenizer
  sp = spm.SentencePieceProcessor(model_file=model)
  ids = sp.encode("🎉 𠀋")
  assert any(sp.is_byte(i) for i in ids)  # otherwise the emoji test would prove nothing
  assert tok("🎉 𠀋", add_special_tokens=False)["input_ids"] == ids
  assert tok.decode(ids) == "🎉 𠀋"


def test_tokenizer_specials_and_sentinels(exported_tokenizer):
  tok, model, num_sentinels = exported_tokenizer
  sp_size = spm.SentencePieceProcessor(model_file=model).get_piece_size()
  assert len(tok) == sp_size + num_sentinels
  assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.cls_token_id,
          tok.sep_token_id, tok.mask_token_id) == (0, 1, 2, 3, 4, 5)
  assert tok.bos_token == tok.cls_token == "<s>"
  top = sp_size + num_sentinels - 1
  for i in range(num_sentinels):
    assert tok.convert_tokens_to_ids(f"<extra_id_{i}>") == top - i
  assert tok.convert_ids_to_tokens(top) == "<extra_id_0>"
  ids = tok("a <mask> b <extra_id_0>", add_special_tokens=False)["input_ids"]
  assert 5 in ids and top in ids  # specials are matched whole, never split
  pair = tok("hello", "world")
  n_a = len(tok("hello", add_special_tokens=False)["input_ids"])
  assert pair["input_ids"][0] == 3 and pair["input_ids"].count(4) == 2
  assert pair["token_type_ids"] == [0] * (n_a + 2) + [1] * (len(pair["input_ids"]) - n_a - 2)
  batch = tok(["a", "한국어 문장도 잘 처리되어야 합니다"], padding=True)
  assert batch["input_ids"][0][-1] == 0 and batch["attention_mask"][0][-1] == 0


def test_full_export_with_tokenizer(tmp_path):
  sp_path = _train_sp(tmp_path / "sp.model", "unigram", 400)
  sp_size = spm.SentencePieceProcessor(model_file=sp_path).get_piece_size()
  config = dataclasses.replace(TINY, vocab_size=sp_size + 4)
  out = export_bert_lib.export_bert(_random_params(config), config, str(tmp_path / "hf"),
                                    sp_path, num_sentinels=4)
  assert sorted(os.listdir(out)) == sorted([
      "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
      "special_tokens_map.json", "spiece.model", export_bert_lib.MARKER_FILE])
  # config.json says model_type bert: AutoTokenizer must still pick our fast tokenizer,
  # not rebuild a WordPiece BertTokenizer.
  tok = transformers.AutoTokenizer.from_pretrained(out)
  text = "서울은 대한민국의 수도이다. The capital!"
  assert tok(text)["input_ids"] == [3] + spm.SentencePieceProcessor(
      model_file=sp_path).encode(text) + [4]
  model = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
  with torch.no_grad():
    logits = model(**tok(text, return_tensors="pt")).logits
  assert logits.shape[-1] == len(tok)

  # Sentinel count that does not add up to the model's vocabulary is refused.
  with pytest.raises(ValueError, match="vocab_size"):
    export_bert_lib.export_bert(_random_params(config), config, str(tmp_path / "bad"),
                                sp_path, num_sentinels=3)
  assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------------------
# Bad input and atomicity.


def test_refuses_non_empty_unrelated_dir(tmp_path):
  out = tmp_path / "notes"
  out.mkdir()
  (out / "important.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="not empty and is not a previous export"):
    export_bert_lib.export_bert(_random_params(TINY), TINY, str(out))
  assert os.listdir(out) == ["important.txt"]


def test_replaces_previous_export_and_empty_dir(tmp_path):
  out = tmp_path / "hf"
  out.mkdir()  # empty: fine
  export_bert_lib.export_bert(_random_params(TINY), TINY, str(out))
  first = safetensors.numpy.load_file(str(out / "model.safetensors"))
  export_bert_lib.export_bert(_random_params(TINY, seed=7), TINY, str(out))
  second = safetensors.numpy.load_file(str(out / "model.safetensors"))
  assert not np.array_equal(first["cls.predictions.bias"], second["cls.predictions.bias"])
  assert sorted(os.listdir(tmp_path)) == ["hf"]  # no temp/backup dirs left behind
  assert json.loads((out / export_bert_lib.MARKER_FILE).read_text())["format"]


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
  def boom(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(export_common.tokenizer_lib, "export_sentencepiece_tokenizer", boom)
  sp_path = _train_sp(tmp_path / "sp.model", "unigram", 400)
  sp_size = spm.SentencePieceProcessor(model_file=sp_path).get_piece_size()
  config = dataclasses.replace(TINY, vocab_size=sp_size)
  with pytest.raises(RuntimeError, match="disk full"):
    export_bert_lib.export_bert(_random_params(config), config, str(tmp_path / "hf"), sp_path)
  assert sorted(os.listdir(tmp_path)) == ["sp.model"]


def test_wrong_shapes_are_refused(tmp_path):
  params = _random_params(TINY)
  with pytest.raises(ValueError, match="layers"):
    export_bert_lib.export_bert(params, dataclasses.replace(TINY, num_layers=3),
                                str(tmp_path / "a"))
  with pytest.raises(ValueError, match="word_embeddings"):
    export_bert_lib.export_bert(params, dataclasses.replace(TINY, vocab_size=100),
                                str(tmp_path / "b"))
  assert os.listdir(tmp_path) == []


def test_tokenizer_rejects_foreign_special_layout(tmp_path):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus(100)), model_writer=model,
                                 vocab_size=200, hard_vocab_limit=False, minloglevel=2)
  (tmp_path / "t5.model").write_bytes(model.getvalue())  # default ids: unk 0, bos 1, eos 2
  with pytest.raises(ValueError, match="special-id layout"):
    export_tok_lib.export_sentencepiece_tokenizer(str(tmp_path / "t5.model"), 0,
                                                  str(tmp_path), "bert")
