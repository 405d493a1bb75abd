"""HF export of BART: a folder transformers loads with no missing keys, same logits, same ids."""

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

from data_pipelines.tokenizer import bundled_tokenizer_path
from t5x_like.export import common as export_common
from t5x_like.families.bart import export as export_bart_lib
from t5x_like.families.bart.model import BartConfig, BartForConditionalGeneration
from t5x_like.families.t5 import export as export_t5_lib
from t5x_like.families.t5.model import T5Config, T5ForConditionalGeneration

BUNDLED_SP = bundled_tokenizer_path()
TINY = BartConfig(vocab_size=128, hidden_size=32, num_layers=1, num_decoder_layers=2,
                  num_heads=4, intermediate_size=48, max_position_embeddings=40)
TEXTS = ("The quick brown fox jumps over the lazy dog.",
         "서울은 대한민국의 수도이다. 한국어 문장도 잘 처리되어야 합니다.")


def _shapes(config: BartConfig) -> dict:
  """Boxed param shapes (eval_shape: no compile)."""
  return jax.eval_shape(BartForConditionalGeneration(config).init, jax.random.key(0),
                        jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 4), jnp.int32))["params"]


@functools.cache
def _random_params(config: BartConfig, seed: int = 0) -> dict:
  """Random params in our layout; norms around 1 and biases non-zero, so a swapped or dropped
  tensor changes the logits. Cached: tests only read it."""
  shapes = flax.core.meta.unbox(_shapes(config))
  rng = np.random.default_rng(seed)

  def draw(path, x):
    noise = rng.normal(size=x.shape).astype(np.float32)
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      value = 1.0 + 0.3 * noise
    elif name.endswith("['bias']") or "final_logits_bias" in name:
      value = 0.1 * noise
    elif "embedding" in name:
      value = noise
    elif "out_proj" in name:  # [(layers,) H, K, D]
      value = noise / np.sqrt(x.shape[-3] * x.shape[-2])
    else:  # q/k/v [(layers,) D, H, K], fc1/fc2 [(layers,) in, out]
      value = noise / np.sqrt(x.shape[-3] if "_proj" in name else x.shape[-2])
    return value.astype(x.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _stacked(params: dict, config: BartConfig) -> dict:
  out = dict(params)
  for stack, n in (("encoder", config.num_layers), ("decoder", config.decoder_layers)):
    tree = dict(params[stack])
    layers = [tree.pop(f"layer_{i}") for i in range(n)]
    tree["layers"] = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers)
    out[stack] = tree
  return out


def _inputs(config: BartConfig, batch=3, length=16, target_length=10, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(6, config.vocab_size, (batch, length)).astype(np.int32)
  dec = rng.integers(6, config.vocab_size, (batch, target_length)).astype(np.int32)
  dec[:, 0] = 1  # </s>, the decoder start
  mask = np.ones((batch, length), np.int32)
  mask[1, 11:] = 0
  ids[mask == 0] = 0
  return ids, dec, mask


@functools.cache
def _jitted_apply(config: BartConfig):
  return jax.jit(BartForConditionalGeneration(config).apply)


def _ours(config, params, ids, dec, mask) -> np.ndarray:
  return np.asarray(_jitted_apply(config)({"params": params}, ids, dec, mask))


def _hf_logits(model, ids, dec, mask) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask),
                 decoder_input_ids=torch.from_numpy(dec).long()).logits.numpy()


def _load(out: str) -> transformers.BartForConditionalGeneration:
  hf, info = transformers.BartForConditionalGeneration.from_pretrained(
      out, output_loading_info=True)
  assert {k: v for k, v in info.items() if v} == {}, info  # no missing/unexpected keys
  return hf.eval()


@pytest.mark.parametrize("scan", [False, True])
def test_logits_match_transformers(tmp_path, scan):
  config = dataclasses.replace(TINY, scan_layers=scan)
  params = _random_params(TINY)
  if scan:
    params = _stacked(params, TINY)
  out = export_bart_lib.export_bart(params, config, str(tmp_path / "hf"))
  hf = _load(out)
  shared = hf.model.shared.weight
  for tied in (hf.lm_head.weight, hf.model.encoder.embed_tokens.weight,
               hf.model.decoder.embed_tokens.weight):
    assert tied.data_ptr() == shared.data_ptr()
  np.testing.assert_array_equal(hf.final_logits_bias.numpy()[0], params["final_logits_bias"])
  ids, dec, mask = _inputs(config)
  ours = _ours(config, params, ids, dec, mask)
  assert np.std(ours) > 0.5  # not trivially small, or the tolerance would prove nothing
  want = _hf_logits(hf, ids, dec, mask)
  diff = float(np.max(np.abs(want - ours)))
  print(f"max |logits diff| scan={scan}: {diff:.2e}")
  assert diff < 1e-4
  # Negative control: one plausible mapping slip (swapped norms) must show.
  with torch.no_grad():
    a = hf.model.decoder.layers[1].encoder_attn_layer_norm.weight
    b = hf.model.decoder.layers[1].final_layer_norm.weight
    saved = a.clone()
    a.copy_(b)
    b.copy_(saved)
  assert np.max(np.abs(_hf_logits(hf, ids, dec, mask) - ours)) > 1e-2
  auto = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
  assert type(auto) is transformers.BartForConditionalGeneration
  np.testing.assert_allclose(_hf_logits(auto, ids, dec, mask), want, atol=1e-6)


