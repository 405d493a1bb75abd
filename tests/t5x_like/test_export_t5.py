"""HF export of T5: a folder transformers loads with no missing keys, same logits, same ids."""

from __future__ import annotations

import dataclasses
import functools
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
from transformers.activations import ACT2FN

from t5x_like.export import common as export_common
from t5x_like.families.bert import export as export_bert_lib
from t5x_like.families.bert import model as bert
from t5x_like.families.t5 import export as export_t5_lib
from t5x_like.families.t5.model import T5Config, T5ForConditionalGeneration

BUNDLED_SP = os.path.join(os.path.dirname(__file__), "..", "..", "data_pipelines", "corpora",
                          "tokenizer", "bundled_8k.model")
NUM_SENTINELS = 100
TINY = T5Config(vocab_size=128, hidden_size=32, num_layers=2, num_heads=2, head_dim=8,
                intermediate_size=48, relative_attention_num_buckets=8,
                relative_attention_max_distance=20)
SAVED_BY_HF = {"shared.weight", "lm_head.weight"}  # of the embedding-shaped tensors
TEXTS = ("The quick brown fox jumps over the lazy dog.",
         "서울은 대한민국의 수도이다. 한국어 문장도 잘 처리되어야 합니다.")


@functools.cache
def _random_params(config: T5Config, seed: int = 0) -> dict:
  """Random params in our layout (from eval_shape: no compile); norms around 1, so a
  swapped or dropped tensor changes the logits. Cached: tests only read it."""
  shapes = jax.eval_shape(T5ForConditionalGeneration(config).init, jax.random.key(0),
                          jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 4), jnp.int32))
  shapes = flax.core.meta.unbox(shapes)["params"]
  rng = np.random.default_rng(seed)

  def draw(path, x):
    noise = rng.normal(size=x.shape).astype(np.float32)
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      value = 1.0 + 0.3 * noise
    elif "embedding" in name or "relative_attention_bias" in name:
      value = noise
    elif name.endswith("['o']['kernel']"):  # [(layers,) H, K, D]: fan-in scaled, as T5's init
      value = noise / np.sqrt(x.shape[-3] * x.shape[-2])
    elif x.ndim - ("['layers']" in name) == 3:  # q, k, v [(layers,) D, H, K]
      value = noise / np.sqrt(x.shape[-3])
    else:  # wi_0, wi_1, wo, lm_head [(layers,) in, out]
      value = noise / np.sqrt(x.shape[-2])
    return value.astype(x.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _inputs(config: T5Config, batch=3, length=24, target_length=10, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, config.vocab_size, (batch, length)).astype(np.int32)
  dec = rng.integers(2, config.vocab_size, (batch, target_length)).astype(np.int32)
  dec[:, 0] = 0
  mask = np.ones((batch, length), np.int32)
  mask[1, 15:] = 0
  ids[mask == 0] = 0
  return ids, dec, mask


@functools.cache
def _jitted_apply(config: T5Config):
  return jax.jit(T5ForConditionalGeneration(config).apply)


def _ours(config, params, ids, dec, mask) -> np.ndarray:
  return np.asarray(_jitted_apply(config)({"params": params}, ids, dec, mask))


def _hf_logits(model, ids, dec, mask) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask),
                 decoder_input_ids=torch.from_numpy(dec).long()).logits.numpy()


def _load(out: str) -> transformers.T5ForConditionalGeneration:
  hf, info = transformers.T5ForConditionalGeneration.from_pretrained(out,
                                                                     output_loading_info=True)
  assert {k: v for k, v in info.items() if v} == {}, info  # no missing/unexpected keys
  return hf.eval()


def _export_and_compare(tmp_path, config: T5Config, params: dict) -> float:
  out = export_t5_lib.export_t5(params, config, str(tmp_path / "hf"))
  hf = _load(out)
  untied = hf.lm_head.weight.data_ptr() != hf.shared.weight.data_ptr()
  assert untied == (not config.tie_word_embeddings)
  assert hf.encoder.embed_tokens.weight.data_ptr() == hf.shared.weight.data_ptr()
  ids, dec, mask = _inputs(config)
  ours = _ours(dataclasses.replace(config, dtype="float32"), params, ids, dec, mask)
  assert np.std(ours) > 0.5  # not trivially small, or the tolerance would prove nothing
  want = _hf_logits(hf, ids, dec, mask)
  diff = float(np.max(np.abs(want - ours)))
  # Negative control: one plausible mapping slip (swapped norms) must show.
  with torch.no_grad():
    a = hf.decoder.block[1].layer[1].layer_norm.weight
    b = hf.decoder.block[1].layer[2].layer_norm.weight
    saved = a.clone()
    a.copy_(b)
    b.copy_(saved)
  assert np.max(np.abs(_hf_logits(hf, ids, dec, mask) - ours)) > 1e-2
  auto = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
  assert type(auto) is transformers.T5ForConditionalGeneration
  np.testing.assert_allclose(_hf_logits(auto, ids, dec, mask), want, atol=1e-6)
  return diff


