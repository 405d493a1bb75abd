"""Llama decoder-only LM, mirroring `transformers.LlamaForCausalLM` tensor for tensor.

Pre-norm blocks with RMSNorm, rotary position embeddings (HF's half-split `rotate_half`,
default rope type), grouped-query attention (`num_kv_heads` key/value heads, each shared by
`num_heads // num_kv_heads` query heads), a SwiGLU MLP (`down(act(gate x) * up x)`), no
biases, and an LM head that is its own matrix or the token embedding (`tie_word_embeddings`).

Rows may be packed (segment ids, per-document positions for RoPE) and may carry a prefix
(prefix LM: prefix tokens see the whole prefix of their document). `decode=True` runs
autoregressive decoding with a key/value cache in the flax "cache" collection, as flax / T5X
do: `init` on ids of the cache's length makes a zero cache; each `apply` appends its chunk.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.models import layers
from t5x_like.models.stack import layer_stack

# Batch features this family consumes (the objective must produce exactly these).
FEATURES = ("input_ids", "labels")
PACKED_FEATURES = ("segment_ids", "positions")

# HF's ACT2FN names; "silu" (Llama's) is not one of the encoder families' activations.
ACTIVATIONS = {"silu": jax.nn.silu, **layers.ACTIVATIONS}

_ACT_BLD = ("act_batch", "act_length", "act_embed")
_ACT_BLHK = ("act_batch", "act_length", "act_heads", None)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Shape and options; names as `transformers.LlamaConfig` except where noted.

  layer_norm_eps is HF's `rms_norm_eps` (the run config's shared key, as T5 uses it for its
  RMSNorm); dropout_rate is HF's `attention_dropout` (Llama has no other dropout).
  """
  vocab_size: int
  hidden_size: int = 4096
  num_layers: int = 32  # num_hidden_layers
  num_heads: int = 32  # num_attention_heads
  num_kv_heads: int = 0  # num_key_value_heads; 0 = num_heads (multi-head attention)
  head_dim: int = 0  # 0 = hidden_size // num_heads
  intermediate_size: int = 11008
  hidden_act: str = "silu"
  layer_norm_eps: float = 1e-6  # rms_norm_eps
  rope_theta: float = 10000.0
  # HF's value, kept for the export; RoPE has no table, so it limits nothing here.
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  initializer_range: float = 0.02
  dropout_rate: float = 0.0  # attention_dropout
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"  # "none" | "full" | "dots" (layers.REMAT_POLICIES)
  scan_layers: bool = False
  # "splash": the Pallas kernel (causal, segment ids) in training and full forwards; prefix
  # LM, decoding and attention dropout use XLA (said once per process).
  attention_kernel: str = "xla"

  @property
  def d_head(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def rms_norm_eps(self) -> float:
    return self.layer_norm_eps


def rope_cos_sin(positions_BL: jax.Array, head_dim: int, theta: float
                 ) -> tuple[jax.Array, jax.Array]:
  """cos, sin [B, L, head_dim] float32 of HF's default RoPE at integer positions.

  inv_freq = 1 / theta^(2i / head_dim) for i < head_dim / 2, in float32 as torch computes it;
  the angles repeat once (`cat(freqs, freqs)`) to pair dimension j with j + head_dim / 2.
  """
  inv_freq = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) /
                                          np.float32(head_dim)))
  freqs_BLF = positions_BL.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
  angles_BLK = jnp.concatenate([freqs_BLF, freqs_BLF], axis=-1)
  return jnp.cos(angles_BLK), jnp.sin(angles_BLK)


def apply_rope(x_BLHK: jax.Array, cos_BLK: jax.Array, sin_BLK: jax.Array) -> jax.Array:
  """x * cos + rotate_half(x) * sin, in x's dtype (HF casts cos / sin to it first)."""
  half = x_BLHK.shape[-1] // 2
  rotated = jnp.concatenate([-x_BLHK[..., half:], x_BLHK[..., :half]], axis=-1)
  cos = cos_BLK.astype(x_BLHK.dtype)[:, :, None, :]
  sin = sin_BLK.astype(x_BLHK.dtype)[:, :, None, :]
  return x_BLHK * cos + rotated * sin


def attention_mask(segment_ids_BL: jax.Array | None, prefix_BL: jax.Array | None,
                   length: int) -> jax.Array:
  """Bool [B or 1, 1, 1, L, L] (broadcast over kv heads and groups): query i sees key j iff
  same non-padding segment and (j <= i or j is a prefix token)."""
  keep_BLL = jnp.asarray(np.tril(np.ones((length, length), bool)))[None]
  if prefix_BL is not None:
    keep_BLL = keep_BLL | prefix_BL.astype(bool)[:, None, :]
  if segment_ids_BL is not None:
    same = segment_ids_BL[:, :, None] == segment_ids_BL[:, None, :]
    keep_BLL = keep_BLL & same & (segment_ids_BL[:, None, :] != 0)
  return keep_BLL[:, None, None]


