"""BART: logits/gradient parity with transformers, packing isolation, scan/remat/bf16.

Compiles dominate this file's run time, so the tests share a few jitted functions with one
call structure (`_run`: encoder and decoder masks always given) and one set of shapes.
"""

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

from t5x_like import sharding
from t5x_like.families.bart import export as export_bart
from t5x_like.families.bart import model as bart

# initializer_range 0.2 (not 0.02): logits of std ~1, so the 1e-4 tolerances prove something.
# One encoder and two decoder layers: stacks of different depth, and compiles stay short.
CFG = bart.BartConfig(vocab_size=96, hidden_size=32, num_layers=1, num_decoder_layers=2,
                      num_heads=4, intermediate_size=48, max_position_embeddings=40,
                      dropout_rate=0.1, initializer_range=0.2)
EOS = 1  # the decoder start id (fairseq)
B, L, T = 3, 16, 9


def _inputs(seed=0):
  """ids [B, L] with padding (row 1 after 11 tokens, row 2 after 4), dec [B, T], masks."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(6, CFG.vocab_size, (B, L)).astype(np.int32)
  dec = rng.integers(6, CFG.vocab_size, (B, T)).astype(np.int32)
  dec[:, 0] = EOS
  mask = np.ones((B, L), np.int32)
  mask[1, 11:] = 0
  mask[2, 4:] = 0
  ids[mask == 0] = bart.PAD_ID
  return ids, dec, mask, np.ones((B, T), np.int32)


@functools.cache
def _apply(config: bart.BartConfig):
  """Jitted apply (eager Flax is slow and these tests call it many times)."""
  return jax.jit(bart.BartForConditionalGeneration(config).apply,
                 static_argnames=("deterministic", "method"))


def _run(config, params, ids, dec, mask, dec_mask, **kwargs) -> np.ndarray:
  return np.asarray(_apply(config)({"params": params}, ids, dec, mask, dec_mask, **kwargs))


@functools.cache
def _init() -> dict:
  ids, dec, _, _ = _inputs()
  variables = jax.jit(bart.BartForConditionalGeneration(CFG).init)(jax.random.key(0), ids, dec)
  return nn.meta.unbox(variables)["params"]


@functools.cache
def _params() -> dict:
  """CFG's init params with norms, biases and final_logits_bias perturbed, so a misplaced
  or dropped one shows (at init they are all ones or zeros). Configs that keep CFG's shapes
  use them too (the options do not change the param tree)."""
  rng = np.random.default_rng(0)

  def perturb(path, x):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      return (1.0 + 0.3 * rng.normal(size=x.shape)).astype(x.dtype)
    if name.endswith("['bias']") or "final_logits_bias" in name:
      return (0.1 * rng.normal(size=x.shape)).astype(x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(perturb, _init())


@functools.cache
def _hf_model(config: bart.BartConfig = CFG) -> transformers.BartForConditionalGeneration:
  """transformers' model holding `_params()` (tests must not modify it)."""
  hf = transformers.BartForConditionalGeneration(
      transformers.BartConfig(**export_bart.hf_config_dict(config))).eval()
  state = export_bart.bart_to_hf_state_dict(_params(), config)
  # The in-memory model also names the tied copies of `model.shared.weight`.
  for tied in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
               "lm_head.weight"):
    state[tied] = state["model.shared.weight"]
  hf.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  return hf


def _hf_logits(hf, ids, dec, mask=None, dec_mask=None) -> np.ndarray:
  as_torch = lambda x: None if x is None else torch.from_numpy(x).long()
  with torch.no_grad():
    return hf(input_ids=as_torch(ids), attention_mask=as_torch(mask),
              decoder_input_ids=as_torch(dec),
              decoder_attention_mask=as_torch(dec_mask)).logits.numpy()


@functools.cache
def _loss_and_grad(config: bart.BartConfig):
  """(params, ids, dec, mask, weights) -> (sum(logits * weights), grads), jitted."""
  model = bart.BartForConditionalGeneration(config)
  return jax.jit(jax.value_and_grad(
      lambda p, ids, dec, mask, w: jnp.sum(model.apply({"params": p}, ids, dec, mask) * w)))


