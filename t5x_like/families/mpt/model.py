"""MPT decoder with ALiBi, mirroring `transformers.MptForCausalLM` (attn_config.alibi=True).

Pre-LN blocks: x += out_proj(attention(Wqkv(LN(x)))); x += down_proj(gelu(up_proj(LN(x)))),
then a final LayerNorm and the word embeddings as the output projection. No position
embeddings, no biases anywhere (MPT's no_bias=True: its LayerNorms have a scale only), the
q/k/v projection fused into one `Wqkv` kernel as HF stores it.

ALiBi: head h adds -slope_h * |pos_i - pos_j| to the scaled score of query i and key j
(after the 1/sqrt(head_dim) scaling, as HF). HF writes it as slope_h * (j - (L - 1)) per key,
broadcast over the queries; on the keys a causal query sees, that differs from
-slope_h * (i - j) only by slope_h * (i - (L - 1)), a constant per query that the softmax
cancels. Computing it from positions keeps a packed document's bias its own, and there is no
table to outgrow: rows (and decoding caches) may be longer than any training length. Where a
key after the query is visible (a prefix-LM prefix) the distance is |i - j|, as MosaicML's
own ALiBi for prefix LMs (llm-foundry's `build_alibi_bias(full=True)`).

Decoding (`decode=True`) keeps a KV cache in the "cache" collection, sized by the input of
`init` (T5X's convention); each call appends its T tokens at the cache index.
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


@dataclasses.dataclass(frozen=True)
class MptConfig:
  """Shape and options of the decoder; names follow ours for `transformers.MptConfig`'s
  d_model / n_heads / n_layers / layer_norm_epsilon; intermediate_size = expansion_ratio *
  d_model; dropout_rate is attn_config.attn_pdrop, which HF applies to the attention
  probabilities and to both residual branches."""
  vocab_size: int
  hidden_size: int = 2048
  num_layers: int = 24
  num_heads: int = 16
  intermediate_size: int = 8192
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-5
  dropout_rate: float = 0.0
  initializer_range: float = 0.02
  alibi_bias_max: int = 8
  max_seq_len: int = 2048  # HF's max_seq_len: informational (ALiBi needs no table)
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  scan_layers: bool = False
  attention_kernel: str = "xla"  # splash cannot take the ALiBi bias: always XLA

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


def alibi_slopes(num_heads: int, alibi_bias_max: float = 8) -> np.ndarray:
  """float32 [H]: 2^(-alibi_bias_max * k / n), k = 1..n, n the power of two >= H.

  For other H, the odd k come first and then the even k, H of them (Press et al.'s
  `get_slopes` when alibi_bias_max = 8; HF's `build_mpt_alibi_tensor`).
  """
  n = 1 << (num_heads - 1).bit_length()
  slopes = 2.0 ** (-alibi_bias_max * np.arange(1, n + 1, dtype=np.float64) / n)
  if n != num_heads:
    slopes = np.concatenate([slopes[1::2], slopes[::2]])[:num_heads]
  return slopes.astype(np.float32)


def _dense(c: MptConfig, features: tuple[int, ...], in_axes: tuple[str, ...],
           out_axes: tuple[str | None, ...], name: str) -> layers.Dense:
  return layers.Dense(features, in_axes, out_axes, use_bias=False, dtype=layers.dtype_of(c.dtype),
                      param_dtype=layers.dtype_of(c.param_dtype),
                      kernel_init=nn.initializers.normal(c.initializer_range), name=name)


def _layer_norm(c: MptConfig, name: str) -> layers.LayerNorm:
  return layers.LayerNorm(c.layer_norm_eps, layers.dtype_of(c.dtype),
                          layers.dtype_of(c.param_dtype), use_bias=False, name=name)


class MptAttention(nn.Module):
  """Self-attention with the fused Wqkv [embed, 3, heads, kv] and the ALiBi bias."""
  config: MptConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x_BLD: jax.Array, keep_B1LS: jax.Array, dist_B1LS: jax.Array,
               index: jax.Array | None) -> jax.Array:
    """keep: whether query i may see key j; dist: |pos_i - pos_j| (float32); S = L, or the
    cache length when decoding, with `index` the cache slot of the first of the L tokens."""
    c = self.config
    dtype = layers.dtype_of(c.dtype)
    # The q/k/v axis stays whole: each device's heads need all three.
    qkv_BL3HK = _dense(c, (3, c.num_heads, c.head_dim), ("embed",), (None, "heads", "kv"),
                       "Wqkv")(x_BLD)
    axes = ("act_batch", "act_length", "act_heads", None)
    q_BLHK, k_BSHK, v_BSHK = (layers.constrain(qkv_BL3HK[:, :, i], axes) for i in range(3))
    if self.decode:
      k_BSHK, v_BSHK = self._cached(k_BSHK, v_BSHK, index)

    scores_BHLS = layers.einsum("bqhk,bshk->bhqs", q_BLHK, k_BSHK) * (c.head_dim ** -0.5)
    slopes_H = jnp.asarray(alibi_slopes(c.num_heads, c.alibi_bias_max))
    scores_BHLS = scores_BHLS - slopes_H[None, :, None, None] * dist_B1LS
    scores_BHLS = jnp.where(keep_B1LS, scores_BHLS, jnp.finfo(jnp.float32).min)
    probs_BHLS = jax.nn.softmax(scores_BHLS, axis=-1).astype(dtype)
    if c.dropout_rate > 0 and not self.deterministic:
      probs_BHLS = nn.Dropout(c.dropout_rate)(probs_BHLS, deterministic=False)
    out_BLHK = layers.einsum("bhqs,bshk->bqhk", probs_BHLS, v_BSHK).astype(dtype)
    out_BLHK = layers.constrain(out_BLHK, axes)
    return _dense(c, (c.hidden_size,), ("heads", "kv"), ("embed",), "out_proj")(out_BLHK)

  def _cached(self, k_BLHK: jax.Array, v_BLHK: jax.Array, index: jax.Array | None
              ) -> tuple[jax.Array, jax.Array]:
    """The cache's keys and values with this call's written at `index`. At init the cache is
    only created (sized by the init input) and the call attends over its own tokens."""
    initialized = self.has_variable("cache", "cached_key")
    key = self.variable("cache", "cached_key", jnp.zeros, k_BLHK.shape, k_BLHK.dtype)
    value = self.variable("cache", "cached_value", jnp.zeros, v_BLHK.shape, v_BLHK.dtype)
    if not initialized:
      return k_BLHK, v_BLHK
    at = (0, index, 0, 0)
    key.value = jax.lax.dynamic_update_slice(key.value, k_BLHK.astype(key.value.dtype), at)
    value.value = jax.lax.dynamic_update_slice(value.value, v_BLHK.astype(value.value.dtype),
                                               at)
    return key.value, value.value


class MptMLP(nn.Module):
  """up_proj -> GELU (exact, as HF's MptMLP) -> down_proj."""
  config: MptConfig

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    c = self.config
    h_BLF = _dense(c, (c.intermediate_size,), ("embed",), ("mlp",), "up_proj")(x_BLD)
    h_BLF = layers.ACTIVATIONS[c.hidden_act](h_BLF)
    h_BLF = layers.constrain(h_BLF, ("act_batch", "act_length", "act_mlp"))
    return _dense(c, (c.hidden_size,), ("mlp",), ("embed",), "down_proj")(h_BLF)


class MptBlock(nn.Module):
  """norm_1 -> attn -> residual; norm_2 -> ffn (up_proj, GELU, down_proj) -> residual."""
  config: MptConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x_BLD: jax.Array, keep_B1LS: jax.Array, dist_B1LS: jax.Array,
               index: jax.Array | None) -> tuple[jax.Array, None]:
    c = self.config
    # HF applies attn_pdrop to both residual branches (resid_pdrop is unused there).
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=self.deterministic)
    h_BLD = _layer_norm(c, "norm_1")(x_BLD)
    h_BLD = MptAttention(c, self.deterministic, self.decode, name="attn")(
        h_BLD, keep_B1LS, dist_B1LS, index)
    x_BLD = layers.constrain(x_BLD + drop(h_BLD), ("act_batch", "act_length", "act_embed"))

    h_BLD = MptMLP(c, name="ffn")(_layer_norm(c, "norm_2")(x_BLD))
    x_BLD = x_BLD + drop(h_BLD)
    return layers.constrain(x_BLD, ("act_batch", "act_length", "act_embed")), None


