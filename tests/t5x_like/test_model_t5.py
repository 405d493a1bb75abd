"""T5 v1.1: logits parity with transformers, packing isolation, scan/remat/bf16 variants."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.t5 import modeling_t5

from t5x_like.families.t5 import export as export_t5
from t5x_like.families.t5 import model as t5

CFG = t5.T5Config(vocab_size=96, hidden_size=32, num_layers=2, num_heads=2, head_dim=8,
                  intermediate_size=48, relative_attention_num_buckets=8,
                  relative_attention_max_distance=20, dropout_rate=0.1)


def _inputs(batch=3, length=16, target_length=9, seed=0, vocab=CFG.vocab_size):
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, vocab, (batch, length)).astype(np.int32)
  dec = rng.integers(2, vocab, (batch, target_length)).astype(np.int32)
  dec[:, 0] = 0  # decoder start
  mask = np.ones((batch, length), np.int32)
  mask[1, 11:] = 0
  mask[2, 4:] = 0
  ids[mask == 0] = 0
  return ids, dec, mask


@functools.cache
def _apply(config: t5.T5Config):
  """Jitted apply (eager Flax is slow and these tests call it many times)."""
  return jax.jit(t5.T5ForConditionalGeneration(config).apply,
                 static_argnames=("deterministic", "method"))


@functools.cache
def _params(config: t5.T5Config = CFG, seed: int = 0) -> dict:
  """Init params with the norm scales perturbed too, so a misplaced norm shows."""
  ids, dec, _ = _inputs()
  variables = jax.jit(t5.T5ForConditionalGeneration(config).init)(jax.random.key(seed), ids, dec)
  params = nn.meta.unbox(variables)["params"]
  rng = np.random.default_rng(seed)

  def perturb(path, x):
    if jax.tree_util.keystr(path).endswith("['scale']"):
      return (1.0 + 0.3 * rng.normal(size=x.shape)).astype(x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(perturb, params)


def _ours(config, params, *args, **kwargs) -> np.ndarray:
  return np.asarray(_apply(config)({"params": params}, *args, **kwargs))


def _hf_model(config: t5.T5Config, params: dict) -> transformers.T5ForConditionalGeneration:
  hf = transformers.T5ForConditionalGeneration(
      transformers.T5Config(**export_t5.hf_config_dict(config))).eval()
  state = export_t5.t5_to_hf_state_dict(params, config)
  # The in-memory model holds the tied copies of `shared` as well; transformers 5 ties the
  # head to `shared` on construction whatever the config says, so untie it first.
  for tied in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
    state.setdefault(tied, state["shared.weight"])
  if not config.tie_word_embeddings:
    hf.lm_head.weight = torch.nn.Parameter(torch.empty_like(hf.lm_head.weight))
  hf.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  return hf


def _hf_logits(hf, ids, dec, mask=None) -> np.ndarray:
  with torch.no_grad():
    out = hf(input_ids=torch.from_numpy(ids).long(),
             attention_mask=None if mask is None else torch.from_numpy(mask).long(),
             decoder_input_ids=torch.from_numpy(dec).long())
  return out.logits.numpy()


def test_relative_position_bucket_matches_transformers():
  rel = np.arange(-3000, 3001)
  for bidirectional in (True, False):
    for buckets, distance in ((32, 128), (8, 20), (64, 256), (128, 128)):
      ours = t5.relative_position_bucket(rel, bidirectional, buckets, distance)
      hf = modeling_t5.T5Attention._relative_position_bucket(
          torch.from_numpy(rel), bidirectional, buckets, distance).numpy()
      np.testing.assert_array_equal(ours, hf)


@pytest.mark.parametrize("tied", [False, True])
def test_logits_match_transformers(tied):
  config = dataclasses.replace(CFG, tie_word_embeddings=tied)
  params = _params(config)
  assert ("lm_head" in params) == (not tied)
  # Longer than max_distance so the logarithmic buckets are exercised.
  ids, dec, mask = _inputs(length=30, target_length=24)
  hf = _hf_model(config, params)
  ours = _ours(config, params, ids, dec)
  assert ours.shape == (3, 24, CFG.vocab_size) and ours.dtype == np.float32
  assert np.std(ours) > 0.5  # not trivially small, or the tolerance would prove nothing
  np.testing.assert_allclose(ours, _hf_logits(hf, ids, dec), atol=1e-4, rtol=1e-4)
  # With encoder padding: padded keys are invisible to the encoder and to cross-attention.
  ours_masked = _ours(config, params, ids, dec, mask)
  np.testing.assert_allclose(ours_masked, _hf_logits(hf, ids, dec, mask), atol=1e-4, rtol=1e-4)
  assert not np.allclose(ours_masked[1], ours[1])


def test_gradients_match_transformers():
  # Covers the hand-written backward of the position bias (a batch sum) among all others.
  params = _params()
  ids, dec, mask = _inputs(length=30, target_length=24)
  weights = np.random.default_rng(5).normal(size=(3, 24, CFG.vocab_size)).astype(np.float32)
  model = t5.T5ForConditionalGeneration(CFG)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, ids, dec, mask) *
                                             weights)))(params)
  ours = export_t5.t5_to_hf_state_dict(grads, CFG)  # the same renaming applies to gradients
  hf = _hf_model(CFG, params)
  logits = hf(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask),
              decoder_input_ids=torch.from_numpy(dec).long()).logits
  (logits * torch.from_numpy(weights)).sum().backward()
  want = {name: p.grad.numpy() for name, p in hf.named_parameters()}
  assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in ours
  for name, g in ours.items():
    np.testing.assert_allclose(g, want[name], rtol=1e-3, atol=1e-4 * np.max(np.abs(want[name])),
                               err_msg=name)


def test_decoder_attention_mask_matches_transformers():
  params = _params()
  ids, dec, mask = _inputs()
  dec_mask = np.ones_like(dec)
  dec_mask[0, 6:] = 0
  hf = _hf_model(CFG, params)
  with torch.no_grad():
    want = hf(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask),
              decoder_input_ids=torch.from_numpy(dec).long(),
              decoder_attention_mask=torch.from_numpy(dec_mask)).logits.numpy()
  ours = _ours(CFG, params, ids, dec, mask, dec_mask)
  np.testing.assert_allclose(ours[0, :6], want[0, :6], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(ours[1:], want[1:], atol=1e-4, rtol=1e-4)


def test_encode_then_decode_equals_call():
  params = _params()
  ids, dec, mask = _inputs()
  encoded = _apply(CFG)({"params": params}, ids, mask, method="encode")
  assert encoded.shape == (3, 16, CFG.hidden_size)
  logits = _apply(CFG)({"params": params}, encoded, dec, mask, method="decode")
  np.testing.assert_array_equal(logits, _ours(CFG, params, ids, dec, mask))


def _packed_row(rng, vocab=CFG.vocab_size):
  """Two examples packed in one row (enc 6 + 7 of 16, dec 4 + 3 of 9), rest padding."""
  enc_len, dec_len = (6, 7), (4, 3)
  ids, seg = np.zeros(16, np.int32), np.zeros(16, np.int32)
  dec, dseg = np.zeros(9, np.int32), np.zeros(9, np.int32)
  examples, e0, d0 = [], 0, 0
  for s, (le, ld) in enumerate(zip(enc_len, dec_len), start=1):
    x = rng.integers(2, vocab, le).astype(np.int32)
    y = np.concatenate([[0], rng.integers(2, vocab, ld - 1)]).astype(np.int32)  # shifted
    ids[e0:e0 + le], seg[e0:e0 + le] = x, s
    dec[d0:d0 + ld], dseg[d0:d0 + ld] = y, s
    examples.append((x, y, slice(d0, d0 + ld)))
    e0, d0 = e0 + le, d0 + ld
  return ids, seg, dec, dseg, examples


def test_packed_segments_are_isolated_and_equal_unpacked():
  params = _params()
  rng = np.random.default_rng(3)
  ids, seg, dec, dseg, examples = _packed_row(rng)
  positions = np.concatenate([np.arange(6), np.arange(7), np.zeros(3)]).astype(np.int32)
  dpositions = np.concatenate([np.arange(4), np.arange(3), np.zeros(2)]).astype(np.int32)

  def packed(ids, dec):
    return _ours(CFG, params, ids[None], dec[None], segment_ids=seg[None],
                 decoder_segment_ids=dseg[None], positions=positions[None],
                 decoder_positions=dpositions[None])[0]

  out = packed(ids, dec)
  # Replace every token of example 2 and of the padding, on both sides.
  ids2, dec2 = ids.copy(), dec.copy()
  ids2[seg != 1] = rng.integers(2, CFG.vocab_size, np.sum(seg != 1))
  dec2[dseg != 1] = rng.integers(2, CFG.vocab_size, np.sum(dseg != 1))
  out2 = packed(ids2, dec2)
  first = examples[0][2]
  np.testing.assert_allclose(out2[first], out[first], atol=1e-6, rtol=0)
  assert not np.allclose(out2[examples[1][2]], out[examples[1][2]])
  # Each packed example equals that example run alone, unpacked (the second one starts
  # at offset 6 / 4 in the row: relative positions must not see the offset).
  for x, y, where in examples:
    alone = _ours(CFG, params, x[None], y[None])[0]
    np.testing.assert_allclose(out[where], alone, atol=1e-5, rtol=1e-5)


def _stack(params, config):
  out = dict(params)
  for stack, n in (("encoder", config.num_layers), ("decoder", config.decoder_layers)):
    tree = dict(params[stack])
    layers = [tree.pop(f"layer_{i}") for i in range(n)]
    tree["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
    out[stack] = tree
  return out


@functools.cache
def _loss_and_grad(config):
  ids, dec, mask = _inputs()
  model = t5.T5ForConditionalGeneration(config)
  return jax.jit(jax.value_and_grad(
      lambda p: jnp.sum(model.apply({"params": p}, ids, dec, mask) ** 2)))


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scan_and_remat_match_the_python_loop(remat):
  config = CFG
  params = _params(config)
  ids, dec, mask = _inputs()
  scan_config = dataclasses.replace(config, scan_layers=True, remat=remat)
  stacked = _stack(params, config)
  shapes = jax.eval_shape(t5.T5ForConditionalGeneration(scan_config).init, jax.random.key(0),
                          ids, dec)
  assert (jax.tree_util.tree_map(jnp.shape, nn.meta.unbox(shapes)["params"]) ==
          jax.tree_util.tree_map(jnp.shape, stacked))
  if remat == "none":  # remat does not change the forward pass; the loss below checks it
    np.testing.assert_allclose(_ours(scan_config, stacked, ids, dec, mask),
                               _ours(config, params, ids, dec, mask), atol=1e-5, rtol=1e-5)
  value_loop, grad_loop = _loss_and_grad(config)(params)
  value_scan, grad_scan = _loss_and_grad(scan_config)(stacked)
  np.testing.assert_allclose(value_scan, value_loop, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(_stack(grad_loop, config)),
                  jax.tree_util.tree_leaves(grad_scan)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * np.max(np.abs(b)))


def test_remat_without_scan_matches():
  params = _params()
  remat = dataclasses.replace(CFG, remat="full")
  value, grad = _loss_and_grad(remat)(params)
  value_ref, grad_ref = _loss_and_grad(CFG)(params)
  np.testing.assert_allclose(value, value_ref, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(grad_ref)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * np.max(np.abs(b)))


def test_dropout_is_active_only_when_not_deterministic():
  params = _params()
  ids, dec, mask = _inputs()
  det = _ours(CFG, params, ids, dec, mask)
  run = lambda seed: _ours(CFG, params, ids, dec, mask, deterministic=False,
                           rngs={"dropout": jax.random.key(seed)})
  a, b = run(1), run(2)
  assert not np.allclose(a, det) and not np.allclose(a, b)
  np.testing.assert_array_equal(a, run(1))


def test_bfloat16_compute_is_close_to_float32():
  params = _params()
  ids, dec, mask = _inputs()
  config16 = dataclasses.replace(CFG, dtype="bfloat16")
  out32 = _ours(CFG, params, ids, dec, mask)
  out16 = _ours(config16, params, ids, dec, mask)
  assert out16.dtype == np.float32  # logits are always float32
  # bf16 keeps 8 significant bits: ~1% relative error per op, a few % after the stack.
  assert np.max(np.abs(out16 - out32)) < 0.05 * np.max(np.abs(out32))
  assert not np.array_equal(out16, out32)
  shapes = jax.eval_shape(t5.T5ForConditionalGeneration(
      dataclasses.replace(CFG, param_dtype="bfloat16")).init, jax.random.key(0), ids, dec)
  assert {x.dtype for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes))} == {
      jnp.dtype(jnp.bfloat16)}


_AXES = {  # parameter name -> logical axes
    "embedding": ("vocab", "embed"), "relative_attention_bias": ("relpos_buckets", "heads"),
    "scale": ("embed",), "q": ("embed", "heads", "kv"), "k": ("embed", "heads", "kv"),
    "v": ("embed", "heads", "kv"), "o": ("heads", "kv", "embed"), "wi_0": ("embed", "mlp"),
    "wi_1": ("embed", "mlp"), "wo": ("mlp", "embed"), "lm_head": ("embed", "vocab"),
}


@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_has_logical_axes(scan):
  ids, dec, _ = _inputs()
  config = dataclasses.replace(CFG, scan_layers=scan, num_decoder_layers=3)
  boxed = jax.eval_shape(t5.T5ForConditionalGeneration(config).init, jax.random.key(0),
                         ids, dec)["params"]
  if scan:  # stacks of different depth
    assert boxed["encoder"]["layers"]["SelfAttention"]["q"]["kernel"].value.shape[0] == 2
    assert boxed["decoder"]["layers"]["SelfAttention"]["q"]["kernel"].value.shape[0] == 3
  else:
    assert sorted(k for k in boxed["decoder"] if k.startswith("layer_")) == [
        "layer_0", "layer_1", "layer_2"]
  leaves = jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  for path, leaf in leaves:
    names = [getattr(k, "key", None) for k in path]
    assert isinstance(leaf, nn.Partitioned), names
    assert len(leaf.names) == leaf.value.ndim, names
    key = names[-2] if names[-1] == "kernel" else names[-1]
    want = _AXES[key]
    if "layers" in names:
      want = ("layers",) + want
    assert tuple(leaf.names) == want, names


def test_init_stds_follow_transformers():
  # T5PreTrainedModel._init_weights, initializer_factor 1: q (d*kv)^-1/2, k/v d^-1/2,
  # o (h*kv)^-1/2, wi d^-1/2, wo d_ff^-1/2, shared and lm_head 1, relative bias d^-1/2.
  config = dataclasses.replace(CFG, hidden_size=64, intermediate_size=128, head_dim=16,
                               num_heads=4, vocab_size=256, initializer_factor=1.5,
                               relative_attention_num_buckets=32)
  ids, dec, _ = _inputs()
  init = jax.jit(t5.T5ForConditionalGeneration(config).init)
  params = nn.meta.unbox(init(jax.random.key(0), ids, dec))["params"]
  d, f, kv, h, fac = 64, 128, 16, 4, 1.5
  layer = params["decoder"]["layer_0"]
  cases = {
      "q": (layer["SelfAttention"]["q"]["kernel"], (d * kv) ** -0.5),
      "k": (layer["EncDecAttention"]["k"]["kernel"], d ** -0.5),
      "v": (layer["SelfAttention"]["v"]["kernel"], d ** -0.5),
      "o": (layer["SelfAttention"]["o"]["kernel"], (h * kv) ** -0.5),
      "wi_0": (layer["DenseReluDense"]["wi_0"]["kernel"], d ** -0.5),
      "wo": (layer["DenseReluDense"]["wo"]["kernel"], f ** -0.5),
      "shared": (params["shared"]["embedding"], 1.0),
      "lm_head": (params["lm_head"]["kernel"], 1.0),
      "relative_attention_bias": (params["encoder"]["relative_attention_bias"], d ** -0.5),
  }
  for name, (x, std) in cases.items():
    x = np.asarray(x)
    # The sample std has relative s.e. ~ 1/sqrt(2n); allow 5 of them.
    tol = 5 / np.sqrt(2 * x.size)
    assert abs(x.std() / (fac * std) - 1) < tol, (name, x.std(), fac * std)
  assert np.all(np.asarray(params["encoder"]["final_layer_norm"]["scale"]) == 1)