def test_scanned_and_boxed_params_export_the_same_tensors():
  loop = _random_params(TINY)
  scan_config = dataclasses.replace(TINY, scan_layers=True)
  stacked = _stacked(loop, TINY)
  boxed = jax.tree_util.tree_map(lambda box, x: box.replace_boxed(x), _shapes(scan_config),
                                 stacked,
                                 is_leaf=lambda x: isinstance(x, flax.core.meta.AxisMetadata))
  want = export_bart_lib.bart_to_hf_state_dict(loop, TINY)
  assert "model.decoder.layers.1.encoder_attn.v_proj.bias" in want
  for params in (stacked, {"params": boxed}):
    got = export_bart_lib.bart_to_hf_state_dict(params, scan_config)
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_state_dict_keys_are_what_transformers_saves(tmp_path):
  hf_config = export_bart_lib.hf_config_dict(TINY)
  hf = transformers.BartForConditionalGeneration(transformers.BartConfig(**hf_config))
  hf.save_pretrained(str(tmp_path / "ref"))
  saved = safetensors.numpy.load_file(str(tmp_path / "ref" / "model.safetensors"))
  state = export_bart_lib.bart_to_hf_state_dict(_random_params(TINY), TINY)
  assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in saved.items()}
  assert {t.dtype for t in state.values()} == {np.dtype(np.float32)}
  # Tied copies of the token embedding are not saved; the logits bias buffer is.
  assert "lm_head.weight" not in state and "final_logits_bias" in state


def test_hf_config_values():
  config = dataclasses.replace(TINY, dropout_rate=0.2, attention_dropout_rate=0.05,
                               initializer_range=0.03, scale_embedding=True)
  hf_config = transformers.BartConfig(**export_bart_lib.hf_config_dict(config))
  assert (hf_config.pad_token_id, hf_config.bos_token_id, hf_config.eos_token_id,
          hf_config.decoder_start_token_id, hf_config.forced_eos_token_id) == (0, 3, 1, 1, 1)
  assert (hf_config.d_model, hf_config.encoder_layers, hf_config.decoder_layers,
          hf_config.encoder_attention_heads, hf_config.decoder_attention_heads,
          hf_config.encoder_ffn_dim, hf_config.decoder_ffn_dim,
          hf_config.max_position_embeddings) == (32, 1, 2, 4, 4, 48, 48, 40)
  assert (hf_config.dropout, hf_config.attention_dropout, hf_config.activation_dropout,
          hf_config.init_std, hf_config.scale_embedding, hf_config.tie_word_embeddings) == (
              0.2, 0.05, 0.0, 0.03, True, True)


def test_activations_map_to_transformers():
  x = torch.linspace(-3, 3, 13)
  for act, want in (("gelu", torch.nn.functional.gelu(x)),
                    ("gelu_new", torch.nn.functional.gelu(x, approximate="tanh")),
                    ("relu", torch.relu(x))):
    config = dataclasses.replace(TINY, hidden_act=act)
    hf_config = transformers.BartConfig(**export_bart_lib.hf_config_dict(config))
    torch.testing.assert_close(ACT2FN[hf_config.activation_function](x), want)


def test_unexportable_options_are_refused():
  with pytest.raises(ValueError, match="layer_norm_eps"):
    export_bart_lib.hf_config_dict(dataclasses.replace(TINY, layer_norm_eps=1e-12))


# --------------------------------------------------------------------------------------
# With the bundled tokenizer (8k unigram, no sentinels: BART uses none).


@pytest.fixture(scope="module")
def bundled_export(tmp_path_factory):
  sp_size = spm.SentencePieceProcessor(model_file=BUNDLED_SP).get_piece_size()
  config = dataclasses.replace(TINY, vocab_size=sp_size)
  out = tmp_path_factory.mktemp("bart") / "hf"
  export_bart_lib.export_bart(_random_params(config), config, str(out), BUNDLED_SP, 0)
  return str(out), config


