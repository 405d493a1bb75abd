"""HF export of XLNet: a folder transformers loads with no missing keys, same logits, same ids."""

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

from data_pipelines.tokenizer import bundled_tokenizer_path
from t5x_like.export import common as export_common
from t5x_like.families.xlnet import export as export_xlnet_lib
from t5x_like.families.xlnet import model as xlnet

BUNDLED_SP = bundled_tokenizer_path()
NUM_SENTINELS = 100
TINY = xlnet.XLNetConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                         intermediate_size=48)
B, L, P = 2, 12, 3
TEXTS = ("The quick brown fox jumps over the lazy dog.",
         "서울은 대한민국의 수도이다. 한국어 문장도 잘 처리되어야 합니다.")


def _shapes(config: xlnet.XLNetConfig) -> dict:
  """Boxed param shapes (eval_shape: no compile)."""
  return jax.eval_shape(xlnet.XLNetLMHeadModel(config).init, jax.random.key(0),
                        jnp.zeros((1, 4), jnp.int32))["params"]


@functools.cache
def _random_params(config: xlnet.XLNetConfig, seed: int = 0) -> dict:
  """Random params in our (loop) layout; norms around 1 and biases non-zero, so a swapped or
  dropped tensor changes the logits. Cached: tests only read it."""
  shapes = flax.core.meta.unbox(_shapes(dataclasses.replace(config, scan_layers=False)))
  rng = np.random.default_rng(seed)

  def draw(path, x):
    noise = rng.normal(size=x.shape).astype(np.float32)
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      value = 1.0 + 0.3 * noise
    elif name.endswith("['bias']") or "lm_loss_bias" in name:
      value = 0.1 * noise
    elif "embedding" in name or "mask_emb" in name:
      value = noise
    elif "_bias']" in name or "seg_embed" in name:  # r_{w,r,s}_bias [H, Dh], seg [2, H, Dh]
      value = 0.3 * noise
    elif "['o']" in name:  # [H, Dh, D]
      value = noise / np.sqrt(x.shape[0] * x.shape[1])
    else:  # q/k/v/r [D, H, Dh]; layer_1/layer_2 [in, out]
      value = noise / np.sqrt(x.shape[0])
    return value.astype(x.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _stacked(params: dict, config: xlnet.XLNetConfig) -> dict:
  out = {k: v for k, v in params.items() if not k.startswith("layer_")}
  layers = [params[f"layer_{i}"] for i in range(config.num_layers)]
  out["layers"] = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers)
  return out