@pytest.mark.parametrize("scan,tied", [(False, False), (True, False), (False, True)])
def test_logits_match_transformers(tmp_path, scan, tied):
  config = dataclasses.replace(TINY, scan_layers=scan, tie_word_embeddings=tied)
  diff = _export_and_compare(tmp_path, config, _random_params(config))
  print(f"max |logits diff| scan={scan} tied={tied}: {diff:.2e}")
  assert diff < 1e-4


def test_scanned_and_boxed_params_export_the_same_tensors():
  config = dataclasses.replace(TINY, num_decoder_layers=3)
  loop = _random_params(config)
  scan_config = dataclasses.replace(config, scan_layers=True)
  stacked = dict(loop)
  for stack, n in (("encoder", 2), ("decoder", 3)):
    tree = dict(loop[stack])
    layers = [tree.pop(f"layer_{i}") for i in range(n)]
    tree["layers"] = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers)
    stacked[stack] = tree
  boxed = jax.eval_shape(T5ForConditionalGeneration(scan_config).init, jax.random.key(0),
                         jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 4), jnp.int32))
  boxed = jax.tree_util.tree_map(lambda box, x: box.replace_boxed(x), boxed["params"], stacked,
                                 is_leaf=lambda x: isinstance(x, flax.core.meta.AxisMetadata))
  want = export_t5_lib.t5_to_hf_state_dict(loop, config)
  assert "decoder.block.2.layer.2.DenseReluDense.wo.weight" in want
  for params in (stacked, {"params": boxed}):
    got = export_t5_lib.t5_to_hf_state_dict(params, scan_config)
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_state_dict_keys_are_what_transformers_saves(tmp_path):
  for tied in (False, True):
    config = dataclasses.replace(TINY, tie_word_embeddings=tied)
    hf_config = export_t5_lib.hf_config_dict(config)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**hf_config))
    if not tied:  # transformers 5 ties at construction whatever the config says
      hf.lm_head.weight = torch.nn.Parameter(hf.lm_head.weight.detach().clone() + 1)
    hf.save_pretrained(str(tmp_path / f"ref{tied}"))
    saved = safetensors.numpy.load_file(str(tmp_path / f"ref{tied}" / "model.safetensors"))
    state = export_t5_lib.t5_to_hf_state_dict(_random_params(config), config)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in saved.items()}
    assert ("lm_head.weight" in state) == (not tied)
    assert {t.dtype for t in state.values()} == {np.dtype(np.float32)}
  assert hf_config["feed_forward_proj"] == "gated-gelu"
  assert (hf_config["pad_token_id"], hf_config["eos_token_id"],
          hf_config["decoder_start_token_id"]) == (0, 1, 0)


def test_activations_map_to_transformers():
  for act, hf_act in (("gelu", "gelu"), ("relu", "relu")):
    config = dataclasses.replace(TINY, hidden_act=act)
    hf_config = transformers.T5Config(**export_t5_lib.hf_config_dict(config))
    assert hf_config.is_gated_act
    x = torch.linspace(-3, 3, 13)
    want = {"gelu": torch.nn.functional.gelu(x), "relu": torch.relu(x)}[hf_act]
    got = ACT2FN[hf_config.dense_act_fn](x)
    torch.testing.assert_close(got, want)
  with pytest.raises(ValueError, match="hidden_act"):
    export_t5_lib.hf_config_dict(dataclasses.replace(TINY, hidden_act="swish"))


# --------------------------------------------------------------------------------------
# With the bundled tokenizer.


@pytest.fixture(scope="module")
def bundled_export(tmp_path_factory):
  if not os.path.exists(BUNDLED_SP):
    pytest.skip("bundled_8k.model not built")
  sp_size = spm.SentencePieceProcessor(model_file=BUNDLED_SP).get_piece_size()
  config = dataclasses.replace(TINY, vocab_size=sp_size + NUM_SENTINELS)
  out = tmp_path_factory.mktemp("t5") / "hf"
  export_t5_lib.export_t5(_random_params(config), config, str(out), BUNDLED_SP,
                          NUM_SENTINELS)
  return str(out), config


