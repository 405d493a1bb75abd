"""T5 v1.1 encoder-decoder, mirroring `transformers.T5ForConditionalGeneration`.

Pre-norm blocks with RMSNorm (T5LayerNorm), unscaled dot-product attention plus a learned
relative position bias (one table per stack, shared by all its self-attention layers),
gated-GELU feed-forward, no biases anywhere, a shared token embedding and an untied LM head.

Relative positions are `key index - query index` within the row. For packed rows this
equals the distance between positions inside one example (examples are contiguous), and
pairs from different examples are masked, so the per-example `positions` are not needed;
using the row index keeps the bucket table a compile-time constant shared by the batch.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.models import layers
from t5x_like.models.layers import cross_mask, decoder_mask, encoder_mask
from t5x_like.models.stack import layer_stack

# Batch features this family consumes (the objective must produce exactly these).
FEATURES = ("input_ids", "decoder_input_ids", "labels")
PACKED_FEATURES = ("segment_ids", "positions", "decoder_segment_ids", "decoder_positions")

_ACT_BLD = ("act_batch", "act_length", "act_embed")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shape and options; comments give the `transformers.T5Config` names."""
  vocab_size: int
  hidden_size: int = 768  # d_model
  num_layers: int = 12  # encoder layers
  num_decoder_layers: int = 0  # 0 = same as num_layers
  num_heads: int = 12
  head_dim: int = 64  # d_kv; 0 = hidden_size // num_heads
  intermediate_size: int = 2048  # d_ff
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  hidden_act: str = "gelu_new"  # gated FFN: act(x @ wi_0) * (x @ wi_1); HF "gated-gelu"
  layer_norm_eps: float = 1e-6
  dropout_rate: float = 0.1
  initializer_factor: float = 1.0
  # v1.1 has an untied head; a tied one scales the decoder output by d_model**-0.5, as HF.
  tie_word_embeddings: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"  # "none" | "full" | "dots" (layers.REMAT_POLICIES)
  scan_layers: bool = False

  @property
  def d_kv(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  @property
  def decoder_layers(self) -> int:
    return self.num_decoder_layers or self.num_layers


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> np.ndarray:
  """HF/Mesh-TF `_relative_position_bucket` in NumPy (float32 logs, as torch computes them).

  Args:
    relative_position: int array, memory (key) position - query position.
    bidirectional: the encoder; the decoder maps all future offsets to bucket 0.
    num_buckets: buckets in the table (half per direction when bidirectional).
    max_distance: offsets at or beyond this share the last bucket.

  Returns:
    int32 array of bucket ids in [0, num_buckets), same shape.
  """
  relative_position = np.asarray(relative_position, np.int64)
  buckets = np.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(np.int64) * num_buckets
    relative_position = np.abs(relative_position)
  else:
    relative_position = -np.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = relative_position < max_exact
  with np.errstate(divide="ignore"):  # log(0) only where is_small picks the exact bucket
    scaled = np.log(relative_position.astype(np.float32) / np.float32(max_exact))
  scaled = scaled / np.float32(math.log(max_distance / max_exact))
  scaled = scaled * np.float32(num_buckets - max_exact)
  if_large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
  if_large = np.minimum(if_large, num_buckets - 1)
  return (buckets + np.where(is_small, relative_position, if_large)).astype(np.int32)


class RMSNorm(nn.Module):
  """T5LayerNorm: x / rms(x) * scale, no mean, no bias; statistics in float32."""
  epsilon: float = 1e-6
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", layers.ones(("embed",)), (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
    return y.astype(self.dtype)


def _fan_in_normal(factor: float, fan_in: int) -> layers.Initializer:
  """N(0, (factor / sqrt(fan_in))^2), HF T5's `_init_weights` for a weight of `fan_in` inputs."""
  return layers.normal(factor * fan_in ** -0.5)


@jax.custom_vjp
def _add_position_bias(scores_BHQK: jax.Array, bias_HQK: jax.Array) -> jax.Array:
  return scores_BHQK + bias_HQK[None]


def _add_position_bias_fwd(scores_BHQK, bias_HQK):
  return _add_position_bias(scores_BHQK, bias_HQK), None


def _add_position_bias_bwd(_, g_BHQK):
  # The bias gradient sums g over the batch. Written as a contraction with ones it runs as a
  # GEMV; XLA:CPU's reduce over the leading axis was over 10x slower (the single costliest
  # op of a CPU train step).
  ones_B = jnp.ones(g_BHQK.shape[:1], g_BHQK.dtype)
  return g_BHQK, jnp.einsum("b,bhqk->hqk", ones_B, g_BHQK)


_add_position_bias.defvjp(_add_position_bias_fwd, _add_position_bias_bwd)


class T5Attention(nn.Module):
  """Unscaled multi-head attention (T5 folds 1/sqrt(d) into the init of q)."""
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BQD: jax.Array, kv_BKD: jax.Array, mask: jax.Array | None,
               position_bias_HQK: jax.Array | None) -> jax.Array:
    """Returns [B, Q, D]; mask is bool, broadcastable to [B, 1, Q, K], True = attend."""
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    d, h, k, f = c.hidden_size, c.num_heads, c.d_kv, c.initializer_factor

    def proj(name: str, fan_in: int) -> layers.Dense:
      return layers.Dense((h, k), ("embed",), ("heads", "kv"), use_bias=False, dtype=dtype,
                          param_dtype=pdtype, kernel_init=_fan_in_normal(f, fan_in), name=name)

    # q's fan-in counts d_kv too: the 1/sqrt(d_kv) score scale folded into its init.
    q_BQHK = layers.per_token(proj("q", d * k), x_BQD)
    k_BKHK = layers.per_token(proj("k", d), kv_BKD)
    v_BKHK = layers.per_token(proj("v", d), kv_BKD)
    q_BQHK = layers.constrain(q_BQHK, ("act_batch", "act_length", "act_heads", None))
    k_BKHK = layers.constrain(k_BKHK, ("act_batch", "act_length", "act_heads", None))
    v_BKHK = layers.constrain(v_BKHK, ("act_batch", "act_length", "act_heads", None))
    scores_BHQK = layers.einsum("bqhd,bkhd->bhqk", q_BQHK, k_BKHK)
    if position_bias_HQK is not None:
      scores_BHQK = _add_position_bias(scores_BHQK, position_bias_HQK)
    if mask is not None:
      scores_BHQK = jnp.where(mask, scores_BHQK, jnp.finfo(jnp.float32).min)
    probs_BHQK = jax.nn.softmax(scores_BHQK, axis=-1).astype(dtype)
    if c.dropout_rate > 0 and not self.deterministic:
      probs_BHQK = nn.Dropout(c.dropout_rate)(probs_BHQK, deterministic=False)
    out_BQHK = layers.einsum("bhqk,bkhd->bqhd", probs_BHQK, v_BKHK).astype(dtype)
    out_BQHK = layers.constrain(out_BQHK, ("act_batch", "act_length", "act_heads", None))
    o = layers.Dense((d,), ("heads", "kv"), ("embed",), use_bias=False, dtype=dtype,
                     param_dtype=pdtype, kernel_init=_fan_in_normal(f, h * k), name="o")
    return layers.per_token(o, out_BQHK, num_in=2)