def _perm_inputs(config: xlnet.XLNetConfig, seed: int = 0):
  """ids, token_type_ids, attention_mask, perm_mask [B, L, L], target_mapping [B, P, L]."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(6, config.vocab_size, (B, L)).astype(np.int32)
  tt = np.zeros((B, L), np.int32)
  tt[:, 5:] = 1
  tt[:, -1] = 2
  mask = np.ones((B, L), np.int32)
  mask[1, :2] = 0  # left padding, as XLNet's tokenizer pads
  ids[mask == 0] = 0
  perm = np.zeros((B, L, L), np.float32)
  tm = np.zeros((B, P, L), np.float32)
  for b in range(B):
    targets = rng.choice(np.arange(3, L - 1), P, replace=False)
    tm[b, np.arange(P), targets] = 1
    rank = np.full(L, -1)
    rank[targets] = np.arange(P)
    later = (rank[:, None] < 0) | (rank[None, :] >= rank[:, None])
    perm[b] = ((rank >= 0)[None, :] & later).astype(np.float32)
  return ids, tt, mask, perm, tm


@functools.cache
def _jitted_apply(config: xlnet.XLNetConfig):
  return jax.jit(xlnet.XLNetLMHeadModel(config).apply)


def _ours(config, params, ids, tt, mask, perm=None, tm=None) -> np.ndarray:
  return np.asarray(_jitted_apply(config)({"params": params}, ids, tt, perm, tm, mask))


def _hf_logits(model, ids, tt, mask, perm=None, tm=None) -> np.ndarray:
  kwargs = {"token_type_ids": torch.from_numpy(tt).long(),
            "attention_mask": torch.from_numpy(mask).float()}
  if perm is not None:
    kwargs["perm_mask"] = torch.from_numpy(perm)
  if tm is not None:
    kwargs["target_mapping"] = torch.from_numpy(tm)
  with torch.no_grad():
    return model(torch.from_numpy(ids).long(), use_cache=False, **kwargs).logits.numpy()


def _load(out: str) -> transformers.XLNetLMHeadModel:
  hf, info = transformers.XLNetLMHeadModel.from_pretrained(out, output_loading_info=True)
  assert {k: v for k, v in info.items() if v} == {}, info  # no missing/unexpected keys
  return hf.eval()


@pytest.mark.parametrize("scan", [False, True])
def test_logits_match_transformers(tmp_path, scan):
  config = dataclasses.replace(TINY, scan_layers=scan)
  params = _random_params(TINY)
  if scan:
    params = _stacked(params, TINY)
  out = export_xlnet_lib.export_xlnet(params, config, str(tmp_path / "hf"))
  hf = _load(out)
  assert hf.lm_loss.weight.data_ptr() == hf.transformer.word_embedding.weight.data_ptr()
  np.testing.assert_array_equal(hf.lm_loss.bias.detach().numpy(), _random_params(TINY)["lm_loss_bias"])
  ids, tt, mask, perm, tm = _perm_inputs(config)
  for stream, (p, t) in (("query", (perm, tm)), ("content", (perm, None)),
                         ("plain", (None, None))):
    ours = _ours(config, params, ids, tt, mask, p, t)
    assert ours.shape == (B, P if t is not None else L, config.vocab_size)
    assert np.std(ours) > 0.5  # not trivially small, or the tolerance would prove nothing
    want = _hf_logits(hf, ids, tt, mask, p, t)
    diff = float(np.max(np.abs(want - ours)))
    print(f"max |logits diff| scan={scan} stream={stream}: {diff:.2e}")
    assert diff < 1e-4, stream
  # Negative control: one plausible mapping slip (r_w_bias <-> r_r_bias) must show.
  with torch.no_grad():
    attn = hf.transformer.layer[1].rel_attn
    saved = attn.r_w_bias.clone()
    attn.r_w_bias.copy_(attn.r_r_bias)
    attn.r_r_bias.copy_(saved)
  ours = _ours(config, params, ids, tt, mask, perm, tm)
  assert np.max(np.abs(_hf_logits(hf, ids, tt, mask, perm, tm) - ours)) > 1e-2


def test_scanned_and_boxed_params_export_the_same_tensors():
  loop = _random_params(TINY)
  scan_config = dataclasses.replace(TINY, scan_layers=True)
  stacked = _stacked(loop, TINY)
  boxed = jax.tree_util.tree_map(lambda box, x: box.replace_boxed(x), _shapes(scan_config),
                                 stacked,
                                 is_leaf=lambda x: isinstance(x, flax.core.meta.AxisMetadata))
  want = export_xlnet_lib.xlnet_to_hf_state_dict(loop, TINY)
  assert "transformer.layer.1.rel_attn.seg_embed" in want
  for params in (stacked, {"params": boxed}):
    got = export_xlnet_lib.xlnet_to_hf_state_dict(params, scan_config)
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_state_dict_keys_are_what_transformers_saves(tmp_path):
  hf_config = export_xlnet_lib.hf_config_dict(TINY)
  hf = transformers.XLNetLMHeadModel(transformers.XLNetConfig(**hf_config))
  hf.save_pretrained(str(tmp_path / "ref"))
  saved = safetensors.numpy.load_file(str(tmp_path / "ref" / "model.safetensors"))
  state = export_xlnet_lib.xlnet_to_hf_state_dict(_random_params(TINY), TINY)
  assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in saved.items()}
  assert {t.dtype for t in state.values()} == {np.dtype(np.float32)}
  # The tied head weight is not saved; its bias is.
  assert "lm_loss.weight" not in state and "lm_loss.bias" in state
  # Our config.json spells out every field transformers writes (bar its version stamp).
  with open(tmp_path / "ref" / "config.json", encoding="utf-8") as f:
    ref_config = json.load(f)
  ref_config.pop("transformers_version", None)
  assert set(ref_config) <= set(hf_config), set(ref_config) - set(hf_config)
  assert {k: hf_config[k] for k in ref_config} == ref_config


def test_hf_config_values():
  config = dataclasses.replace(TINY, dropout_rate=0.2, initializer_range=0.03,
                               layer_norm_eps=1e-6, clamp_len=7, hidden_act="gelu_new")
  hf_config = transformers.XLNetConfig(**export_xlnet_lib.hf_config_dict(config))
  assert hf_config.model_type == "xlnet"
  assert hf_config.architectures == ["XLNetLMHeadModel"]
  assert (hf_config.pad_token_id, hf_config.bos_token_id, hf_config.eos_token_id) == (0, 3, 1)
  assert (hf_config.vocab_size, hf_config.d_model, hf_config.n_layer, hf_config.n_head,
          hf_config.d_head, hf_config.d_inner) == (64, 32, 2, 4, 8, 48)
  assert (hf_config.dropout, hf_config.initializer_range, hf_config.layer_norm_eps,
          hf_config.clamp_len, hf_config.ff_activation, hf_config.mem_len,
          hf_config.attn_type, hf_config.bi_data, hf_config.untie_r,
          hf_config.tie_word_embeddings) == (0.2, 0.03, 1e-6, 7, "gelu_new", None, "bi",
                                             False, True, True)


# --------------------------------------------------------------------------------------
# With the bundled tokenizer (8k unigram) and 100 sentinels on top.


@pytest.fixture(scope="module")
def bundled_export(tmp_path_factory):
  sp_size = spm.SentencePieceProcessor(model_file=BUNDLED_SP).get_piece_size()
  config = dataclasses.replace(TINY, vocab_size=sp_size + NUM_SENTINELS)
  out = tmp_path_factory.mktemp("xlnet") / "hf"
  export_xlnet_lib.export_xlnet(_random_params(config), config, str(out), BUNDLED_SP,
                                NUM_SENTINELS)
  return str(out), config


def test_full_export_with_tokenizer(bundled_export):
  out, config = bundled_export
  assert sorted(os.listdir(out)) == sorted([
      "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
      "special_tokens_map.json", "spiece.model", export_xlnet_lib.MARKER_FILE])
  with open(os.path.join(out, export_xlnet_lib.MARKER_FILE), encoding="utf-8") as f:
    marker = json.load(f)
  assert marker["format"] == "t5x_like.export.xlnet"
  assert marker["num_sentinels"] == NUM_SENTINELS
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["model_type"] == "xlnet"
  tok = transformers.AutoTokenizer.from_pretrained(out)
  sp = spm.SentencePieceProcessor(model_file=BUNDLED_SP)
  assert len(tok) == config.vocab_size
  for text in TEXTS:
    enc = tok(text)
    assert enc["input_ids"] == sp.encode(text) + [4, 3]  # ... <sep> <s>(cls)
    assert enc["token_type_ids"] == [0] * len(sp.encode(text)) + [0, 2]
  assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id,
          tok.mask_token_id, tok.cls_token_id, tok.sep_token_id) == (0, 1, 2, 3, 5, 3, 4)
  assert tok.padding_side == "left"
  assert tok.model_input_names == ["input_ids", "token_type_ids", "attention_mask"]
  assert tok.convert_tokens_to_ids("<extra_id_0>") == config.vocab_size - 1
  pair = tok("fox", "dog")
  n_a, n_b = len(sp.encode("fox")), len(sp.encode("dog"))
  assert pair["input_ids"] == sp.encode("fox") + [4] + sp.encode("dog") + [4, 3]
  assert pair["token_type_ids"] == [0] * (n_a + 1) + [1] * (n_b + 1) + [2]

  hf = _load(out)
  batch = tok(list(TEXTS), padding=True, return_tensors="np")
  ids = batch["input_ids"].astype(np.int32)
  tt = batch["token_type_ids"].astype(np.int32)
  mask = batch["attention_mask"].astype(np.int32)
  assert mask[:, -1].all() and (ids[:, -1] == 3).all()  # left padded: <cls> stays last
  ours = _ours(config, _random_params(config), ids, tt, mask)
  want = _hf_logits(hf, ids, tt, mask)
  assert want.shape == (2, ids.shape[1], config.vocab_size)
  np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)


def test_tokenizer_vocab_mismatch_is_refused(tmp_path):
  sp_size = spm.SentencePieceProcessor(model_file=BUNDLED_SP).get_piece_size()
  config = dataclasses.replace(TINY, vocab_size=sp_size)
  with pytest.raises(ValueError, match="vocab_size"):
    export_xlnet_lib.export_xlnet(_random_params(config), config, str(tmp_path / "bad"),
                                  BUNDLED_SP, num_sentinels=NUM_SENTINELS)
  assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------
# Bad input and atomicity.


def test_refuses_non_empty_unrelated_dir(tmp_path):
  out = tmp_path / "notes"
  out.mkdir()
  (out / "important.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="not empty and is not a previous export"):
    export_xlnet_lib.export_xlnet(_random_params(TINY), TINY, str(out))
  assert os.listdir(out) == ["important.txt"]


def test_replaces_a_previous_export(tmp_path):
  out = tmp_path / "hf"
  export_xlnet_lib.export_xlnet(_random_params(TINY), TINY, str(out))
  export_xlnet_lib.export_xlnet(_random_params(TINY, seed=1), TINY, str(out))
  saved = safetensors.numpy.load_file(str(out / "model.safetensors"))
  np.testing.assert_array_equal(saved["lm_loss.bias"],
                                _random_params(TINY, seed=1)["lm_loss_bias"])
  assert sorted(os.listdir(tmp_path)) == ["hf"]  # no temp/backup dirs left behind


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
  def boom(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(export_common.safetensors.numpy, "save_file", boom)
  with pytest.raises(RuntimeError, match="disk full"):
    export_xlnet_lib.export_xlnet(_random_params(TINY), TINY, str(tmp_path / "hf"))
  assert os.listdir(tmp_path) == []


def test_wrong_shapes_are_refused(tmp_path):
  params = _random_params(TINY)
  with pytest.raises(ValueError, match="transformer has layers"):
    export_xlnet_lib.export_xlnet(params, dataclasses.replace(TINY, num_layers=3),
                                  str(tmp_path / "a"))
  with pytest.raises(ValueError, match="transformer.word_embedding.weight"):
    export_xlnet_lib.export_xlnet(params, dataclasses.replace(TINY, vocab_size=100),
                                  str(tmp_path / "b"))
  with pytest.raises(ValueError, match="ff.layer_1.weight"):
    export_xlnet_lib.export_xlnet(params, dataclasses.replace(TINY, intermediate_size=64),
                                  str(tmp_path / "c"))
  with pytest.raises(ValueError, match="rel_attn.q"):
    export_xlnet_lib.export_xlnet(params, dataclasses.replace(TINY, num_heads=8),
                                  str(tmp_path / "d"))
  stacked = _stacked(params, TINY)
  with pytest.raises(ValueError, match="leading"):
    export_xlnet_lib.export_xlnet({"params": stacked}, dataclasses.replace(TINY, num_layers=3),
                                  str(tmp_path / "e"))
  no_bias = {k: v for k, v in params.items() if k != "lm_loss_bias"}
  with pytest.raises(ValueError, match="lm_loss.bias"):
    export_xlnet_lib.export_xlnet(no_bias, TINY, str(tmp_path / "f"))
  assert os.listdir(tmp_path) == []
