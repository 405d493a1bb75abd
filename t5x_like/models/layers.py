"""Shared Flax building blocks with logical axis names on every parameter and activation.

Logical parameter axes: `vocab, embed, heads, kv, mlp, layers, position, type`.
Logical activation axes: `act_batch, act_length, act_embed, act_heads, act_mlp, act_vocab`.
`t5x_like.sharding` maps both to mesh axes; nothing here names a mesh axis.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Initializer = Callable[..., jax.Array]


def gelu_erf(x: jax.Array) -> jax.Array:
  """Exact GELU as torch writes it, `x/2 * (1 + erf(x/sqrt(2)))` (HF "gelu").

  `jax.nn.gelu(approximate=False)` goes through `erfc`, which is more precise far in the
  negative tail (where both round to ~0 anyway) but costs XLA's CPU backend a select-heavy
  erfc and its exp-based derivative: on a [2048, 1024] FFN activation the erf form made
  forward + backward ~20% faster (fused with the GEMMs around it).
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu_erf,  # HF "gelu" is the erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def dtype_of(name: str) -> Dtype:
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def dtypes(config: Any) -> tuple[Dtype, Dtype]:
  """(compute dtype, param dtype) named by a family config's `dtype` and `param_dtype`."""
  return dtype_of(config.dtype), dtype_of(config.param_dtype)


def logical(init: Initializer, axes: tuple[str | None, ...]) -> Initializer:
  return nn.with_logical_partitioning(init, axes)


def normal(std: float) -> Initializer:
  """N(0, std^2): every family's weights and tables (HF's `_init_weights`)."""
  return nn.initializers.normal(std)


def zeros(axes: tuple[str | None, ...]) -> Initializer:
  """Zeros with logical axes: biases (and the LayerNorm shift)."""
  return logical(nn.initializers.zeros_init(), axes)


def ones(axes: tuple[str | None, ...]) -> Initializer:
  """Ones with logical axes: norm scales."""
  return logical(nn.initializers.ones_init(), axes)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
  return nn.with_logical_constraint(x, axes)


