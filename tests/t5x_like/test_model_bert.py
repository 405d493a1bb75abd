"""BERT encoder: gather-first head, padding/segment masks, scan/remat/bf16 variants agree."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.families.bert import model as bert

CFG = bert.BertConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4,
                      intermediate_size=64, max_position_embeddings=24, dropout_rate=0.1,
                      attention_dropout_rate=0.1)


def _inputs(batch=3, length=16, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(6, CFG.vocab_size, (batch, length)).astype(np.int32)
  mask = np.ones((batch, length), np.int32)
  mask[1, 11:] = 0
  types = rng.integers(0, 2, (batch, length)).astype(np.int32)
  return ids, mask, types


class _Jitted:
  """model.apply under jax.jit (eager Flax is slow and these tests call it many times)."""

  def __init__(self, model):
    self.module = model
    self._apply = jax.jit(model.apply, static_argnames=("deterministic",))

  def apply(self, *args, **kwargs):
    return self._apply(*args, **kwargs)


@functools.cache
def _variables(cfg: bert.BertConfig) -> dict:
  """The initial variables of `cfg`, made once (jitted: an eager init compiles op by op)."""
  ids, mask, types = _inputs()
  model = bert.BertForMaskedLM(cfg)
  return nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), ids, mask, types))


def _init(cfg=CFG):
  return _Jitted(bert.BertForMaskedLM(cfg)), _variables(cfg)


def test_logits_shape_and_gather_first_equals_full():
  model, variables = _init()
  ids, mask, types = _inputs()
  full = model.apply(variables, ids, mask, types)
  assert full.shape == (3, 16, CFG.vocab_size) and full.dtype == jnp.float32
  positions = np.array([[0, 5, 9], [1, 2, 10], [15, 15, 3]], np.int32)
  gathered = model.apply(variables, ids, mask, types, masked_positions=positions)
  expected = np.take_along_axis(np.asarray(full), positions[:, :, None], axis=1)
  np.testing.assert_allclose(gathered, expected, rtol=1e-5, atol=1e-5)


def test_padding_is_invisible_to_real_tokens():
  model, variables = _init()
  ids, mask, types = _inputs()
  out = model.apply(variables, ids, mask, types)
  ids2 = ids.copy()
  ids2[1, 11:] = 7  # change only padded positions of row 1
  out2 = model.apply(variables, ids2, mask, types)
  np.testing.assert_allclose(out[1, :11], out2[1, :11], rtol=1e-5, atol=1e-5)
  assert not np.allclose(out[1, 11:], out2[1, 11:])


def test_segments_do_not_attend_across():
  model, variables = _init()
  ids, _, types = _inputs()
  segments = np.array([[1] * 6 + [2] * 10] * 3, np.int32)
  positions = np.concatenate([np.arange(6), np.arange(10)])[None].repeat(3, 0).astype(np.int32)
  out = model.apply(variables, ids, None, types, segment_ids=segments, positions=positions)
  ids2 = ids.copy()
  ids2[:, 6:] = (ids2[:, 6:] + 1) % CFG.vocab_size
  out2 = model.apply(variables, ids2, None, types, segment_ids=segments, positions=positions)
  np.testing.assert_allclose(out[:, :6], out2[:, :6], rtol=1e-5, atol=1e-5)
  # the first segment alone, unpacked, gives the same logits as inside the packed row
  alone = model.apply(variables, ids[:, :6], np.ones((3, 6), np.int32), types[:, :6])
  np.testing.assert_allclose(out[:, :6], alone, rtol=1e-4, atol=1e-4)


def _stack_layers(params):
  layers = [params["encoder"][f"layer_{i}"] for i in range(CFG.num_layers)]
  stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
  out = dict(params)
  out["encoder"] = {"layers": stacked}
  return out


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scan_and_remat_match_the_python_loop(remat):
  model, variables = _init()
  ids, mask, types = _inputs()
  cfg = bert.BertConfig(**{**CFG.__dict__, "scan_layers": True, "remat": remat})
  scanned = bert.BertForMaskedLM(cfg)
  params = _stack_layers(variables["params"])
  shapes = jax.tree_util.tree_map(jnp.shape, nn.meta.unbox(
      jax.eval_shape(scanned.init, jax.random.key(0), ids, mask, types))["params"])
  assert jax.tree_util.tree_map(jnp.shape, params) == shapes

  def loss_of(m):
    return jax.jit(jax.value_and_grad(
        lambda p: jnp.sum(getattr(m, 'module', m).apply({"params": p}, ids, mask, types) ** 2)))

  value_loop, g_loop = loss_of(model)(variables["params"])
  value_scan, g_scan = loss_of(scanned)(params)
  np.testing.assert_allclose(value_scan, value_loop, rtol=1e-5)
  g_loop = _stack_layers(g_loop)
  for a, b in zip(jax.tree_util.tree_leaves(g_loop), jax.tree_util.tree_leaves(g_scan)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_dropout_is_active_only_when_not_deterministic():
  model, variables = _init()
  ids, mask, types = _inputs()
  det = model.apply(variables, ids, mask, types)
  a = model.apply(variables, ids, mask, types, deterministic=False,
                  rngs={"dropout": jax.random.key(1)})
  b = model.apply(variables, ids, mask, types, deterministic=False,
                  rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(a, det) and not np.allclose(a, b)


def test_bfloat16_compute_is_close_to_float32():
  model, variables = _init()
  ids, mask, types = _inputs()
  cfg16 = bert.BertConfig(**{**CFG.__dict__, "dtype": "bfloat16"})
  out32 = model.apply(variables, ids, mask, types)
  out16 = _Jitted(bert.BertForMaskedLM(cfg16)).apply(variables, ids, mask, types)
  assert out16.dtype == jnp.float32  # logits are always float32
  assert jax.tree_util.tree_leaves(variables)[0].dtype == jnp.float32  # params stay f32
  np.testing.assert_allclose(out16, out32, atol=0.1)
  assert not np.array_equal(out16, out32)


def test_every_parameter_has_logical_axes():
  ids, mask, types = _inputs()
  boxed = jax.eval_shape(bert.BertForMaskedLM(CFG).init, jax.random.key(0), ids, mask, types)
  specs = nn.get_partition_spec(boxed)["params"]
  leaves = jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(
      x, jax.sharding.PartitionSpec))
  assert leaves and all(isinstance(s, jax.sharding.PartitionSpec) and len(s) > 0
                        for s in leaves)