def splash_segments(c: LlamaConfig, segment_ids_BL: jax.Array | None,
                    prefix_BL: jax.Array | None, batch: int, length: int, deterministic: bool,
                    decode: bool) -> jax.Array | None:
  """The segment ids the splash kernel runs a call with (packed rows' ids; one segment per
  row otherwise), or None for XLA attention: not asked for, or a call it cannot serve."""
  if c.attention_kernel != "splash":
    return None
  if decode:
    reason = "decoding attends over the key/value cache"
  elif prefix_BL is not None:
    reason = "prefix-LM rows (a bidirectional prefix) are not a causal mask"
  else:
    reason = layers.splash_unusable(length, length, c.dropout_rate > 0 and not deterministic)
  if reason is not None:
    layers.log_fallback(f"Llama: {reason}")
    return None
  if segment_ids_BL is not None:
    return segment_ids_BL.astype(jnp.int32)
  return jnp.ones((batch, length), jnp.int32)


class RMSNorm(nn.Module):
  """LlamaRMSNorm: normalised in float32, cast to the compute dtype, then scaled there."""
  epsilon: float = 1e-6
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", layers.logical(nn.initializers.ones_init(), ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = (x32 * jax.lax.rsqrt(var + self.epsilon)).astype(self.dtype)
    return scale.astype(self.dtype) * y


