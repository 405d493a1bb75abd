"""Shared Flax building blocks with logical axis names on every parameter and activation.

Logical parameter axes: `vocab, embed, heads, kv, mlp, layers, position, type`.
Logical activation axes: `act_batch, act_length, act_embed, act_heads, act_mlp, act_vocab`.
`t5x_like.sharding` maps both to mesh axes; nothing here names a mesh axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Initializer = Callable[..., jax.Array]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def dtype_of(name: str) -> Dtype:
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def logical(init: Initializer, axes: tuple[str | None, ...]) -> Initializer:
  return nn.with_logical_partitioning(init, axes)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
  return nn.with_logical_constraint(x, axes)


class Dense(nn.Module):
  """`y = x @ W + b` over the trailing input axes, with logical axes for W and b.

  in_axes names the contracted trailing dims of x (their count = len(in_axes));
  out_features/out_axes the produced ones. Kernel shape = in_dims + out_features.
  """
  out_features: tuple[int, ...]
  in_axes: tuple[str, ...]
  out_axes: tuple[str, ...]
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.normal(0.02)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = len(self.in_axes)
    in_shape = x.shape[-n_in:]
    kernel = self.param("kernel", logical(self.kernel_init, self.in_axes + self.out_axes),
                        in_shape + tuple(self.out_features), self.param_dtype)
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    y = jax.lax.dot_general(x, kernel, (contract, ((), ())))
    if self.use_bias:
      bias = self.param("bias", logical(nn.initializers.zeros_init(), self.out_axes),
                        tuple(self.out_features), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class LayerNorm(nn.Module):
  """LayerNorm over the last axis; statistics in float32 whatever the compute dtype."""
  epsilon: float = 1e-12
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", logical(nn.initializers.ones_init(), ("embed",)), (features,),
                       self.param_dtype)
    bias = self.param("bias", logical(nn.initializers.zeros_init(), ("embed",)), (features,),
                      self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(self.dtype)


class Embed(nn.Module):
  """A lookup table [num, features] with logical axes; `attend` gives x @ table.T."""
  num_embeddings: int
  features: int
  axes: tuple[str, str] = ("vocab", "embed")
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  embedding_init: Initializer = nn.initializers.normal(0.02)

  def setup(self) -> None:
    self.embedding = self.param("embedding", logical(self.embedding_init, self.axes),
                                (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    # Gather from a table whose feature axis is whole (the FSDP all-gather a layer's weights
    # get anyway); rows may stay split over `tensor`, which XLA gathers from locally.
    table = constrain(self.embedding, (self.axes[0], None))
    out = jnp.take(table, ids, axis=0).astype(self.dtype)
    return constrain(out, ("act_batch", "act_length", "act_embed"))

  def attend(self, x: jax.Array) -> jax.Array:
    return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding.astype(self.dtype))


def attention_bias(attention_mask: jax.Array | None, segment_ids: jax.Array | None,
                   dtype: Dtype = jnp.float32) -> jax.Array | None:
  """Additive attention bias, [B, 1, 1, L] from a padding mask or [B, 1, L, L] from segments.

  Packed rows (segment_ids, 0 = padding) attend only within their own segment.
  """
  big_negative = jnp.finfo(dtype).min
  if segment_ids is not None:
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    keep = same & (segment_ids[:, None, :] != 0)
    return jnp.where(keep, 0.0, big_negative).astype(dtype)[:, None, :, :]
  if attention_mask is not None:
    return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, big_negative).astype(dtype)
  return None


class MultiHeadDotProductAttention(nn.Module):
  """Scaled dot-product self-attention: projections q/k/v [embed, heads, kv]; returns [B,L,H,K].

  The output projection is left to the caller so families can name it as their HF
  counterpart does.
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.normal(0.02)

  @nn.compact
  def __call__(self, x_BLD: jax.Array, bias: jax.Array | None) -> jax.Array:
    proj = lambda name: Dense((self.num_heads, self.head_dim), ("embed",), ("heads", "kv"),
                              dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=self.kernel_init, name=name)
    q_BLHK = proj("query")(x_BLD)
    k_BLHK = proj("key")(x_BLD)
    v_BLHK = proj("value")(x_BLD)
    q_BLHK = constrain(q_BLHK, ("act_batch", "act_length", "act_heads", None))
    q_BLHK = q_BLHK / jnp.sqrt(self.head_dim).astype(self.dtype)
    scores_BHLT = jnp.einsum("bqhk,bthk->bhqt", q_BLHK, k_BLHK).astype(jnp.float32)
    if bias is not None:
      scores_BHLT = scores_BHLT + bias.astype(jnp.float32)
    probs_BHLT = jax.nn.softmax(scores_BHLT, axis=-1).astype(self.dtype)
    if self.dropout_rate > 0 and not self.deterministic:
      probs_BHLT = nn.Dropout(self.dropout_rate)(probs_BHLT, deterministic=False)
    out_BLHK = jnp.einsum("bhqt,bthk->bqhk", probs_BHLT, v_BLHK)
    return constrain(out_BLHK, ("act_batch", "act_length", "act_heads", None))