class MptBlocks(nn.Module):
  """The stack: a Python loop (`layer_{i}`) or one scanned `layers` module."""
  config: MptConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x_BLD: jax.Array, keep_B1LS: jax.Array, dist_B1LS: jax.Array,
               index: jax.Array | None) -> jax.Array:
    c = self.config
    x_BLD, _ = layer_stack(MptBlock, c.num_layers, c.remat, c.scan_layers,
                           {"config": c, "deterministic": self.deterministic,
                            "decode": self.decode}, x_BLD, keep_B1LS, dist_B1LS, index)
    return x_BLD


class MptModel(nn.Module):
  """Word embeddings, the blocks and the final LayerNorm (HF's `transformer`)."""
  config: MptConfig
  deterministic: bool = True
  decode: bool = False

  def setup(self) -> None:
    c = self.config
    self.wte = layers.Embed(c.vocab_size, c.hidden_size, ("vocab", "embed"),
                            dtype=layers.dtype_of(c.dtype),
                            param_dtype=layers.dtype_of(c.param_dtype),
                            embedding_init=nn.initializers.normal(c.initializer_range))
    self.blocks = MptBlocks(c, self.deterministic, self.decode)
    self.norm_f = _layer_norm(c, "norm_f")

  def __call__(self, input_ids_BL: jax.Array, keep_B1LS: jax.Array, dist_B1LS: jax.Array,
               index: jax.Array | None) -> jax.Array:
    x_BLD = self.blocks(self.wte(input_ids_BL), keep_B1LS, dist_B1LS, index)
    return self.norm_f(x_BLD)

  def attend(self, h_BLD: jax.Array) -> jax.Array:
    return self.wte.attend(h_BLD)