class LlamaAttention(nn.Module):
  """Grouped-query self-attention with RoPE; q/k/v/o without biases, as HF's projections.

  Kernels: q_proj [embed, heads, kv], k_proj / v_proj [embed, kv heads, kv], o_proj
  [heads, kv, embed]. The kv heads carry the logical axis `heads` too, so tensor
  parallelism splits them like the query heads (num_kv_heads must then divide by it).
  """
  config: LlamaConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x_BLD: jax.Array, cos_BLK: jax.Array, sin_BLK: jax.Array,
               mask: jax.Array | None, cache_index: jax.Array | None,
               prefix_BL: jax.Array | None, splash_segments_BL: jax.Array | None = None
               ) -> jax.Array:
    """Returns [B, L, D]. mask: bool, broadcastable to [B, KV, G, L, T] (None when decoding:
    built here against the cache); cache_index: int32 scalar, the first slot of this chunk
    in the cache (decoding only); splash_segments_BL: int32 segment ids (0 = padding) when
    the splash kernel runs this call (`splash_segments`), else None."""
    c = self.config
    dtype, pdtype = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
    h, kv, k, d = c.num_heads, c.kv_heads, c.d_head, c.hidden_size
    groups = h // kv
    init = nn.initializers.normal(c.initializer_range)

    def proj(heads: int, name: str) -> layers.Dense:
      return layers.Dense((heads, k), ("embed",), ("heads", "kv"), use_bias=False, dtype=dtype,
                          param_dtype=pdtype, kernel_init=init, name=name)

    q_BLHK = layers.constrain(layers.per_token(proj(h, "q_proj"), x_BLD), _ACT_BLHK)
    k_BLHK = layers.constrain(layers.per_token(proj(kv, "k_proj"), x_BLD), _ACT_BLHK)
    v_BLHK = layers.constrain(layers.per_token(proj(kv, "v_proj"), x_BLD), _ACT_BLHK)
    q_BLHK = apply_rope(q_BLHK, cos_BLK, sin_BLK)
    k_BLHK = apply_rope(k_BLHK, cos_BLK, sin_BLK)

    o = layers.Dense((d,), ("heads", "kv"), ("embed",), use_bias=False, dtype=dtype,
                     param_dtype=pdtype, kernel_init=init, name="o_proj")
    if splash_segments_BL is not None:
      # Query head h reads kv head h // groups (HF's repeat_kv), repeated for the kernel.
      out_BLHK = layers.splash_attention(
          q_BLHK * jnp.asarray(k ** -0.5, dtype), jnp.repeat(k_BLHK, groups, axis=2),
          jnp.repeat(v_BLHK, groups, axis=2), splash_segments_BL, splash_segments_BL,
          causal=True)
      return layers.per_token(o, layers.constrain(out_BLHK.astype(dtype), _ACT_BLHK),
                              num_in=2)
    if self.decode:
      k_BLHK, v_BLHK, mask = self._cached(k_BLHK, v_BLHK, mask, cache_index, prefix_BL)
    b, length = q_BLHK.shape[:2]
    # Query head h uses kv head h // groups (HF's repeat_kv): split h as (kv, group).
    q_BLNGK = q_BLHK.reshape(b, length, kv, groups, k)
    scores_BNGLT = layers.einsum("blngk,btnk->bnglt", q_BLNGK, k_BLHK) * (k ** -0.5)
    if mask is not None:
      scores_BNGLT = jnp.where(mask, scores_BNGLT, jnp.finfo(jnp.float32).min)
    probs_BNGLT = jax.nn.softmax(scores_BNGLT, axis=-1).astype(dtype)
    if c.dropout_rate > 0 and not self.deterministic:
      probs_BNGLT = nn.Dropout(c.dropout_rate)(probs_BNGLT, deterministic=False)
    out_BLNGK = layers.einsum("bnglt,btnk->blngk", probs_BNGLT, v_BLHK).astype(dtype)
    out_BLHK = layers.constrain(out_BLNGK.reshape(b, length, h, k), _ACT_BLHK)
    return layers.per_token(o, out_BLHK, num_in=2)

  def _cached(self, k_BTHK: jax.Array, v_BTHK: jax.Array, mask: jax.Array | None,
              cache_index: jax.Array | None, prefix_BT: jax.Array | None
              ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Writes this chunk's keys / values at `cache_index` and returns the whole cache with
    the mask of the chunk's queries over it. At init (no cache yet) the zero cache is
    created, sized by the init input, and the chunk attends to itself only."""
    initialised = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, k_BTHK.shape, k_BTHK.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, v_BTHK.shape,
                                 v_BTHK.dtype)
    if not initialised:
      return k_BTHK, v_BTHK, mask
    chunk, slots = k_BTHK.shape[1], cached_key.value.shape[1]
    start = (0, cache_index, 0, 0)
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k_BTHK, start)
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, v_BTHK, start)
    # Query i of the chunk sits at position cache_index + i: it sees every filled slot up to
    # its own (and, for a prefix chunk, the chunk's prefix tokens after it).
    query_L = cache_index + jnp.arange(chunk)
    slot_T = jnp.arange(slots)
    keep_BLT = (slot_T[None, :] <= query_L[:, None])[None]
    if prefix_BT is not None:
      in_chunk = slot_T - cache_index
      prefix_of_slot = jnp.take_along_axis(
          prefix_BT.astype(bool), jnp.clip(in_chunk, 0, chunk - 1)[None, :], axis=1)
      keep_BLT = keep_BLT | (prefix_of_slot & (in_chunk >= 0) & (in_chunk < chunk))[:, None]
    return cached_key.value, cached_value.value, keep_BLT[:, None, None]


class LlamaMLP(nn.Module):
  """down_proj(act(gate_proj x) * up_proj x), no biases."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    c = self.config
    dtype, pdtype = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)

    def dense(features: int, in_axis: str, out_axis: str, name: str) -> layers.Dense:
      return layers.Dense((features,), (in_axis,), (out_axis,), use_bias=False, dtype=dtype,
                          param_dtype=pdtype,
                          kernel_init=nn.initializers.normal(c.initializer_range), name=name)

    gate_BLF = layers.per_token(dense(c.intermediate_size, "embed", "mlp", "gate_proj"), x_BLD)
    up_BLF = layers.per_token(dense(c.intermediate_size, "embed", "mlp", "up_proj"), x_BLD)
    h_BLF = layers.constrain(ACTIVATIONS[c.hidden_act](gate_BLF) * up_BLF,
                             ("act_batch", "act_length", "act_mlp"))
    return layers.per_token(dense(c.hidden_size, "mlp", "embed", "down_proj"), h_BLF)


class LlamaDecoderLayer(nn.Module):
  """x + attn(norm(x)), then x + mlp(norm(x)); no dropout on the residual stream (HF has
  none)."""
  config: LlamaConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x_BLD: jax.Array, cos_BLK: jax.Array, sin_BLK: jax.Array,
               mask: jax.Array | None, cache_index: jax.Array | None,
               prefix_BL: jax.Array | None, splash_segments_BL: jax.Array | None
               ) -> tuple[jax.Array, None]:
    c = self.config
    dtype, pdtype = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
    h_BLD = RMSNorm(c.layer_norm_eps, dtype, pdtype, name="input_layernorm")(x_BLD)
    h_BLD = LlamaAttention(c, self.deterministic, self.decode, name="self_attn")(
        h_BLD, cos_BLK, sin_BLK, mask, cache_index, prefix_BL, splash_segments_BL)
    x_BLD = layers.constrain(x_BLD + h_BLD, _ACT_BLD)
    h_BLD = RMSNorm(c.layer_norm_eps, dtype, pdtype, name="post_attention_layernorm")(x_BLD)
    h_BLD = LlamaMLP(c, name="mlp")(h_BLD)
    return layers.constrain(x_BLD + h_BLD, _ACT_BLD), None