def einsum(spec: str, x: jax.Array, y: jax.Array) -> jax.Array:
  """Two-operand `jnp.einsum` that accumulates in, and returns, float32.

  Callers cast the result to their compute dtype (XLA fuses the cast into the GEMM). With
  bfloat16 operands this is the TPU MXU's own arithmetic, and on CPU it selects the fast
  bf16 GEMMs: XLA:CPU runs bf16 x bf16 -> bf16 at float32 speed or slower, bf16 x bf16 ->
  f32 at about twice float32 (machines with AVX512-BF16).

  Its gradient keeps the products in the operands' dtype: autodiff would multiply the
  float32 cotangent with the bf16 operands, i.e. run every backward GEMM in float32. Here
  the cotangent is rounded to the operand dtype first (as when the forward product is taken
  in that dtype) and the backward products accumulate in float32 as the forward one.
  spec: "lhs,rhs->out", each index of an operand also in the other operand or the output.
  """
  if x.dtype == jnp.float32 and y.dtype == jnp.float32:
    return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)
  return _low_precision_einsum(spec, x, y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _low_precision_einsum(spec: str, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)


def _low_precision_einsum_fwd(spec, x, y):
  return _low_precision_einsum(spec, x, y), (x, y)


def _low_precision_einsum_bwd(spec, residuals, g):
  x, y = residuals
  lhs_rhs, out = spec.split("->")
  lhs, rhs = lhs_rhs.split(",")
  dx = jnp.einsum(f"{out},{rhs}->{lhs}", g.astype(y.dtype), y,
                  preferred_element_type=jnp.float32)
  # Produced in the operand dtype: XLA:CPU has no bf16 x bf16 -> f32 kernel for this
  # product when it contracts the leading (token) axis of both operands, as a weight
  # gradient does (the TPU accumulates in float32 either way).
  dy = jnp.einsum(f"{lhs},{out}->{rhs}", x, g.astype(x.dtype))
  return dx.astype(x.dtype), dy.astype(y.dtype)


_low_precision_einsum.defvjp(_low_precision_einsum_fwd, _low_precision_einsum_bwd)


class Dense(nn.Module):
  """`y = x @ W + b` over the trailing input axes, with logical axes for W and b.

  x and W are cast to `dtype` for the product, which accumulates in float32
  (`einsum`); the bias is added in float32 and the result cast to `out_dtype`.

  in_axes names the contracted trailing dims of x (their count = len(in_axes));
  out_features/out_axes the produced ones. Kernel shape = in_dims + out_features.
  """
  out_features: tuple[int, ...]
  in_axes: tuple[str, ...]
  out_axes: tuple[str, ...]
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = normal(0.02)
  out_dtype: Dtype | None = None  # the result's dtype (default: dtype); float32 for logits

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = len(self.in_axes)
    in_shape = x.shape[-n_in:]
    kernel = self.param("kernel", logical(self.kernel_init, self.in_axes + self.out_axes),
                        in_shape + tuple(self.out_features), self.param_dtype)
    x = x.astype(self.dtype)
    lead = x.shape[:-n_in]
    n_out = math.prod(self.out_features)
    fan_in = math.prod(in_shape)
    kernel, lora_y = self._lora(x, kernel.reshape(fan_in, n_out), in_shape, n_out)
    # One plain [tokens, in] x [in, out] GEMM (the reshapes are free): the form every
    # backend's GEMM takes directly (XLA:CPU has no bf16 -> f32 kernel for the weight
    # gradient of a [in, heads, kv] kernel kept 3-D).
    y = einsum("ti,io->to", x.reshape(-1, fan_in), kernel.astype(self.dtype))
    if lora_y is not None:
      y = y + lora_y
    y = y.reshape(lead + tuple(self.out_features))
    if self.use_bias:
      bias = self.param("bias", zeros(self.out_axes), tuple(self.out_features),
                        self.param_dtype)
      y = y + bias.astype(jnp.float32)
    return y.astype(self.out_dtype or self.dtype)


  def _lora(self, x: jax.Array, kernel: jax.Array, in_shape: tuple[int, ...], n_out: int
            ) -> tuple[jax.Array, jax.Array | None]:
    """(the [in, out] kernel to multiply by, the LoRA term to add or None) when this layer is
    a LoRA target (`t5x_like.models.lora`); (kernel, None) otherwise.

    Without adapter dropout the product is x (W + s A B): one GEMM, as the merged model
    computes it (the [in, r] x [r, out] product is small). Two skinny [tokens, in] x [in, r]
    and [tokens, r] x [r, out] products cost more than that on CPU (memory-bound: with
    adapters on every BERT-base projection they made the LoRA step slower than full
    training). With dropout the term s (dropout(x) A) B is computed apart, as peft does.
    """
    from t5x_like.models import lora  # local: lora imports the config schema
    state = lora.current()
    path = "/".join(str(p) for p in self.path)
    if state is None or not state[0].targets_path(path):
      if self.has_variable("params", "lora_a"):
        raise RuntimeError(f"{path} holds LoRA adapters but runs outside `lora.active`; merge "
                           "them first (`t5x_like.models.lora.merge`)")
      return kernel, None
    spec, deterministic = state
    n_in = len(self.in_axes)
    fan_in = math.prod(in_shape)
    if spec.init == "gaussian":  # peft's init_lora_weights="gaussian": N(0, 1/r^2)
      a_init = nn.initializers.normal(1.0 / spec.rank)
    else:  # peft's default, torch's kaiming_uniform_(a=sqrt(5)) over fan_in
      a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform",
                                                in_axis=tuple(range(n_in)), out_axis=-1)
    a = self.param("lora_a", logical(a_init, self.in_axes + ("lora",)),
                   in_shape + (spec.rank,), self.param_dtype)
    b = self.param("lora_b", zeros(("lora",) + self.out_axes),
                   (spec.rank,) + tuple(self.out_features), self.param_dtype)
    a = a.astype(jnp.float32).reshape(fan_in, spec.rank)
    b = b.astype(jnp.float32).reshape(spec.rank, n_out)
    if spec.dropout == 0 or deterministic:
      delta = spec.scale * jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
      return (kernel.astype(jnp.float32) + delta).astype(self.param_dtype), None
    h = x.reshape(-1, fan_in)
    keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - spec.dropout, h.shape)
    h = jnp.where(keep, h / (1.0 - spec.dropout), 0).astype(h.dtype)
    u = einsum("ti,ir->tr", h, a.astype(self.dtype))
    z = einsum("tr,ro->to", u.astype(self.dtype), b.astype(self.dtype))
    return kernel, spec.scale * z


class LayerNorm(nn.Module):
  """LayerNorm over the last axis; statistics in float32 whatever the compute dtype.

  use_bias=False: a scale only (MPT's LayerNorms, whose HF bias is None).
  """
  epsilon: float = 1e-12
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", ones(("embed",)), (features,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = y * scale.astype(jnp.float32)
    if self.use_bias:
      bias = self.param("bias", zeros(("embed",)), (features,), self.param_dtype)
      y = y + bias.astype(jnp.float32)
    return y.astype(self.dtype)