def _weights(seed: int = 5) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(B, T, CFG.vocab_size)).astype(np.float32)


def _assert_grads_close(got: dict, want: dict, rtol: float, atol_frac: float) -> None:
  """Per-tensor closeness, keyed by path; the key bias is checked to be ~0 on both sides:
  it shifts every score of a query row alike, which softmax ignores, so its gradient is 0
  in exact arithmetic and only rounding noise in float32."""
  flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(x) for p, x in
                       jax.tree_util.tree_flatten_with_path(tree)[0]}
  got, want = flat(got), flat(want)
  assert got.keys() == want.keys()
  scale = max(np.max(np.abs(x)) for x in want.values())
  for name, b in want.items():
    if "k_proj" in name and "bias" in name:
      assert np.max(np.abs(got[name])) < 1e-5 * scale, name
      assert np.max(np.abs(b)) < 1e-5 * scale, name
    else:
      np.testing.assert_allclose(got[name], b, rtol=rtol, atol=atol_frac * np.max(np.abs(b)),
                                 err_msg=name)


def test_logits_match_transformers():
  ids, dec, mask, dec_mask = _inputs()
  hf = _hf_model()
  ours = _run(CFG, _params(), ids, dec, mask, dec_mask)
  assert ours.shape == (B, T, CFG.vocab_size) and ours.dtype == np.float32
  assert np.std(ours) > 0.5  # not trivially small, or the tolerance would prove nothing
  np.testing.assert_allclose(ours, _hf_logits(hf, ids, dec, mask), atol=1e-4, rtol=1e-4)
  # The padding mattered: padded keys are invisible to the encoder and cross-attention.
  assert not np.allclose(ours[1], _hf_logits(hf, ids, dec)[1], atol=1e-2)


def test_scaled_embeddings_and_relu_match_transformers():
  config = dataclasses.replace(CFG, scale_embedding=True, hidden_act="relu")
  ids, dec, mask, dec_mask = _inputs()
  ours = _run(config, _params(), ids, dec, mask, dec_mask)
  np.testing.assert_allclose(ours, _hf_logits(_hf_model(config), ids, dec, mask), atol=1e-4,
                             rtol=1e-4)
  assert not np.allclose(ours, _run(CFG, _params(), ids, dec, mask, dec_mask), atol=1e-2)


@pytest.mark.parametrize("pad", [0, 1], ids=["pad0", "pad1_as_facebook_bart"])
def test_gradients_match_transformers(pad):
  config = dataclasses.replace(CFG, pad_token_id=pad)
  ids, dec, mask, _ = _inputs()
  dec[2, 6:] = pad  # pad lookups pass no gradient to the pad row (torch padding_idx)
  dec[1, 3] = 1 - pad  # ... and the other id's lookups do
  weights = _weights()
  _, grads = _loss_and_grad(config)(_params(), ids, dec, mask, weights)
  # HF's final_logits_bias is a buffer, never trained; ours is a param behind stop_gradient.
  assert not np.any(np.asarray(grads["final_logits_bias"]))
  ours = export_bart.bart_to_hf_state_dict(grads, config)  # the same renaming applies
  del ours["final_logits_bias"]
  hf = _hf_model(config)
  hf.zero_grad(set_to_none=True)
  logits = hf(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask),
              decoder_input_ids=torch.from_numpy(dec).long()).logits
  (logits * torch.from_numpy(weights)).sum().backward()
  want = {name: p.grad.numpy().copy() for name, p in hf.named_parameters()}
  hf.zero_grad(set_to_none=True)
  _assert_grads_close(ours, want, rtol=1e-3, atol_frac=1e-4)