class LlamaModel(nn.Module):
  """Token embedding, the decoder layers (loop `layer_{i}` or scanned `layers`), final norm.

  Holds the decoding position (`cache/cache_index`, the number of tokens cached so far),
  shared by all layers, whose caches hold only keys and values.
  """
  config: LlamaConfig

  def setup(self) -> None:
    c = self.config
    dtype, pdtype = layers.dtype_of(c.dtype), layers.dtype_of(c.param_dtype)
    self.embed_tokens = layers.Embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), dtype,
                                     pdtype, nn.initializers.normal(c.initializer_range))
    self.norm = RMSNorm(c.layer_norm_eps, dtype, pdtype)

  @nn.compact
  def __call__(self, input_ids_BL: jax.Array, segment_ids_BL: jax.Array | None,
               positions_BL: jax.Array | None, prefix_BL: jax.Array | None,
               deterministic: bool, decode: bool) -> jax.Array:
    c = self.config
    b, length = input_ids_BL.shape
    cache_index = None
    if decode:
      if segment_ids_BL is not None or positions_BL is not None:
        raise ValueError("decode=True takes no segment_ids / positions: the positions are "
                         "the cache index + arange(chunk), one document per row")
      initialised = self.has_variable("cache", "cache_index")
      index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
      if initialised:
        cache_index = index.value
        index.value = cache_index + length
        positions_BL = jnp.broadcast_to(cache_index + jnp.arange(length), (b, length))
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(length), (b, length))
    cos_BLK, sin_BLK = rope_cos_sin(positions_BL, c.d_head, c.rope_theta)
    splash_BL = splash_segments(c, segment_ids_BL, prefix_BL, b, length, deterministic, decode)
    mask = None if cache_index is not None or splash_BL is not None else attention_mask(
        segment_ids_BL, prefix_BL, length)

    x_BLD = self.embed_tokens(input_ids_BL)
    x_BLD, _ = layer_stack(LlamaDecoderLayer, c.num_layers, c.remat, c.scan_layers,
                           {"config": c, "deterministic": deterministic, "decode": decode},
                           x_BLD, cos_BLK, sin_BLK, mask, cache_index, prefix_BL, splash_BL)
    return layers.constrain(self.norm(x_BLD), _ACT_BLD)

  def attend(self, x_BLD: jax.Array) -> jax.Array:
    return self.embed_tokens.attend(x_BLD)


class LlamaForCausalLM(nn.Module):
  """The decoder and its LM head. Params: `model` (`embed_tokens`, the layers, `norm`) and
  `lm_head` (untied head only). Logits are float32 whatever the compute dtype."""
  config: LlamaConfig

  def setup(self) -> None:
    c = self.config
    self.model = LlamaModel(c)
    if not c.tie_word_embeddings:
      self.lm_head = layers.Dense((c.vocab_size,), ("embed",), ("vocab",), use_bias=False,
                                  dtype=layers.dtype_of(c.dtype),
                                  param_dtype=layers.dtype_of(c.param_dtype),
                                  kernel_init=nn.initializers.normal(c.initializer_range),
                                  out_dtype=jnp.float32)

  def __call__(self, input_ids_BL: jax.Array, segment_ids_BL: jax.Array | None = None,
               positions_BL: jax.Array | None = None, prefix_BL: jax.Array | None = None,
               deterministic: bool = True, decode: bool = False) -> jax.Array:
    """Logits [B, L, V], float32.

    Args:
      input_ids_BL: int [B, L] tokens.
      segment_ids_BL: int32 [B, L], 0 = padding, > 0 = the document within its row (no
        attention across documents); None = one document per row, no padding.
      positions_BL: int32 [B, L] positions restarting at 0 per document (RoPE's); None =
        arange(L).
      prefix_BL: bool [B, L], True on prefix tokens: query i sees key j of its document iff
        j <= i or prefix_BL[j]; None = causal.
      deterministic: disables attention dropout.
      decode: append this chunk to the "cache" collection (made by `init` on ids of the
        cache's length, then `apply(..., mutable=["cache"])`) and attend to every cached key
        at a position <= the query's; positions continue from the cache index. A chunk must
        fit in the cache's remaining slots (not checked: the write would be clamped).
    """
    c = self.config
    x_BLD = self.model(input_ids_BL, segment_ids_BL, positions_BL, prefix_BL, deterministic,
                       decode)
    if c.tie_word_embeddings:
      logits_BLV = self.model.attend(x_BLD)
    else:
      logits_BLV = layers.per_token(self.lm_head, x_BLD)
    return layers.constrain(logits_BLV.astype(jnp.float32),
                            ("act_batch", "act_length", "act_vocab"))
