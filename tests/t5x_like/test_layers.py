"""Shared layers: torch's exact GELU, float32 accumulation of bf16 products."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from t5x_like.models import layers


def test_gelu_is_torchs_erf_form_values_and_gradient():
  x = np.linspace(-12.0, 12.0, 20001, dtype=np.float32)
  ours = np.asarray(layers.gelu_erf(jnp.asarray(x)))
  x_t = torch.from_numpy(x).requires_grad_()
  want = torch.nn.functional.gelu(x_t)  # HF "gelu" = ACT2FN["gelu"] = this
  want.sum().backward()
  np.testing.assert_allclose(ours, want.detach().numpy(), rtol=0, atol=2e-6)
  grad = np.asarray(jax.vmap(jax.grad(layers.gelu_erf))(jnp.asarray(x)))
  np.testing.assert_allclose(grad, x_t.grad.numpy(), rtol=0, atol=1e-6)
  assert layers.ACTIVATIONS["gelu"] is layers.gelu_erf


def _dot_types(fn, *args) -> list[tuple[str, str]]:
  """(operand dtype, preferred_element_type) of every dot_general in fn's jaxpr, gradient
  included."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        found.append((str(eqn.invars[0].aval.dtype), str(eqn.params["preferred_element_type"])))
      for sub in jax.core.jaxprs_in_params(eqn.params):
        walk(sub)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


def test_bf16_dense_multiplies_in_bf16_and_accumulates_in_float32():
  dense = layers.Dense((8,), ("embed",), ("mlp",), dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (4, 16), jnp.float32)
  params = dense.init(jax.random.key(1), x)
  y = dense.apply(params, x)
  assert y.dtype == jnp.bfloat16
  kernel = params["params"]["kernel"].value
  bias = params["params"]["bias"].value
  assert kernel.dtype == jnp.float32  # parameters stay float32
  exact = (x.astype(jnp.bfloat16).astype(jnp.float32)
           @ kernel.astype(jnp.bfloat16).astype(jnp.float32) + bias)
  np.testing.assert_allclose(np.asarray(y, np.float32), exact, rtol=1e-2, atol=1e-2)
  assert _dot_types(lambda x: dense.apply(params, x), x) == [("bfloat16", "float32")]
  # Forward and backward products all take bf16 operands (plain autodiff would multiply the
  # float32 cotangent with the bf16 operands: float32 GEMMs); the input gradient accumulates
  # in float32, the weight gradient is produced in bf16 (XLA:CPU has no bf16 -> f32 kernel
  # for that contraction).
  loss = lambda p, x: dense.apply(p, x).astype(jnp.float32).sum()
  types = _dot_types(jax.grad(loss, argnums=(0, 1)), params, x)
  assert sorted(types) == [("bfloat16", "bfloat16"), ("bfloat16", "float32"),
                           ("bfloat16", "float32")]
  assert _dot_types(lambda x: layers.Dense((8,), ("embed",), ("mlp",), out_dtype=jnp.float32,
                                           dtype=jnp.bfloat16).apply(params, x), x) \
      == [("bfloat16", "float32")]
  assert layers.Dense((8,), ("embed",), ("mlp",), dtype=jnp.bfloat16,
                      out_dtype=jnp.float32).apply(params, x).dtype == jnp.float32


def test_tied_head_gives_float32_logits_from_bf16():
  embed = layers.Embed(32, 16, dtype=jnp.bfloat16)
  params = embed.init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32))
  h = jax.random.normal(jax.random.key(1), (2, 3, 16))
  logits = embed.apply(params, h, method="attend")
  assert logits.dtype == jnp.float32 and logits.shape == (2, 3, 32)
  assert _dot_types(lambda h: embed.apply(params, h, method="attend"), h) \
      == [("bfloat16", "float32")]


@pytest.mark.parametrize("spec, x_shape, y_shape", [
    ("bqhd,bkhd->bhqk", (2, 5, 3, 4), (2, 6, 3, 4)),  # attention scores
    ("bhqk,bkhd->bqhd", (2, 3, 5, 6), (2, 6, 3, 4)),  # attention output
    ("...d,vd->...v", (2, 5, 4), (7, 4)),  # tied head
    ("abi,im->abm", (2, 5, 4), (4, 7)),  # Dense
])
def test_low_precision_einsum_gradient_is_the_float32_one_of_the_rounded_operands(
    spec, x_shape, y_shape):
  kx, ky, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape).astype(jnp.bfloat16)
  y = jax.random.normal(ky, y_shape).astype(jnp.bfloat16)
  out = layers.einsum(spec, x, y)
  assert out.dtype == jnp.float32
  g = jax.random.normal(kg, out.shape).astype(jnp.bfloat16).astype(jnp.float32)
  dx, dy = jax.vjp(lambda a, b: layers.einsum(spec, a, b), x, y)[1](g)
  assert dx.dtype == jnp.bfloat16 and dy.dtype == jnp.bfloat16
  f32 = lambda a: a.astype(jnp.float32)
  want = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), f32(x), f32(y))[1](g)
  np.testing.assert_allclose(f32(out), jnp.einsum(spec, f32(x), f32(y)), rtol=1e-6, atol=1e-6)
  for got, ref in zip((dx, dy), want):  # only roundings to bf16 differ
    np.testing.assert_allclose(f32(got), ref, rtol=2 ** -7, atol=2e-2)
  # float32 operands take plain autodiff (the same products as jnp.einsum).
  fx, fy = f32(x), f32(y)
  assert _dot_types(jax.grad(lambda a, b: layers.einsum(spec, a, b).sum(), (0, 1)), fx, fy) \
      == _dot_types(jax.grad(lambda a, b: jnp.einsum(spec, a, b).sum(), (0, 1)), fx, fy)