class Embed(nn.Module):
  """A lookup table [num, features] with logical axes; `attend` gives x @ table.T."""
  num_embeddings: int
  features: int
  axes: tuple[str, str] = ("vocab", "embed")
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  embedding_init: Initializer = normal(0.02)

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
    """float32 logits (accumulated in float32 from `dtype` operands)."""
    return einsum("...d,vd->...v", x.astype(self.dtype), self.embedding.astype(self.dtype))


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
  """Additive attention bias, [B, 1, 1, L] from a padding mask [B, L], or [B, 1, L, L] from
  segments or from a per-query mask [B, L, L] (1: query i may attend key j; transformers'
  3-D `attention_mask`, e.g. UniLM's self-attention masks).

  Packed rows (segment_ids, 0 = padding) attend only within their own segment.
  """
  big_negative = jnp.finfo(dtype).min
  if segment_ids is not None:
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    keep = same & (segment_ids[:, None, :] != 0)
    return jnp.where(keep, 0.0, big_negative).astype(dtype)[:, None, :, :]
  if attention_mask is not None and attention_mask.ndim == 3:
    return jnp.where(attention_mask[:, None, :, :] > 0, 0.0, big_negative).astype(dtype)
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
  kernel_init: Initializer = normal(0.02)

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
    scores_BHLT = einsum("bqhk,bthk->bhqt", q_BLHK, k_BLHK)
    if bias is not None:
      scores_BHLT = scores_BHLT + bias.astype(jnp.float32)
    probs_BHLT = jax.nn.softmax(scores_BHLT, axis=-1).astype(self.dtype)
    if self.dropout_rate > 0 and not self.deterministic:
      probs_BHLT = nn.Dropout(self.dropout_rate)(probs_BHLT, deterministic=False)
    out_BLHK = einsum("bhqt,bthk->bqhk", probs_BHLT, v_BLHK).astype(self.dtype)
    return constrain(out_BLHK, ("act_batch", "act_length", "act_heads", None))


# remat policies by config name (model.remat; "none" = no remat), shared by every family.
REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def per_token(dense: Dense, x: jax.Array, num_in: int = 1) -> jax.Array:
  """`dense(x)` with the leading (batch, length) axes merged into one token axis.

  Same result; but the weight gradient then contracts one token axis, which XLA:CPU runs as
  one GEMM with a transposed operand, where contracting (batch, length) made it first copy
  the [B, L, F] activation gradient into a transposed layout (the costliest non-matmul ops
  of a CPU train step; the reshapes are free).
  """
  lead = x.shape[:-num_in]
  y = dense(x.reshape((-1,) + x.shape[-num_in:]))
  return y.reshape(lead + y.shape[1:])


def encoder_mask(attention_mask: jax.Array | None, segment_ids: jax.Array | None
                 ) -> jax.Array | None:
  """Bool [B, 1, L, L] (same non-padding segment) or [B, 1, 1, L] (key mask), or None."""
  if segment_ids is not None:
    keep = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (keep & (segment_ids[:, None, :] != 0))[:, None]
  if attention_mask is not None:
    return (attention_mask > 0)[:, None, None, :]
  return None


def decoder_mask(length: int, decoder_attention_mask: jax.Array | None,
                 decoder_segment_ids: jax.Array | None) -> jax.Array:
  """Bool [B or 1, 1, T, T]: causal, within one segment, to non-masked keys."""
  keep = jnp.asarray(np.tril(np.ones((length, length), bool)))[None, None]
  if decoder_segment_ids is not None:
    same = decoder_segment_ids[:, :, None] == decoder_segment_ids[:, None, :]
    keep = keep & same[:, None]
  if decoder_attention_mask is not None:
    keep = keep & (decoder_attention_mask > 0)[:, None, None, :]
  return keep


def cross_mask(attention_mask: jax.Array | None, segment_ids: jax.Array | None,
               decoder_segment_ids: jax.Array | None) -> jax.Array | None:
  """Bool [B, 1, T, L] (decoder segment == encoder segment) or [B, 1, 1, L], or None."""
  if segment_ids is not None and decoder_segment_ids is not None:
    return (decoder_segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
  if segment_ids is not None:
    return (segment_ids != 0)[:, None, None, :]
  if attention_mask is not None:
    return (attention_mask > 0)[:, None, None, :]
  return None