def test_decoder_attention_mask_matches_transformers():
  ids, dec, mask, dec_mask = _inputs()
  dec_mask[0, 6:] = 0
  hf = _hf_model()
  ours = _run(CFG, _params(), ids, dec, mask, dec_mask)
  want = _hf_logits(hf, ids, dec, mask, dec_mask)
  np.testing.assert_allclose(ours[0, :6], want[0, :6], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(ours[1:], want[1:], atol=1e-4, rtol=1e-4)
  assert not np.allclose(ours[0, 6:], _hf_logits(hf, ids, dec, mask)[0, 6:], atol=1e-2)


def test_encode_then_decode_equals_call():
  ids, dec, mask, dec_mask = _inputs()
  variables = {"params": _params()}
  encoded = _apply(CFG)(variables, ids, mask, method="encode")
  assert encoded.shape == (B, L, CFG.hidden_size)
  logits = _apply(CFG)(variables, encoded, dec, mask, dec_mask, method="decode")
  np.testing.assert_array_equal(logits, _run(CFG, _params(), ids, dec, mask, dec_mask))


def _packed_row(rng):
  """Two examples packed in one row (enc 6 + 7 of 16, dec 4 + 3 of 9), rest padding."""
  enc_len, dec_len = (6, 7), (4, 3)
  ids, seg, pos = (np.zeros(L, np.int32) for _ in range(3))
  dec, dseg, dpos = (np.zeros(T, np.int32) for _ in range(3))
  examples, e0, d0 = [], 0, 0
  for s, (le, ld) in enumerate(zip(enc_len, dec_len), start=1):
    x = rng.integers(6, CFG.vocab_size, le).astype(np.int32)
    y = np.concatenate([[EOS], rng.integers(6, CFG.vocab_size, ld - 1)]).astype(np.int32)
    ids[e0:e0 + le], seg[e0:e0 + le], pos[e0:e0 + le] = x, s, np.arange(le)
    dec[d0:d0 + ld], dseg[d0:d0 + ld], dpos[d0:d0 + ld] = y, s, np.arange(ld)
    examples.append((x, y, slice(d0, d0 + ld)))
    e0, d0 = e0 + le, d0 + ld
  return ids, seg, pos, dec, dseg, dpos, examples


def test_packed_segments_are_isolated_and_equal_unpacked():
  params = _params()
  rng = np.random.default_rng(3)
  ids, seg, pos, dec, dseg, dpos, examples = _packed_row(rng)

  def packed(ids, dec, pos=pos, dpos=dpos):
    return np.asarray(_apply(CFG)(
        {"params": params}, ids[None], dec[None], segment_ids=seg[None],
        decoder_segment_ids=dseg[None], positions=pos[None], decoder_positions=dpos[None]))[0]

  out = packed(ids, dec)
  # Replace every token of example 2 and of the padding, on both sides.
  ids2, dec2 = ids.copy(), dec.copy()
  ids2[seg != 1] = rng.integers(6, CFG.vocab_size, np.sum(seg != 1))
  dec2[dseg != 1] = rng.integers(6, CFG.vocab_size, np.sum(dseg != 1))
  out2 = packed(ids2, dec2)
  first, second = examples[0][2], examples[1][2]
  np.testing.assert_allclose(out2[first], out[first], atol=1e-6, rtol=0)
  assert not np.allclose(out2[second], out[second])
  # Each packed example equals that example run alone, unpacked (its positions restart at
  # 0, on both sides): one row each of a padded batch (padding = running alone, as
  # test_logits_match_transformers shows; the decoder is causal, so its tail is inert).
  ids_b, dec_b, mask_b = (np.zeros((B, L), np.int32), np.full((B, T), EOS, np.int32),
                          np.zeros((B, L), np.int32))
  for row, (x, y, _) in enumerate(examples):
    ids_b[row, :len(x)], mask_b[row, :len(x)], dec_b[row, :len(y)] = x, 1, y
  alone = _run(CFG, params, ids_b, dec_b, mask_b, np.ones((B, T), np.int32))
  for row, (_, y, where) in enumerate(examples):
    np.testing.assert_allclose(out[where], alone[row, :len(y)], atol=1e-5, rtol=1e-5)
  # The positions are really used: row offsets instead change the second example.
  row_offsets = packed(ids, dec, np.arange(L, dtype=np.int32), np.arange(T, dtype=np.int32))
  np.testing.assert_allclose(row_offsets[first], out[first], atol=1e-6, rtol=0)
  assert not np.allclose(row_offsets[second], out[second], atol=1e-3)


def test_length_beyond_the_position_table_is_refused():
  ids = np.ones((1, CFG.max_position_embeddings + 1), np.int32)
  with pytest.raises(ValueError, match="encoder input length 41 exceeds"):
    jax.eval_shape(bart.BartForConditionalGeneration(CFG).init, jax.random.key(0), ids,
                   ids[:, :4])


def test_config_is_checked():
  with pytest.raises(ValueError, match="divisible"):
    bart.BartConfig(vocab_size=8, hidden_size=30, num_heads=4)
  with pytest.raises(ValueError, match="hidden_act"):
    bart.BartConfig(vocab_size=8, hidden_act="swish")
  assert CFG.decoder_layers == 2
  assert dataclasses.replace(CFG, num_decoder_layers=0).decoder_layers == CFG.num_layers


def _stack(tree: dict) -> dict:
  """Loop-layout params (or grads) -> the scanned layout."""
  out = dict(tree)
  for stack, n in (("encoder", CFG.num_layers), ("decoder", CFG.decoder_layers)):
    sub = dict(tree[stack])
    layers = [sub.pop(f"layer_{i}") for i in range(n)]
    sub["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
    out[stack] = sub
  return out


@pytest.mark.parametrize("scan,remat", [(True, "full"), (False, "dots")])
def test_scan_and_remat_match_the_python_loop(scan, remat):
  # The loss value compares the forward passes, the gradients the backward ones (remat
  # changes neither; scan must apply the stacked layers in order).
  ids, dec, mask, _ = _inputs()
  config = dataclasses.replace(CFG, scan_layers=scan, remat=remat)
  restack = _stack if scan else (lambda tree: tree)
  params = restack(_params())
  shapes = jax.eval_shape(bart.BartForConditionalGeneration(config).init, jax.random.key(0),
                          ids, dec)
  assert (jax.tree_util.tree_map(jnp.shape, nn.meta.unbox(shapes)["params"]) ==
          jax.tree_util.tree_map(jnp.shape, params))
  value_loop, grad_loop = _loss_and_grad(CFG)(_params(), ids, dec, mask, _weights())
  value, grad = _loss_and_grad(config)(params, ids, dec, mask, _weights())
  np.testing.assert_allclose(value, value_loop, rtol=1e-5)
  _assert_grads_close(grad, restack(grad_loop), rtol=2e-4, atol_frac=2e-5)


def test_dropout_is_active_only_when_not_deterministic():
  ids, dec, mask, dec_mask = _inputs()

  def run(config, seed):
    return _run(config, _params(), ids, dec, mask, dec_mask, deterministic=False,
                rngs={"dropout": jax.random.key(seed)})

  det = _run(CFG, _params(), ids, dec, mask, dec_mask)
  a, b = run(CFG, 1), run(CFG, 2)
  assert not np.allclose(a, det) and not np.allclose(a, b)
  np.testing.assert_array_equal(a, run(CFG, 1))
  # Attention dropout alone (on the probabilities) also changes the output.
  attn_only = dataclasses.replace(CFG, dropout_rate=0.0, attention_dropout_rate=0.1)
  assert not np.allclose(run(attn_only, 1), det)


def test_bfloat16_compute_is_close_to_float32():
  ids, dec, mask, dec_mask = _inputs()
  config16 = dataclasses.replace(CFG, dtype="bfloat16")
  out32 = _run(CFG, _params(), ids, dec, mask, dec_mask)
  out16 = _run(config16, _params(), ids, dec, mask, dec_mask)
  assert out16.dtype == np.float32  # logits are always float32
  # bf16 keeps 8 significant bits: ~1% relative error per op, a few % after the stack.
  assert np.max(np.abs(out16 - out32)) < 0.05 * np.max(np.abs(out32))
  assert not np.array_equal(out16, out32)
  shapes = jax.eval_shape(bart.BartForConditionalGeneration(
      dataclasses.replace(CFG, param_dtype="bfloat16")).init, jax.random.key(0), ids, dec)
  assert {x.dtype for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes))} == {
      jnp.dtype(jnp.bfloat16)}