def _visibility(segment_ids_BL: jax.Array | None, key_segment_ids_BS: jax.Array | None,
                query_slots_L: jax.Array, key_slots_S: jax.Array,
                key_prefix_BS: jax.Array | None) -> jax.Array:
  """Bool [B or 1, 1, L, S]: key j is visible to query i iff it is in i's (non-padding)
  segment and j <= i or j is a prefix token."""
  keep = (key_slots_S[None, :] <= query_slots_L[:, None])[None]
  if key_prefix_BS is not None:
    keep = keep | key_prefix_BS[:, None, :]
  if segment_ids_BL is not None:
    keep = keep & ((segment_ids_BL[:, :, None] == key_segment_ids_BS[:, None, :]) &
                   (key_segment_ids_BS[:, None, :] != 0))
  return keep[:, None]


def _distance(positions_BL: jax.Array, key_positions_BS: jax.Array) -> jax.Array:
  """float32 [B, 1, L, S]: |pos_i - pos_j| (the ALiBi distance)."""
  dist = jnp.abs(positions_BL[:, :, None] - key_positions_BS[:, None, :])
  return dist.astype(jnp.float32)[:, None]


class MptForCausalLM(nn.Module):
  """The decoder + tied LM head. Logits are float32 whatever the compute dtype."""
  config: MptConfig

  @nn.compact
  def __call__(self, input_ids_BL: jax.Array, segment_ids_BL: jax.Array | None = None,
               positions_BL: jax.Array | None = None, prefix_BL: jax.Array | None = None,
               deterministic: bool = True, decode: bool = False) -> jax.Array:
    """Returns logits [B, L, V] (float32).

    Args:
      input_ids_BL: int [B, L].
      segment_ids_BL: packed rows: int [B, L], 1.. per document, 0 on padding; no attention
        across documents. None: one document per row, no padding.
      positions_BL: int [B, L] positions restarting at 0 per document (arange when None;
        when decoding, the cache index + arange).
      prefix_BL: bool [B, L], True on prefix tokens, which every token of the segment sees
        (a prefix LM); None: causal.
      deterministic: disables dropout.
      decode: append to the KV cache in the "cache" collection (see the module docstring);
        the caller keeps cache index + L within the cache length.
    """
    c = self.config
    batch, length = input_ids_BL.shape
    slots_L = jnp.arange(length, dtype=jnp.int32)
    transformer = MptModel(c, deterministic, decode, name="transformer")
    index = None
    if decode:
      initialized = self.has_variable("cache", "cache_index")
      # At init the cache is created, sized by this input; later the sizes are not used.
      cache = self._cache_variables(batch, length)
      if initialized:
        index = cache[0].value
        keep, dist = self._cached_attention_inputs(cache, segment_ids_BL, positions_BL,
                                                   prefix_BL, length)
    if index is None:
      if positions_BL is None:
        positions_BL = jnp.broadcast_to(slots_L, (batch, length))
      prefix = None if prefix_BL is None else prefix_BL.astype(bool)
      keep = _visibility(segment_ids_BL, segment_ids_BL, slots_L, slots_L, prefix)
      dist = _distance(positions_BL, positions_BL)
    h_BLD = transformer(input_ids_BL, keep, dist, index)
    logits_BLV = transformer.attend(h_BLD).astype(jnp.float32)
    return layers.constrain(logits_BLV, ("act_batch", "act_length", "act_vocab"))

  def _cache_variables(self, batch: int, size: int) -> tuple[nn.Variable, ...]:
    return (self.variable("cache", "cache_index", jnp.zeros, (), jnp.int32),
            self.variable("cache", "cached_segment_ids", jnp.zeros, (batch, size), jnp.int32),
            self.variable("cache", "cached_positions", jnp.zeros, (batch, size), jnp.int32))

  @staticmethod
  def _cached_attention_inputs(cache: tuple[nn.Variable, ...], segment_ids_BL: jax.Array | None,
                               positions_BL: jax.Array | None, prefix_BL: jax.Array | None,
                               length: int) -> tuple[jax.Array, jax.Array]:
    """Records this call's segment ids and positions at the cache index; returns (keep,
    dist) of its L queries over the S cache slots and advances the index by L. Empty slots
    hold segment 0, so they are never seen."""
    cache_index, cached_segments, cached_positions = cache
    index = cache_index.value
    batch, size = cached_segments.value.shape
    slots_L = index + jnp.arange(length, dtype=jnp.int32)
    if segment_ids_BL is None:
      segment_ids_BL = jnp.ones((batch, length), jnp.int32)
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(slots_L, (batch, length))
    write = lambda cache, x: jax.lax.dynamic_update_slice(cache, x.astype(cache.dtype),
                                                          (0, index))
    cached_segments.value = write(cached_segments.value, segment_ids_BL)
    cached_positions.value = write(cached_positions.value, positions_BL)
    key_prefix = None
    if prefix_BL is not None:
      key_prefix = write(jnp.zeros((batch, size), bool), prefix_BL.astype(bool))
    keep = _visibility(segment_ids_BL, cached_segments.value, slots_L,
                       jnp.arange(size, dtype=jnp.int32), key_prefix)
    dist = _distance(positions_BL, cached_positions.value)
    cache_index.value = index + length
    return keep, dist