class T5DenseGatedActDense(nn.Module):
  """wo(dropout(act(wi_0 x) * wi_1 x))."""
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    f = c.initializer_factor

    def dense(features, in_axis, out_axis, fan_in, name):
      return layers.Dense((features,), (in_axis,), (out_axis,), use_bias=False, dtype=dtype,
                          param_dtype=pdtype, kernel_init=_fan_in_normal(f, fan_in), name=name)

    gate_BLF = layers.per_token(dense(c.intermediate_size, "embed", "mlp", c.hidden_size,
                                      "wi_0"), x_BLD)
    linear_BLF = layers.per_token(dense(c.intermediate_size, "embed", "mlp", c.hidden_size,
                                        "wi_1"), x_BLD)
    h_BLF = layers.ACTIVATIONS[c.hidden_act](gate_BLF) * linear_BLF
    h_BLF = layers.constrain(h_BLF, ("act_batch", "act_length", "act_mlp"))
    h_BLF = nn.Dropout(c.dropout_rate)(h_BLF, deterministic=self.deterministic)
    return layers.per_token(dense(c.hidden_size, "mlp", "embed", c.intermediate_size, "wo"),
                            h_BLF)


class T5Block(nn.Module):
  """Pre-norm self-attention, (decoder) cross-attention, gated FFN; each x + dropout(f(x))."""
  config: T5Config
  is_decoder: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BLD: jax.Array, position_bias_HLL: jax.Array, self_mask: jax.Array | None,
               encoded_BSD: jax.Array | None, cross_mask: jax.Array | None
               ) -> tuple[jax.Array, None]:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    norm = lambda name: RMSNorm(c.layer_norm_eps, dtype, pdtype, name=name)
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=self.deterministic)

    h_BLD = norm("self_attention_layer_norm")(x_BLD)
    h_BLD = T5Attention(c, self.deterministic, name="SelfAttention")(
        h_BLD, h_BLD, self_mask, position_bias_HLL)
    x_BLD = layers.constrain(x_BLD + drop(h_BLD), _ACT_BLD)
    if self.is_decoder:
      h_BLD = norm("cross_attention_layer_norm")(x_BLD)
      h_BLD = T5Attention(c, self.deterministic, name="EncDecAttention")(
          h_BLD, encoded_BSD, cross_mask, None)
      x_BLD = layers.constrain(x_BLD + drop(h_BLD), _ACT_BLD)
    h_BLD = norm("mlp_layer_norm")(x_BLD)
    h_BLD = T5DenseGatedActDense(c, self.deterministic, name="DenseReluDense")(h_BLD)
    return layers.constrain(x_BLD + drop(h_BLD), _ACT_BLD), None