_AXES = {  # (module, parameter) -> logical axes
    ("shared", "embedding"): ("vocab", "embed"),
    ("embed_positions", "embedding"): ("position", "embed"),
    ("q_proj", "kernel"): ("embed", "heads", "kv"), ("q_proj", "bias"): ("heads", "kv"),
    ("k_proj", "kernel"): ("embed", "heads", "kv"), ("k_proj", "bias"): ("heads", "kv"),
    ("v_proj", "kernel"): ("embed", "heads", "kv"), ("v_proj", "bias"): ("heads", "kv"),
    ("out_proj", "kernel"): ("heads", "kv", "embed"), ("out_proj", "bias"): ("embed",),
    ("fc1", "kernel"): ("embed", "mlp"), ("fc1", "bias"): ("mlp",),
    ("fc2", "kernel"): ("mlp", "embed"), ("fc2", "bias"): ("embed",),
}


@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_has_logical_axes(scan):
  ids, dec, _, _ = _inputs()
  config = dataclasses.replace(CFG, scan_layers=scan, num_layers=2, num_decoder_layers=3)
  boxed = jax.eval_shape(bart.BartForConditionalGeneration(config).init, jax.random.key(0),
                         ids, dec)["params"]
  if scan:  # stacks of different depth
    assert boxed["encoder"]["layers"]["self_attn"]["q_proj"]["kernel"].value.shape[0] == 2
    assert boxed["decoder"]["layers"]["encoder_attn"]["q_proj"]["kernel"].value.shape[0] == 3
  else:
    assert sorted(k for k in boxed["decoder"] if k.startswith("layer_")) == [
        "layer_0", "layer_1", "layer_2"]
  known = {name for name, _ in sharding.RULES}
  leaves = jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  # shared + final_logits_bias, each stack's positions + layernorm_embedding, the layers
  # (16 tensors per encoder layer, 26 per decoder layer; one stacked set when scanned)
  assert len(leaves) == 2 + 2 * 3 + (16 + 26 if scan else 2 * 16 + 3 * 26)
  for path, leaf in leaves:
    names = [getattr(k, "key", None) for k in path]
    assert isinstance(leaf, nn.Partitioned), names
    assert len(leaf.names) == leaf.value.ndim, names
    if names[-1] == "final_logits_bias":
      want = ("vocab",)
    elif names[-2].endswith("layer_norm") or names[-2] == "layernorm_embedding":
      want = ("embed",)
    else:
      want = _AXES[tuple(names[-2:])]
    if "layers" in names:
      want = ("layers",) + want
    assert tuple(leaf.names) == want, names
    assert set(leaf.names) <= known, names  # sharding.RULES maps every axis name