def test_full_export_with_tokenizer(bundled_export):
  out, config = bundled_export
  assert sorted(os.listdir(out)) == sorted([
      "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
      "special_tokens_map.json", "spiece.model", export_bart_lib.MARKER_FILE])
  with open(os.path.join(out, export_bart_lib.MARKER_FILE), encoding="utf-8") as f:
    marker = json.load(f)
  assert marker["format"] == "t5x_like.export.bart"
  assert marker["num_sentinels"] == 0
  tok = transformers.AutoTokenizer.from_pretrained(out)
  sp = spm.SentencePieceProcessor(model_file=BUNDLED_SP)
  assert len(tok) == config.vocab_size
  for text in TEXTS:
    assert tok(text)["input_ids"] == [3] + sp.encode(text) + [1]  # <s> ... </s>
  assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id,
          tok.mask_token_id, tok.cls_token_id, tok.sep_token_id) == (0, 1, 2, 3, 5, 3, 1)
  assert tok.model_max_length == config.max_position_embeddings
  pair = tok("fox", "dog")["input_ids"]
  assert pair == [3] + sp.encode("fox") + [1, 1] + sp.encode("dog") + [1]
  # <mask> is one token between the words, as the denoising objective writes it.
  masked = tok("the quick <mask> jumps")["input_ids"]
  assert masked == [3] + sp.encode("the quick") + [5] + sp.encode("jumps") + [1]

  hf = _load(out)
  batch = tok(list(TEXTS), padding=True, return_tensors="np")
  ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
  labels = tok(["The quick brown fox.", "서울은 수도이다."], padding=True,
               return_tensors="np")["input_ids"]
  # fairseq/HF: decoder inputs are the targets shifted right behind </s>.
  dec = np.concatenate([np.ones((2, 1), np.int64), labels[:, :-1]], axis=1).astype(np.int32)
  ours = _ours(config, _random_params(config), ids, dec, mask)
  want = _hf_logits(hf, ids, dec, mask)
  assert want.shape == (2, dec.shape[1], config.vocab_size)
  np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)
  with torch.no_grad():  # HF's own shift of labels gives the same decoder inputs
    shifted = hf(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask),
                 labels=torch.from_numpy(labels).long()).logits.numpy()
  np.testing.assert_allclose(shifted, want, atol=1e-6)


def test_tokenizer_vocab_mismatch_is_refused(tmp_path):
  sp_size = spm.SentencePieceProcessor(model_file=BUNDLED_SP).get_piece_size()
  config = dataclasses.replace(TINY, vocab_size=sp_size)
  with pytest.raises(ValueError, match="vocab_size"):
    export_bart_lib.export_bart(_random_params(config), config, str(tmp_path / "bad"),
                                BUNDLED_SP, num_sentinels=1)
  assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------
# Bad input and atomicity.


def test_refuses_non_empty_unrelated_dir(tmp_path):
  out = tmp_path / "notes"
  out.mkdir()
  (out / "important.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="not empty and is not a previous export"):
    export_bart_lib.export_bart(_random_params(TINY), TINY, str(out))
  assert os.listdir(out) == ["important.txt"]


def test_replaces_a_previous_export_of_another_family(tmp_path):
  out = tmp_path / "hf"
  t5_config = T5Config(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2, head_dim=8,
                       intermediate_size=32, relative_attention_num_buckets=8)
  t5_params = flax.core.meta.unbox(jax.eval_shape(
      T5ForConditionalGeneration(t5_config).init, jax.random.key(0),
      jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 4), jnp.int32)))["params"]
  t5_params = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), t5_params)
  export_t5_lib.export_t5(t5_params, t5_config, str(out))
  export_bart_lib.export_bart(_random_params(TINY), TINY, str(out))
  saved = safetensors.numpy.load_file(str(out / "model.safetensors"))
  assert "model.shared.weight" in saved and "shared.weight" not in saved
  with open(out / "config.json", encoding="utf-8") as f:
    assert json.load(f)["model_type"] == "bart"
  assert sorted(os.listdir(tmp_path)) == ["hf"]  # no temp/backup dirs left behind


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
  def boom(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(export_common.safetensors.numpy, "save_file", boom)
  with pytest.raises(RuntimeError, match="disk full"):
    export_bart_lib.export_bart(_random_params(TINY), TINY, str(tmp_path / "hf"))
  assert os.listdir(tmp_path) == []


def test_wrong_shapes_are_refused(tmp_path):
  params = _random_params(TINY)
  with pytest.raises(ValueError, match="decoder has layers"):
    export_bart_lib.export_bart(params, dataclasses.replace(TINY, num_decoder_layers=3),
                                str(tmp_path / "a"))
  with pytest.raises(ValueError, match="model.shared.weight"):
    export_bart_lib.export_bart(params, dataclasses.replace(TINY, vocab_size=100),
                                str(tmp_path / "b"))
  with pytest.raises(ValueError, match="model.encoder.embed_positions.weight"):
    export_bart_lib.export_bart(params, dataclasses.replace(TINY, max_position_embeddings=64),
                                str(tmp_path / "c"))
  with pytest.raises(ValueError, match="fc1.weight"):
    export_bart_lib.export_bart(params, dataclasses.replace(TINY, intermediate_size=64),
                                str(tmp_path / "d"))
  decoder = dict(params["decoder"])
  decoder["layers"] = decoder.pop("layer_0")  # not stacked: no leading layers axis
  del decoder["layer_1"]
  with pytest.raises(ValueError, match="leading"):
    export_bart_lib.export_bart({"params": {**params, "decoder": decoder}}, TINY,
                                str(tmp_path / "e"))
  no_bias = {k: v for k, v in params.items() if k != "final_logits_bias"}
  with pytest.raises(ValueError, match="final_logits_bias"):
    export_bart_lib.export_bart(no_bias, TINY, str(tmp_path / "f"))
  assert os.listdir(tmp_path) == []