class T5Stack(nn.Module):
  """Embedding dropout, the blocks (loop `layer_{i}` or scanned `layers`), final norm.

  Holds the stack's `relative_attention_bias` table [buckets, heads] (HF keeps it in block
  0 and passes the computed bias on), so the bias is gathered once per stack.
  """
  config: T5Config
  is_decoder: bool = False

  @nn.compact
  def __call__(self, x_BLD: jax.Array, self_mask: jax.Array | None,
               encoded_BSD: jax.Array | None = None, cross_mask: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    table = self.param("relative_attention_bias",
                       layers.logical(_fan_in_normal(c.initializer_factor, c.hidden_size),
                                      ("relpos_buckets", "heads")),
                       (c.relative_attention_num_buckets, c.num_heads), pdtype)
    length = x_BLD.shape[1]
    # Static shapes: the bucket of every (query, key) pair is a compile-time constant.
    offsets = np.arange(length)[None, :] - np.arange(length)[:, None]
    buckets_LL = relative_position_bucket(offsets, not self.is_decoder,
                                          c.relative_attention_num_buckets,
                                          c.relative_attention_max_distance)
    position_bias_HLL = jnp.take(table.astype(jnp.float32).T, buckets_LL, axis=1)

    x_BLD = nn.Dropout(c.dropout_rate)(x_BLD, deterministic=deterministic)
    num_layers = c.decoder_layers if self.is_decoder else c.num_layers
    block_kwargs = {"config": c, "is_decoder": self.is_decoder, "deterministic": deterministic}
    x_BLD, _ = layer_stack(T5Block, num_layers, c.remat, c.scan_layers, block_kwargs, x_BLD,
                           position_bias_HLL, self_mask, encoded_BSD, cross_mask)
    x_BLD = RMSNorm(c.layer_norm_eps, dtype, pdtype, name="final_layer_norm")(x_BLD)
    x_BLD = nn.Dropout(c.dropout_rate)(x_BLD, deterministic=deterministic)
    return layers.constrain(x_BLD, _ACT_BLD)


class T5ForConditionalGeneration(nn.Module):
  """Encoder-decoder with an LM head. Logits are float32 whatever the compute dtype.

  Params: `shared` (token embedding), `encoder`, `decoder` (`T5Stack`), `lm_head` (untied
  head only). `encode` / `decode` run the halves, e.g. for generation:
  `model.apply(variables, ids, method="encode")`.
  """
  config: T5Config

  def setup(self) -> None:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    self.shared = layers.Embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), dtype, pdtype,
                               embedding_init=layers.normal(c.initializer_factor))
    self.encoder = T5Stack(c, is_decoder=False)
    self.decoder = T5Stack(c, is_decoder=True)
    if not c.tie_word_embeddings:
      self.lm_head = layers.Dense((c.vocab_size,), ("embed",), ("vocab",), use_bias=False,
                                  dtype=dtype, param_dtype=pdtype,
                                  kernel_init=layers.normal(c.initializer_factor),
                                  out_dtype=jnp.float32)

  def encode(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
             segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
             deterministic: bool = True) -> jax.Array:
    """Encoder output [B, L, D] (after the final norm) for input_ids [B, L].

    `positions` is accepted for a uniform batch interface and unused (module docstring).
    """
    del positions
    x_BLD = self.shared(input_ids)
    return self.encoder(x_BLD, encoder_mask(attention_mask, segment_ids),
                        deterministic=deterministic)

  def decode(self, encoded: jax.Array, decoder_input_ids: jax.Array,
             attention_mask: jax.Array | None = None,
             decoder_attention_mask: jax.Array | None = None,
             segment_ids: jax.Array | None = None, decoder_segment_ids: jax.Array | None = None,
             decoder_positions: jax.Array | None = None, deterministic: bool = True
             ) -> jax.Array:
    """Logits [B, T, V] (float32) for decoder_input_ids [B, T] given `encode`'s [B, L, D].

    attention_mask / segment_ids describe the encoder side (see `__call__`).
    """
    del decoder_positions
    c = self.config
    x_BTD = self.shared(decoder_input_ids)
    self_mask = decoder_mask(decoder_input_ids.shape[1], decoder_attention_mask,
                             decoder_segment_ids)
    y_BTD = self.decoder(x_BTD, self_mask, encoded,
                         cross_mask(attention_mask, segment_ids, decoder_segment_ids),
                         deterministic=deterministic)
    if c.tie_word_embeddings:
      logits_BTV = self.shared.attend(y_BTD * (c.hidden_size ** -0.5))
    else:
      logits_BTV = layers.per_token(self.lm_head, y_BTD)
    return layers.constrain(logits_BTV.astype(jnp.float32),
                            ("act_batch", "act_length", "act_vocab"))

  def __call__(self, input_ids: jax.Array, decoder_input_ids: jax.Array,
               attention_mask: jax.Array | None = None,
               decoder_attention_mask: jax.Array | None = None,
               segment_ids: jax.Array | None = None, decoder_segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None, decoder_positions: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """Teacher-forced logits [B, T, V], float32.

    Args:
      input_ids: int [B, L] encoder tokens.
      decoder_input_ids: int [B, T], the targets shifted right (start id 0, per segment).
      attention_mask: encoder padding mask [B, L] (1 = token); ignored with segment_ids.
      decoder_attention_mask: decoder key mask [B, T], on top of the causal mask.
      segment_ids: packed encoder rows: int [B, L], 1.. per example, 0 on padding.
      decoder_segment_ids: packed decoder rows [B, T]; a decoder token attends to its own
        segment, and (with segment_ids) to the encoder tokens of the same segment.
      positions, decoder_positions: accepted, unused (relative positions, module docstring).
      deterministic: disables dropout.
    """
    encoded_BLD = self.encode(input_ids, attention_mask, segment_ids, positions, deterministic)
    return self.decode(encoded_BLD, decoder_input_ids, attention_mask, decoder_attention_mask,
                       segment_ids, decoder_segment_ids, decoder_positions, deterministic)