def test_init_follows_transformers():
  # BartPreTrainedModel._init_weights: normal(init_std) for Linear weights and embeddings
  # (the pad row of the token embedding zeroed), zero biases, LayerNorm 1/0, and
  # final_logits_bias 0.
  params = _init()
  layer = params["decoder"]["layer_0"]
  shared = np.asarray(params["shared"]["embedding"])
  assert not np.any(shared[bart.PAD_ID])
  cases = {
      "q": layer["self_attn"]["q_proj"]["kernel"],
      "k": layer["encoder_attn"]["k_proj"]["kernel"],
      "out": layer["self_attn"]["out_proj"]["kernel"],
      "fc1": layer["fc1"]["kernel"],
      "fc2": layer["fc2"]["kernel"],
      "shared": shared[bart.PAD_ID + 1:],
      "positions": params["encoder"]["embed_positions"]["embedding"],
  }
  for name, x in cases.items():
    x = np.asarray(x)
    # The sample std has relative s.e. ~ 1/sqrt(2n); allow 5 of them.
    std = CFG.initializer_range
    assert abs(x.std() / std - 1) < 5 / np.sqrt(2 * x.size), (name, x.std(), std)
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = jax.tree_util.keystr(path)
    if name.endswith("['bias']") or "final_logits_bias" in name:
      assert not np.any(np.asarray(x)), name
    elif name.endswith("['scale']"):
      assert np.all(np.asarray(x) == 1), name
