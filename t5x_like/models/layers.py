"""Shared Flax building blocks with logical axis names on every parameter and activation.

Logical parameter axes: `vocab, embed, heads, kv, mlp, layers, position, type`.
Logical activation axes: `act_batch, act_length, act_embed, act_heads, act_mlp, act_vocab`.
`t5x_like.sharding` maps both to mesh axes; nothing here names a mesh axis.
"""

from __future__ import annotations

import logging
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


ATTENTION_KERNELS = ("xla", "splash")
SPLASH_BLOCK = 128  # the kernel's block size: lengths must be multiples of it
_logger = logging.getLogger(__name__)
_fallbacks_logged: set[str] = set()


def log_fallback(reason: str) -> None:
  """Says once per process (at trace time) why an attention call uses XLA, not splash."""
  if reason not in _fallbacks_logged:
    _fallbacks_logged.add(reason)
    _logger.warning("model.attention_kernel=splash: %s; using XLA attention there", reason)


def splash_unusable(q_len: int, kv_len: int, dropout_active: bool) -> str | None:
  """Why the splash kernel cannot run a call of these lengths (None when it can)."""
  if q_len % SPLASH_BLOCK or kv_len % SPLASH_BLOCK:
    return (f"lengths {q_len}x{kv_len} are not multiples of the kernel's {SPLASH_BLOCK}-token "
            "block")
  if dropout_active:
    return "attention-probability dropout is on (the kernel has none)"
  return None


def splash_attention(q_BLHK: jax.Array, k_BTHK: jax.Array, v_BTHK: jax.Array,
                     q_segment_ids_BL: jax.Array, kv_segment_ids_BT: jax.Array,
                     causal: bool = False) -> jax.Array:
  """Pallas splash attention (TPU; Pallas interpret mode elsewhere), [B, L, H, K] out.

  q must already be scaled. Position i attends to key j iff their segment ids are equal (and
  j <= i when causal); padding is a segment of its own (its outputs are not meaningful, as
  with the XLA path's fully masked rows). No additive bias and no dropout: callers check
  `splash_unusable` first.
  """
  # Imported here: Pallas loads only for runs that ask for the kernel.
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
  _, q_len, heads, _ = q_BLHK.shape
  kv_len = k_BTHK.shape[1]
  shape = (q_len, kv_len)
  base = mask_lib.CausalMask(shape) if causal else mask_lib.FullMask(shape)
  block = SPLASH_BLOCK
  sizes = kernel_lib.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                                block_q_dkv=block, block_kv_dkv=block,
                                block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  attend = kernel_lib.make_splash_mha(mask_lib.MultiHeadMask([base] * heads), block_sizes=sizes,
                                      head_shards=1, q_seq_shards=1,
                                      interpret=jax.default_backend() != "tpu")

  def one(q_HLK, k_HTK, v_HTK, q_seg_L, kv_seg_T):
    return attend(q_HLK, k_HTK, v_HTK,
                  segment_ids=kernel_lib.SegmentIds(q=q_seg_L, kv=kv_seg_T))

  out_BHLK = jax.vmap(one)(q_BLHK.transpose(0, 2, 1, 3), k_BTHK.transpose(0, 2, 1, 3),
                           v_BTHK.transpose(0, 2, 1, 3), q_segment_ids_BL.astype(jnp.int32),
                           kv_segment_ids_BT.astype(jnp.int32))
  return out_BHLK.transpose(0, 2, 1, 3)


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
  def __call__(self, x_BLD: jax.Array, bias: jax.Array | None,
               segment_ids_BL: jax.Array | None = None) -> jax.Array:
    """bias: additive [B, 1, L or 1, L] (XLA path); segment_ids_BL instead selects the splash
    kernel (the caller checked `splash_unusable`)."""
    proj = lambda name: Dense((self.num_heads, self.head_dim), ("embed",), ("heads", "kv"),
                              dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=self.kernel_init, name=name)
    q_BLHK = proj("query")(x_BLD)
    k_BLHK = proj("key")(x_BLD)
    v_BLHK = proj("value")(x_BLD)
    q_BLHK = constrain(q_BLHK, ("act_batch", "act_length", "act_heads", None))
    q_BLHK = q_BLHK / jnp.sqrt(self.head_dim).astype(self.dtype)
    if segment_ids_BL is not None:
      out_BLHK = splash_attention(q_BLHK, k_BLHK, v_BLHK, segment_ids_BL, segment_ids_BL)
      return constrain(out_BLHK, ("act_batch", "act_length", "act_heads", None))
    scores_BHLT = jnp.einsum("bqhk,bthk->bhqt", q_BLHK, k_BLHK).astype(jnp.float32)
    if bias is not None:
      scores_BHLT = scores_BHLT + bias.astype(jnp.float32)
    probs_BHLT = jax.nn.softmax(scores_BHLT, axis=-1).astype(self.dtype)
    if self.dropout_rate > 0 and not self.deterministic:
      probs_BHLT = nn.Dropout(self.dropout_rate)(probs_BHLT, deterministic=False)
    out_BLHK = jnp.einsum("bhqt,bthk->bqhk", probs_BHLT, v_BLHK)
    return constrain(out_BLHK, ("act_batch", "act_length", "act_heads", None))