def test_full_export_with_tokenizer(bundled_export):
  out, config = bundled_export
  assert sorted(os.listdir(out)) == sorted([
      "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
      "special_tokens_map.json", "spiece.model", export_t5_lib.MARKER_FILE])
  with open(os.path.join(out, export_t5_lib.MARKER_FILE), encoding="utf-8") as f:
    marker = json.load(f)
  assert marker["format"] == "t5x_like.export.t5"
  assert marker["num_sentinels"] == NUM_SENTINELS
  tok = transformers.AutoTokenizer.from_pretrained(out)
  sp = spm.SentencePieceProcessor(model_file=BUNDLED_SP)
  assert len(tok) == config.vocab_size
  for text in TEXTS:
    assert tok(text)["input_ids"] == sp.encode(text) + [1]  # T5 appends </s>
  assert tok.convert_tokens_to_ids("<extra_id_0>") == config.vocab_size - 1
  assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)

  hf = _load(out)
  batch = tok(list(TEXTS), padding=True, return_tensors="np")
  ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
  labels = tok(["<extra_id_0> fox <extra_id_1>", "<extra_id_0> 서울 </s>"], padding=True,
               return_tensors="np")["input_ids"]
  dec = np.concatenate([np.zeros((2, 1), np.int64), labels[:, :-1]], axis=1).astype(np.int32)
  ours = _ours(config, _random_params(config), ids, dec, mask)
  want = _hf_logits(hf, ids, dec, mask)
  assert want.shape == (2, dec.shape[1], config.vocab_size)
  np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)
  with torch.no_grad():  # HF's own shift of labels gives the same decoder inputs
    shifted = hf(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask),
                 labels=torch.from_numpy(labels).long()).logits.numpy()
  np.testing.assert_allclose(shifted, want, atol=1e-6)


def test_tokenizer_vocab_mismatch_is_refused(tmp_path):
  if not os.path.exists(BUNDLED_SP):
    pytest.skip("bundled_8k.model not built")
  sp_size = spm.SentencePieceProcessor(model_file=BUNDLED_SP).get_piece_size()
  config = dataclasses.replace(TINY, vocab_size=sp_size + NUM_SENTINELS)
  with pytest.raises(ValueError, match="vocab_size"):
    export_t5_lib.export_t5(_random_params(config), config, str(tmp_path / "bad"), BUNDLED_SP,
                            NUM_SENTINELS - 1)
  assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------
# Bad input and atomicity.


def test_refuses_non_empty_unrelated_dir(tmp_path):
  out = tmp_path / "notes"
  out.mkdir()
  (out / "important.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="not empty and is not a previous export"):
    export_t5_lib.export_t5(_random_params(TINY), TINY, str(out))
  assert os.listdir(out) == ["important.txt"]


def test_replaces_previous_exports_of_either_family(tmp_path):
  out = tmp_path / "hf"
  bert_config = bert.BertConfig(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2,
                                intermediate_size=32, max_position_embeddings=16)
  bert_params = flax.core.meta.unbox(jax.eval_shape(
      bert.BertForMaskedLM(bert_config).init, jax.random.key(0),
      jnp.zeros((1, 4), jnp.int32)))["params"]
  bert_params = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), bert_params)
  export_bert_lib.export_bert(bert_params, bert_config, str(out))
  export_t5_lib.export_t5(_random_params(TINY), TINY, str(out))
  first = safetensors.numpy.load_file(str(out / "model.safetensors"))
  assert "shared.weight" in first
  export_t5_lib.export_t5(_random_params(TINY, seed=7), TINY, str(out))
  second = safetensors.numpy.load_file(str(out / "model.safetensors"))
  assert not np.array_equal(first["shared.weight"], second["shared.weight"])
  export_bert_lib.export_bert(bert_params, bert_config, str(out))  # and back
  assert sorted(os.listdir(tmp_path)) == ["hf"]  # no temp/backup dirs left behind
  assert export_bert_lib.check_target is export_common.check_target


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
  def boom(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(export_common.safetensors.numpy, "save_file", boom)
  with pytest.raises(RuntimeError, match="disk full"):
    export_t5_lib.export_t5(_random_params(TINY), TINY, str(tmp_path / "hf"))
  assert os.listdir(tmp_path) == []


def test_wrong_shapes_are_refused(tmp_path):
  params = _random_params(TINY)
  with pytest.raises(ValueError, match="decoder has layers"):
    export_t5_lib.export_t5(params, dataclasses.replace(TINY, num_decoder_layers=3),
                            str(tmp_path / "a"))
  with pytest.raises(ValueError, match="shared.weight"):
    export_t5_lib.export_t5(params, dataclasses.replace(TINY, vocab_size=100),
                            str(tmp_path / "b"))
  encoder = dict(params["encoder"])
  encoder["layers"] = encoder.pop("layer_0")  # not stacked: no leading layers axis
  del encoder["layer_1"]
  with pytest.raises(ValueError, match="leading"):
    export_t5_lib.export_t5({"params": {**params, "encoder": encoder}}, TINY,
                            str(tmp_path / "c"))
  with pytest.raises(ValueError, match="lm_head"):
    export_t5_lib.export_t5(params, dataclasses.replace(TINY, tie_word_embeddings=True),
                            str(tmp_path / "d"))
  assert os.listdir(tmp_path) == []
