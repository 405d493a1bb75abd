"""MPT: ALiBi slopes, logits parity with transformers both ways, packing, prefix LM, KV-cache
decoding, scan/remat/bf16 variants, and a data x fsdp x tensor run equal to one device."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import scipy.special
import torch
import transformers
from jax.sharding import PartitionSpec as P

from t5x_like import families, flops, hf_import, sharding
from t5x_like.config import ConfigError, MeshConfig
from t5x_like.families.mpt import export as mpt_export
from t5x_like.families.mpt import model as mpt
from t5x_like.families.mpt.config import MptModelConfig
from t5x_like.hf_config import HFImportError
from t5x_like.training import step as step_lib

V = 128
BUNDLED_SP = os.path.join(os.path.dirname(__file__), "..", "..", "data_pipelines", "corpora",
                          "tokenizer", "bundled_8k.model")


def _cfg(hidden: int = 32, heads: int = 4, **kw) -> mpt.MptConfig:
  # initializer_range 0.2: logits of std ~1, so the 1e-4 / 1e-5 tolerances mean something
  return mpt.MptConfig(**{"vocab_size": V, "hidden_size": hidden, "num_layers": 2,
                          "num_heads": heads, "intermediate_size": 4 * hidden,
                          "initializer_range": 0.2, "max_seq_len": 64, **kw})


CFG = _cfg()
CFG6 = _cfg(48, 6)  # a head count that is not a power of two


def _ids(batch: int, length: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, V, (batch, length)).astype(np.int32)


def _abstract_params(cfg: mpt.MptConfig) -> dict:
  """Boxed param shapes (tracing only: eager Flax init is slow)."""
  return jax.eval_shape(lambda: mpt.MptForCausalLM(cfg).init(jax.random.key(0), _ids(1, 4)))


@functools.cache
def _params(cfg: mpt.MptConfig, seed: int = 0) -> dict:
  """Random params in our (loop) layout: weights ~ N(0, initializer_range) as the model's
  init, LayerNorm scales around 1 (off 1, so a dropped one shows)."""
  loop = dataclasses.replace(cfg, scan_layers=False, remat="none")
  rng = np.random.default_rng(seed)

  def draw(path, x):
    noise = rng.standard_normal(x.shape).astype(np.float32)
    return 1 + 0.1 * noise if path[-1].key == "scale" else cfg.initializer_range * noise

  return jax.tree_util.tree_map_with_path(
      draw, nn.meta.unbox(_abstract_params(loop))["params"])


@functools.cache
def _apply(cfg: mpt.MptConfig):
  return jax.jit(mpt.MptForCausalLM(cfg).apply, static_argnames=("deterministic", "decode"))


def _logits(cfg, params, ids, segment_ids=None, positions=None, prefix=None):
  return np.asarray(_apply(cfg)({"params": params}, ids, segment_ids, positions, prefix))


# --------------------------------------------------------------------------------------
# ALiBi slopes and an independent float64 reference of the whole model.


def _press_slopes(n: int) -> list[float]:
  """ofirpress/attention_with_linear_biases `get_slopes` (alibi_bias_max 8), re-derived."""
  def power_of_2(m):
    start = 2 ** (-2 ** -(math.log2(m) - 3))
    return [start * start ** i for i in range(m)]
  if math.log2(n).is_integer():
    return power_of_2(n)
  closest = 2 ** math.floor(math.log2(n))
  return power_of_2(closest) + _press_slopes(2 * closest)[0::2][:n - closest]


@pytest.mark.parametrize("n", range(1, 17))
def test_alibi_slopes_equal_press_get_slopes(n):
  np.testing.assert_allclose(mpt.alibi_slopes(n), _press_slopes(n), rtol=1e-6)


@pytest.mark.parametrize("n,bias_max", [(6, 8), (12, 16), (5, 4)])
def test_alibi_slopes_equal_hf_tensor(n, bias_max):
  # HF's bias for the last key of a length-2 row is slope * (1 - 1) = 0, the first -slope
  alibi = transformers.models.mpt.modeling_mpt.build_mpt_alibi_tensor(n, 2, bias_max)
  np.testing.assert_allclose(mpt.alibi_slopes(n, bias_max), -alibi[:, 0, 0].numpy(), rtol=1e-6)


def _reference(cfg, params, ids, keep, positions):
  """float64 logits of one row [L] with visibility keep [L, L] (True = may attend): ALiBi as
  -slope * |pos_i - pos_j| after the 1/sqrt(head_dim) scaling."""
  p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)["transformer"]
  slopes = np.asarray(_press_slopes(cfg.num_heads))
  norm = lambda x, s: (x - x.mean(-1, keepdims=True)) / np.sqrt(
      x.var(-1, keepdims=True) + cfg.layer_norm_eps) * s
  dist = np.abs(positions[:, None] - positions[None, :])
  x = p["wte"]["embedding"][ids]
  for i in range(cfg.num_layers):
    lay = p["blocks"][f"layer_{i}"]
    q, k, v = np.einsum("ld,dthk->tlhk", norm(x, lay["norm_1"]["scale"]),
                        lay["attn"]["Wqkv"]["kernel"])
    s = np.einsum("qhk,shk->hqs", q, k) / math.sqrt(cfg.head_dim) - slopes[:, None, None] * dist
    s = np.where(keep, s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    x = x + np.einsum("hqs,shk,hkd->qd", w, v, lay["attn"]["out_proj"]["kernel"])
    h = norm(x, lay["norm_2"]["scale"]) @ lay["ffn"]["up_proj"]["kernel"]
    x = x + (0.5 * h * (1 + scipy.special.erf(h / math.sqrt(2)))) @ lay["ffn"]["down_proj"][
        "kernel"]
  return norm(x, p["norm_f"]["scale"]) @ p["wte"]["embedding"].T


def test_causal_logits_equal_reference():
  ids = _ids(2, 12)
  ours = _logits(CFG6, _params(CFG6), ids)
  keep = np.tril(np.ones((12, 12), bool))
  for b in range(2):
    np.testing.assert_allclose(ours[b], _reference(CFG6, _params(CFG6), ids[b], keep,
                                                   np.arange(12)), atol=1e-4)
  assert ours.dtype == np.float32 and 0.5 < ours.std() < 3
  # the ALiBi distance is taken from the positions given, not from the slots
  gaps = np.array([0, 1, 2, 5, 6, 7, 8, 12, 13, 14, 15, 16], np.int32)
  ours = _logits(CFG6, _params(CFG6), ids, positions=np.stack([gaps, gaps]))
  np.testing.assert_allclose(ours[1], _reference(CFG6, _params(CFG6), ids[1], keep, gaps),
                             atol=1e-4)


# --------------------------------------------------------------------------------------
# transformers parity, both ways.


def _hf_model(cfg: mpt.MptConfig, seed: int = 0) -> transformers.MptForCausalLM:
  torch.manual_seed(seed)
  hf_cfg = transformers.MptConfig(
      d_model=cfg.hidden_size, n_heads=cfg.num_heads, n_layers=cfg.num_layers,
      expansion_ratio=4, max_seq_len=cfg.max_seq_len, vocab_size=cfg.vocab_size,
      initializer_range=cfg.initializer_range, attn_config={"alibi": True})
  model = transformers.MptForCausalLM(hf_cfg)
  with torch.no_grad():  # LayerNorm scales off 1 (a dropped one would then show)
    for name, tensor in model.named_parameters():
      if "norm" in name:
        tensor.add_(0.1 * torch.randn(tensor.shape))
  return model.eval()


def _hf_logits(model, ids) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(ids, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("cfg", [CFG, CFG6], ids=["4heads", "6heads"])
def test_hf_to_ours_via_import(cfg, tmp_path):
  hf = _hf_model(cfg)
  hf.save_pretrained(str(tmp_path))
  imported = hf_import.import_hf(str(tmp_path))
  assert imported.family == "mpt" and not imported.new_params
  assert imported.model_config == cfg
  ids = _ids(3, 20, seed=1)
  ours = _logits(imported.model_config, imported.params, ids)
  ref = _hf_logits(hf, ids)
  assert np.abs(ours - ref).max() < 1e-4 and ref.std() > 0.5
  # import then export gives back the tensors HF saved
  saved = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
  exported = mpt_export.mpt_to_hf_state_dict(imported.params, imported.model_config)
  assert set(exported) == set(saved) - {"lm_head.weight"}
  for name, value in exported.items():
    np.testing.assert_array_equal(value, saved[name])


@pytest.mark.parametrize("cfg", [CFG, CFG6], ids=["4heads", "6heads"])
def test_ours_to_hf_via_export(cfg, tmp_path):
  params = _params(cfg, seed=2)
  out = mpt_export.export_mpt(params, cfg, str(tmp_path / "export"))
  hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert isinstance(hf, transformers.MptForCausalLM)
  ids = _ids(3, 20, seed=3)
  ours = _logits(cfg, params, ids)
  assert np.abs(ours - _hf_logits(hf, ids)).max() < 1e-4
  # a scanned tree exports the same tensors
  stacked = _scanned(params)
  assert set(stacked["transformer"]["blocks"]) == {"layers"}
  a = mpt_export.mpt_to_hf_state_dict(params, cfg)
  b = mpt_export.mpt_to_hf_state_dict(stacked, dataclasses.replace(cfg, scan_layers=True))
  for name in a:
    np.testing.assert_array_equal(a[name], b[name])


def test_export_tokenizer_adds_no_specials(tmp_path):
  import sentencepiece as spm
  cfg = dataclasses.replace(CFG, vocab_size=8000)
  out = mpt_export.export_mpt(_params(cfg), cfg, str(tmp_path / "export"), BUNDLED_SP, 100)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  text = "Hello world, this is MPT."
  assert tok(text)["input_ids"] == spm.SentencePieceProcessor(model_file=BUNDLED_SP).encode(text)
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    hf_cfg = json.load(f)
  assert hf_cfg["attn_config"]["alibi"] and hf_cfg["no_bias"]


def test_export_refuses_what_hf_mpt_cannot_hold(tmp_path):
  narrow = dataclasses.replace(CFG, intermediate_size=64)  # fine for us, not for HF
  with pytest.raises(ValueError, match="4 x hidden_size"):
    mpt_export.export_mpt(_params(narrow), narrow, str(tmp_path / "a"))
  assert not os.path.exists(tmp_path / "a")


@pytest.mark.parametrize("change,match", [
    ({"attn_config": {"clip_qkv": 6.0}}, "clip_qkv"),
    ({"attn_config": {"qk_ln": True}}, "qk_ln"),
    ({"attn_config": {"alibi": False}}, "alibi"),
    ({"attn_config": {"prefix_lm": True}}, "prefix_lm"),
    ({"attn_config": {"softmax_scale": 0.5}}, "softmax_scale"),
    ({"attn_config": {"attn_type": "multiquery_attention"}}, "attn_type"),
    ({"no_bias": False}, "no_bias"),
    ({"logit_scale": 0.5}, "logit_scale"),
    ({"norm_type": "rmsnorm"}, "norm_type"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings"),
    ({"ffn_config": {"ffn_type": "te_ln_mlp"}}, "ffn_type"),
])
def test_import_refuses_unsupported_options(tmp_path, change, match):
  hf_cfg = mpt_export.hf_config_dict(CFG)
  for key, value in change.items():
    hf_cfg[key] = {**hf_cfg[key], **value} if isinstance(value, dict) and key in hf_cfg \
        else value
  with open(tmp_path / "config.json", "w", encoding="utf-8") as f:
    json.dump(hf_cfg, f)
  with pytest.raises(HFImportError, match=match):
    hf_import.import_hf(str(tmp_path))


# --------------------------------------------------------------------------------------
# Packing, prefix LM.


def _packed_row():
  """Two documents (7 and 9 tokens) and 4 padding tokens in one row of 20."""
  segments = np.array([[1] * 7 + [2] * 9 + [0] * 4], np.int32)
  positions = np.array([list(range(7)) + list(range(9)) + [0] * 4], np.int32)
  return segments, positions


def test_packed_documents_equal_documents_alone():
  params, ids = _params(CFG6), _ids(1, 20, seed=4)
  segments, positions = _packed_row()
  packed = _logits(CFG6, params, ids, segments, positions)
  np.testing.assert_allclose(packed[0, :7], _logits(CFG6, params, ids[:, :7])[0], atol=1e-5)
  np.testing.assert_allclose(packed[0, 7:16], _logits(CFG6, params, ids[:, 7:16])[0],
                             atol=1e-5)
  changed = ids.copy()
  changed[0, 8:12] = (changed[0, 8:12] + 1) % V  # inside the second document
  other = _logits(CFG6, params, changed, segments, positions)
  np.testing.assert_array_equal(other[0, :7], packed[0, :7])
  assert np.abs(other[0, 12:16] - packed[0, 12:16]).max() > 1e-3


def test_prefix_tokens_see_the_whole_prefix_suffix_is_causal():
  params, ids = _params(CFG6), _ids(2, 12, seed=5)
  prefix = np.zeros((2, 12), bool)
  prefix[0, :5] = True
  prefix[1, :3] = True
  out = _logits(CFG6, params, ids, prefix=prefix)
  for b in range(2):
    keep = np.tril(np.ones((12, 12), bool)) | prefix[b][None, :]
    np.testing.assert_allclose(out[b], _reference(CFG6, params, ids[b], keep, np.arange(12)),
                               atol=1e-4)
  changed = ids.copy()
  changed[:, 4] = (changed[:, 4] + 1) % V  # in row 0's prefix, row 1's suffix
  other = _logits(CFG6, params, changed, prefix=prefix)
  assert np.abs(other[0, 0] - out[0, 0]).max() > 1e-3  # the first token sees it
  np.testing.assert_array_equal(other[1, :4], out[1, :4])  # earlier tokens do not
  np.testing.assert_allclose(_logits(CFG6, params, ids, prefix=np.zeros((2, 12), bool)),
                             _logits(CFG6, params, ids), atol=1e-6)


def test_prefix_within_packed_documents():
  params, ids = _params(CFG), _ids(1, 20, seed=6)
  segments, positions = _packed_row()
  prefix = np.zeros((1, 20), bool)
  prefix[0, 7:10] = True  # the second document's first 3 tokens
  out = _logits(CFG, params, ids, segments, positions, prefix)
  alone = _logits(CFG, params, ids[:, 7:16], prefix=prefix[:, 7:16])
  np.testing.assert_allclose(out[0, 7:16], alone[0], atol=1e-5)
  np.testing.assert_allclose(out[0, :7], _logits(CFG, params, ids[:, :7])[0], atol=1e-5)


# --------------------------------------------------------------------------------------
# Decoding.


def _decode_run(cfg, params, ids, prompt, segment_ids=None, positions=None):
  """Prefill `prompt` tokens then one token per step; returns the logits per position and
  the chunk shapes the jitted step was traced for."""
  model = mpt.MptForCausalLM(cfg)
  cache = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros(ids.shape, jnp.int32),
                                     decode=True)["cache"])()
  traced = []

  @jax.jit
  def step(cache, chunk, seg, pos):
    traced.append(chunk.shape)
    logits, new = model.apply({"params": params, "cache": cache}, chunk, seg, pos,
                              decode=True, mutable=["cache"])
    return logits, new["cache"]

  cut = lambda x, a, b: None if x is None else x[:, a:b]
  logits, cache = step(cache, ids[:, :prompt], cut(segment_ids, 0, prompt),
                       cut(positions, 0, prompt))
  out = [np.asarray(logits)]
  for t in range(prompt, ids.shape[1]):
    logits, cache = step(cache, ids[:, t:t + 1], cut(segment_ids, t, t + 1),
                         cut(positions, t, t + 1))
    out.append(np.asarray(logits))
  return np.concatenate(out, axis=1), traced


# scanned: the per-layer KV cache is scanned with the params (llama's test runs the loop)
@pytest.mark.parametrize("scan", [True])
def test_decode_equals_full_forward_past_the_training_length(scan):
  cfg = dataclasses.replace(CFG6, max_seq_len=16, scan_layers=scan)
  params = _scanned(_params(CFG6)) if scan else _params(CFG6)
  ids = _ids(2, 24, seed=7)
  decoded, traced = _decode_run(cfg, params, ids, prompt=20)  # a prompt past max_seq_len
  np.testing.assert_allclose(decoded, _logits(cfg, params, ids), atol=1e-5)
  assert traced == [(2, 20), (2, 1)]  # each step shape compiled once


def test_decode_left_padded_prompt_equals_unpadded():
  params, ids = _params(CFG), _ids(2, 16, seed=8)
  segments = np.ones((2, 16), np.int32)
  segments[1, :3] = 0  # row 1: 3 padding tokens before its prompt
  positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0).astype(np.int32)
  decoded, _ = _decode_run(CFG, params, ids, 10, segments, positions)
  alone, _ = _decode_run(CFG, params, ids[1:, 3:], 7)
  np.testing.assert_allclose(decoded[1, 3:], alone[0], atol=1e-5)
  np.testing.assert_allclose(decoded[0], _logits(CFG, params, ids[:1])[0], atol=1e-5)


# --------------------------------------------------------------------------------------
# Stack variants, dtypes, axes, sharding.


def _scanned(params: dict) -> dict:
  blocks = params["transformer"]["blocks"]
  layers = [blocks[f"layer_{i}"] for i in range(len(blocks))]
  stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers)
  return {"transformer": {**params["transformer"], "blocks": {"layers": stacked}}}


def _loss(cfg, params, ids, segments, positions):
  logits = mpt.MptForCausalLM(cfg).apply({"params": params}, ids, segments, positions)
  logp = jax.nn.log_softmax(logits[:, :-1])
  nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
  weight = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
  return jnp.sum(nll * weight) / jnp.sum(weight)


@functools.cache
def _loss_and_grads(cfg):
  return jax.jit(jax.value_and_grad(lambda p, *b: _loss(cfg, p, *b)))


def _batch(batch: int = 4):
  segments, positions = _packed_row()
  return (_ids(batch, 20, seed=9), np.repeat(segments, batch, 0),
          np.repeat(positions, batch, 0))


# Every remat/scan combination goes through the one models.stack.layer_stack, whose own test
# (tests/t5x_like/test_stack.py) covers them all; here the MPT block in the scanned,
# rematerialised stack.
@pytest.mark.parametrize("scan,remat", [(True, "dots")])
def test_scan_and_remat_change_nothing(scan, remat):
  params, batch = _params(CFG), _batch()
  loss, grads = _loss_and_grads(CFG)(params, *batch)
  cfg = dataclasses.replace(CFG, scan_layers=scan, remat=remat)
  loss2, grads2 = _loss_and_grads(cfg)(_scanned(params) if scan else params, *batch)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(_scanned(grads) if scan else grads),
                  jax.tree_util.tree_leaves(grads2)):
    np.testing.assert_allclose(b, a, atol=1e-6)


def test_bf16_finite_and_close():
  cfg16 = dataclasses.replace(CFG, dtype="bfloat16")
  params, (ids, segments, positions) = _params(CFG), _batch()
  out16 = _logits(cfg16, params, ids, segments, positions)
  out32 = _logits(CFG, params, ids, segments, positions)
  assert out16.dtype == np.float32 and np.isfinite(out16).all()
  assert np.abs(out16 - out32).max() < 0.1 * out32.std() * 3
  loss, grads = _loss_and_grads(cfg16)(params, ids, segments, positions)
  assert np.isfinite(loss) and all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


def test_every_parameter_has_logical_axes():
  boxed = _abstract_params(dataclasses.replace(CFG, scan_layers=True))
  specs = nn.get_partition_spec(boxed)["params"]
  leaves = jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, P))
  assert leaves and all(isinstance(s, P) and len(s) > 0 and s[0] == "layers"
                        for s in jax.tree_util.tree_leaves(
                            specs["transformer"]["blocks"], is_leaf=lambda x: isinstance(x, P)))
  assert specs["transformer"]["wte"]["embedding"] == P("vocab", "embed")


def test_sharded_data_fsdp_tensor_equals_one_device():
  assert jax.device_count() == 8
  cfg = _cfg(64, 4)
  params, batch = _params(cfg), _batch(8)
  loss_1, grads_1 = _loss_and_grads(cfg)(params, *batch)
  mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  with step_lib.mesh_context(mesh):
    specs = nn.get_partition_spec(_abstract_params(cfg))
    shardings = sharding.logical_to_mesh(specs, mesh)["params"]
    sharded = jax.device_put(params, shardings)
    fed = [jax.device_put(x, sharding.batch_sharding(mesh)) for x in batch]
    loss_8, grads_8 = jax.jit(jax.value_and_grad(lambda p, *b: _loss(cfg, p, *b)),
                              out_shardings=(None, shardings))(sharded, *fed)
  layer = sharded["transformer"]["blocks"]["layer_0"]
  assert layer["attn"]["Wqkv"]["kernel"].sharding.spec == P("fsdp", None, "tensor", None)
  assert layer["ffn"]["down_proj"]["kernel"].sharding.spec == P("tensor", "fsdp")
  assert grads_8["transformer"]["wte"]["embedding"].sharding.spec == P("tensor", "fsdp")
  np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(grads_1), jax.tree_util.tree_leaves(grads_8)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)


# --------------------------------------------------------------------------------------
# Registration, config section, FLOPs.


def test_family_registration_and_config_section():
  fam = families.get("mpt")
  assert families.by_model_type("mpt") is fam and fam.config is MptModelConfig
  section = MptModelConfig(family="mpt", vocab_size=V, hidden_size=32, num_heads=4,
                           num_layers=2, intermediate_size=128)
  assert fam.module_config(section) == _cfg(initializer_range=0.02, max_seq_len=2048)
  assert section.layer_norm_eps == 1e-5 and section.dropout_rate == 0.0
  run = types.SimpleNamespace(data=types.SimpleNamespace(seq_len=100_000))
  section.check(run)  # no bound on the sequence length: ALiBi extrapolates
  with pytest.raises(ConfigError, match="divisible by model.num_heads"):
    dataclasses.replace(section, num_heads=5).check(run)
  with pytest.raises(ConfigError, match="model.alibi_bias_max"):
    dataclasses.replace(section, alibi_bias_max=0).check(run)


def test_flops_count_matches_xla_forward():
  cfg = _cfg(256, 4)
  section = MptModelConfig(family="mpt", vocab_size=V, hidden_size=256, num_heads=4,
                           num_layers=2, intermediate_size=1024)
  run = types.SimpleNamespace(model=section, train=types.SimpleNamespace(batch_size=2),
                              data=types.SimpleNamespace(seq_len=64))
  fwd = jax.jit(mpt.MptForCausalLM(cfg).apply)
  cost = fwd.lower(nn.meta.unbox(_abstract_params(cfg)), jnp.zeros((2, 64), jnp.int32))
  cost = cost.compile()
  cost = cost.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  assert flops.train_flops_per_step(run) / 3 == pytest.approx(cost["flops"], rel=0.10)
