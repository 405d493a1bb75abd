"""BART encoder-decoder, mirroring `transformers.BartForConditionalGeneration`.

Post-LN blocks (x = LayerNorm(x + dropout(f(x)))), biased projections everywhere, attention
scaled by head_dim**-0.5, learned absolute positions (one table per stack, `max_position_
embeddings + 2` rows indexed by position + 2, the fairseq padding offset), a `layernorm_
embedding` after the embeddings of each stack, no final layer norm, and a head tied to the
shared token embedding plus `final_logits_bias`.

Positions are the per-example positions of packed rows (`positions`/`decoder_positions`,
restarting at 0 in each segment), arange(L) when absent, so a packed example sees the same
position embeddings as when run alone.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_like.models import layers
from t5x_like.models.layers import cross_mask, decoder_mask, encoder_mask
from t5x_like.models.stack import layer_stack

# Batch features this family consumes (the objective must produce exactly these). Sources
# are variable-length, so BART rows always carry segment ids and positions.
FEATURES = ("input_ids", "decoder_input_ids", "labels")
PACKED_FEATURES = ("segment_ids", "positions", "decoder_segment_ids", "decoder_positions")

PAD_ID = 0  # data_pipelines/vocab.py: the default of BartConfig.pad_token_id
POSITION_OFFSET = 2  # BartLearnedPositionalEmbedding.offset

_ACT_BLD = ("act_batch", "act_length", "act_embed")
_ACT_BLHK = ("act_batch", "act_length", "act_heads", None)


@dataclasses.dataclass(frozen=True)
class BartConfig:
  """Shape and options; comments give the `transformers.BartConfig` names."""
  vocab_size: int
  hidden_size: int = 768  # d_model
  num_layers: int = 6  # encoder_layers
  num_decoder_layers: int = 0  # decoder_layers; 0 = same as num_layers
  num_heads: int = 12  # encoder_attention_heads = decoder_attention_heads
  intermediate_size: int = 3072  # encoder_ffn_dim = decoder_ffn_dim
  max_position_embeddings: int = 1024
  hidden_act: str = "gelu"  # activation_function; "gelu" is the exact (erf) GELU
  layer_norm_eps: float = 1e-5  # torch nn.LayerNorm's default, which HF BART uses
  dropout_rate: float = 0.1  # dropout
  attention_dropout_rate: float = 0.0  # attention_dropout
  initializer_range: float = 0.02  # init_std
  scale_embedding: bool = False  # token embeddings * sqrt(d_model)
  # HF's `padding_idx`: this row starts at zero and lookups of it pass no gradient (0 for this
  # project's tokenizers; 1 in facebook/bart-*, set by `pretrain import`).
  pad_token_id: int = PAD_ID
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"  # "none" | "full" | "dots" (layers.REMAT_POLICIES)
  scan_layers: bool = False
  attention_kernel: str = "xla"  # or "splash" (Pallas; see layers.splash_attention)

  def __post_init__(self) -> None:
    if self.hidden_size % self.num_heads:
      raise ValueError(f"BART hidden_size ({self.hidden_size}) must be divisible by "
                       f"num_heads ({self.num_heads})")
    if self.hidden_act not in layers.ACTIVATIONS:
      raise ValueError(f"BART hidden_act {self.hidden_act!r} is not one of "
                       f"{sorted(layers.ACTIVATIONS)}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def decoder_layers(self) -> int:
    return self.num_decoder_layers or self.num_layers

  @property
  def embed_scale(self) -> float:
    return math.sqrt(self.hidden_size) if self.scale_embedding else 1.0


def _token_embedding_init(std: float, pad_id: int) -> layers.Initializer:
  """normal(std) with the padding row zeroed, as HF's `_init_weights` for `padding_idx`."""
  def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    return layers.normal(std)(key, shape, dtype).at[pad_id].set(0)
  return init


class BartAttention(nn.Module):
  """Multi-head attention with biased q/k/v/out projections; q scaled by head_dim**-0.5."""
  config: BartConfig
  deterministic: bool = True
  causal: bool = False  # decoder self-attention (used by the splash kernel; XLA has the mask)

  @nn.compact
  def __call__(self, x_BQD: jax.Array, kv_BKD: jax.Array, mask: jax.Array | None,
               segments: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """Returns [B, Q, D]; mask is bool, broadcastable to [B, 1, Q, K], True = attend.

    segments: (query ids [B, Q], key ids [B, K]) instead of `mask` select the splash kernel:
    a query attends to the keys of its id (and, causal, not after it)."""
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    h, k = c.num_heads, c.head_dim
    init = layers.normal(c.initializer_range)

    def proj(name: str) -> layers.Dense:
      return layers.Dense((h, k), ("embed",), ("heads", "kv"), dtype=dtype,
                          param_dtype=pdtype, kernel_init=init, name=name)

    q_BQHK = layers.per_token(proj("q_proj"), x_BQD) * jnp.asarray(k ** -0.5, dtype)
    k_BKHK = layers.per_token(proj("k_proj"), kv_BKD)
    v_BKHK = layers.per_token(proj("v_proj"), kv_BKD)
    q_BQHK = layers.constrain(q_BQHK, _ACT_BLHK)
    k_BKHK = layers.constrain(k_BKHK, _ACT_BLHK)
    v_BKHK = layers.constrain(v_BKHK, _ACT_BLHK)
    if segments is not None:
      out_BQHK = layers.splash_attention(q_BQHK, k_BKHK, v_BKHK, *segments, causal=self.causal)
      out_BQHK = layers.constrain(out_BQHK, _ACT_BLHK)
      out_proj = layers.Dense((c.hidden_size,), ("heads", "kv"), ("embed",), dtype=dtype,
                              param_dtype=pdtype, kernel_init=init, name="out_proj")
      return layers.per_token(out_proj, out_BQHK, num_in=2)
    scores_BHQK = layers.einsum("bqhd,bkhd->bhqk", q_BQHK, k_BKHK)
    if mask is not None:
      scores_BHQK = jnp.where(mask, scores_BHQK, jnp.finfo(jnp.float32).min)
    probs_BHQK = jax.nn.softmax(scores_BHQK, axis=-1).astype(dtype)
    if c.attention_dropout_rate > 0 and not self.deterministic:
      probs_BHQK = nn.Dropout(c.attention_dropout_rate)(probs_BHQK, deterministic=False)
    out_BQHK = layers.einsum("bhqk,bkhd->bqhd", probs_BHQK, v_BKHK).astype(dtype)
    out_BQHK = layers.constrain(out_BQHK, _ACT_BLHK)
    out_proj = layers.Dense((c.hidden_size,), ("heads", "kv"), ("embed",), dtype=dtype,
                            param_dtype=pdtype, kernel_init=init, name="out_proj")
    return layers.per_token(out_proj, out_BQHK, num_in=2)


class BartLayer(nn.Module):
  """One post-LN block: self-attention, (decoder) cross-attention, fc1 -> act -> fc2."""
  config: BartConfig
  is_decoder: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BLD: jax.Array, self_mask: jax.Array | None,
               encoded_BSD: jax.Array | None, cross_mask: jax.Array | None,
               self_segments: tuple[jax.Array, jax.Array] | None = None,
               cross_segments: tuple[jax.Array, jax.Array] | None = None
               ) -> tuple[jax.Array, None]:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    init = layers.normal(c.initializer_range)
    norm = lambda name: layers.LayerNorm(c.layer_norm_eps, dtype, pdtype, name=name)
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=self.deterministic)

    h_BLD = BartAttention(c, self.deterministic, causal=self.is_decoder, name="self_attn")(
        x_BLD, x_BLD, self_mask, self_segments)
    x_BLD = layers.constrain(norm("self_attn_layer_norm")(x_BLD + drop(h_BLD)), _ACT_BLD)
    if self.is_decoder:
      h_BLD = BartAttention(c, self.deterministic, name="encoder_attn")(
          x_BLD, encoded_BSD, cross_mask, cross_segments)
      x_BLD = layers.constrain(norm("encoder_attn_layer_norm")(x_BLD + drop(h_BLD)), _ACT_BLD)
    fc1 = layers.Dense((c.intermediate_size,), ("embed",), ("mlp",), dtype=dtype,
                       param_dtype=pdtype, kernel_init=init, name="fc1")
    fc2 = layers.Dense((c.hidden_size,), ("mlp",), ("embed",), dtype=dtype,
                       param_dtype=pdtype, kernel_init=init, name="fc2")
    h_BLF = layers.ACTIVATIONS[c.hidden_act](layers.per_token(fc1, x_BLD))
    h_BLF = layers.constrain(h_BLF, ("act_batch", "act_length", "act_mlp"))
    h_BLD = layers.per_token(fc2, h_BLF)
    return layers.constrain(norm("final_layer_norm")(x_BLD + drop(h_BLD)), _ACT_BLD), None


class BartStack(nn.Module):
  """Positions, `layernorm_embedding`, dropout, then the blocks (loop `layer_{i}` or
  scanned `layers`). Takes the (scaled) token embeddings; no final norm, as HF."""
  config: BartConfig
  is_decoder: bool = False

  @nn.compact
  def __call__(self, x_BLD: jax.Array, positions_BL: jax.Array | None,
               self_mask: jax.Array | None, encoded_BSD: jax.Array | None = None,
               cross_mask: jax.Array | None = None, deterministic: bool = True,
               self_segments: tuple[jax.Array, jax.Array] | None = None,
               cross_segments: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    batch, length = x_BLD.shape[:2]
    if length > c.max_position_embeddings:
      side = "decoder" if self.is_decoder else "encoder"
      raise ValueError(f"BART {side} input length {length} exceeds max_position_embeddings "
                       f"{c.max_position_embeddings}")
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    table = layers.Embed(c.max_position_embeddings + POSITION_OFFSET, c.hidden_size,
                         ("position", "embed"), dtype, pdtype,
                         embedding_init=layers.normal(c.initializer_range), name="embed_positions")
    x_BLD = x_BLD + table(positions_BL + POSITION_OFFSET)
    x_BLD = layers.LayerNorm(c.layer_norm_eps, dtype, pdtype, name="layernorm_embedding")(x_BLD)
    x_BLD = nn.Dropout(c.dropout_rate)(x_BLD, deterministic=deterministic)
    x_BLD = layers.constrain(x_BLD, _ACT_BLD)

    num_layers = c.decoder_layers if self.is_decoder else c.num_layers
    block_kwargs = {"config": c, "is_decoder": self.is_decoder, "deterministic": deterministic}
    x_BLD, _ = layer_stack(BartLayer, num_layers, c.remat, c.scan_layers, block_kwargs, x_BLD,
                           self_mask, encoded_BSD, cross_mask, self_segments, cross_segments)
    return x_BLD


def _segment_ids(segment_ids: jax.Array | None, mask: jax.Array | None,
                 shape: tuple[int, int]) -> jax.Array:
  """Segment ids for the splash kernel: packed ids (0 = padding), or the padding mask as ids
  (1 = token, 0 = padding), or all ones."""
  if segment_ids is not None:
    return segment_ids.astype(jnp.int32)
  if mask is not None:
    return (mask > 0).astype(jnp.int32)
  return jnp.ones(shape, jnp.int32)


class BartForConditionalGeneration(nn.Module):
  """Encoder-decoder with the tied LM head. Logits are float32 whatever the compute dtype.

  Params: `shared` (token embedding [V, D], pad row initialised to 0), `encoder`, `decoder`
  (`BartStack`), `final_logits_bias` [V]. HF keeps that bias as a buffer, never trained; it
  is a param here (so it is exported and checkpointed) behind a stop_gradient, so training
  leaves it at its value (zeros) as HF does. As in torch's `padding_idx`, lookups of the
  pad id pass no gradient to its embedding row (the tied head still does).
  `encode` / `decode` run the halves: `model.apply(variables, ids, method="encode")`.
  """
  config: BartConfig

  def setup(self) -> None:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    self.shared = layers.Embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), dtype, pdtype,
                               embedding_init=_token_embedding_init(c.initializer_range,
                                                                    c.pad_token_id))
    self.encoder = BartStack(c, is_decoder=False)
    self.decoder = BartStack(c, is_decoder=True)
    self.final_logits_bias = self.param(
        "final_logits_bias", layers.zeros(("vocab",)), (c.vocab_size,), pdtype)

  def _embed_tokens(self, ids_BL: jax.Array) -> jax.Array:
    x_BLD = self.shared(ids_BL)
    pad_BL = ids_BL == self.config.pad_token_id
    x_BLD = jnp.where(pad_BL[..., None], jax.lax.stop_gradient(x_BLD), x_BLD)
    if self.config.scale_embedding:
      x_BLD = x_BLD * jnp.asarray(self.config.embed_scale, x_BLD.dtype)
    return x_BLD

  def _splash(self, q_len: int, kv_len: int, deterministic: bool, what: str) -> bool:
    """Whether this attention call uses the splash kernel (else XLA, said once, with why)."""
    c = self.config
    if c.attention_kernel != "splash":
      return False
    reason = layers.splash_unusable(q_len, kv_len,
                                    c.attention_dropout_rate > 0 and not deterministic)
    if reason is not None:
      layers.log_fallback(f"BART {what}: {reason}")
    return reason is None

  def encode(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
             segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
             deterministic: bool = True) -> jax.Array:
    """Encoder output [B, L, D] (the last layer's) for input_ids [B, L]."""
    x_BLD = self._embed_tokens(input_ids)
    length = input_ids.shape[1]
    if self._splash(length, length, deterministic, "encoder"):
      seg_BL = _segment_ids(segment_ids, attention_mask, input_ids.shape)
      return self.encoder(x_BLD, positions, None, deterministic=deterministic,
                          self_segments=(seg_BL, seg_BL))
    return self.encoder(x_BLD, positions, encoder_mask(attention_mask, segment_ids),
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
    t_len, s_len = decoder_input_ids.shape[1], encoded.shape[1]
    self_mask = decoder_mask(t_len, decoder_attention_mask, decoder_segment_ids)
    cross = cross_mask(attention_mask, segment_ids, decoder_segment_ids)
    self_segments = cross_segments = None
    if self._splash(t_len, t_len, deterministic, "decoder"):
      dec_BT = _segment_ids(decoder_segment_ids, decoder_attention_mask,
                            decoder_input_ids.shape)
      self_segments, self_mask = (dec_BT, dec_BT), None
      # Decoder tokens attend to the encoder tokens of their segment (packed rows), or to
      # every non-padding encoder token; the latter with packed encoder rows but unpacked
      # decoder rows has no segment-id form.
      if segment_ids is not None and decoder_segment_ids is None:
        layers.log_fallback("BART cross-attention: packed encoder rows with an unpacked "
                            "decoder have no segment-id form")
      elif self._splash(t_len, s_len, deterministic, "cross-attention"):
        enc_BS = _segment_ids(segment_ids, attention_mask, encoded.shape[:2])
        both_packed = segment_ids is not None and decoder_segment_ids is not None
        q_BT = dec_BT if both_packed else jnp.ones_like(dec_BT)
        cross_segments, cross = (q_BT, enc_BS), None
    y_BTD = self.decoder(self._embed_tokens(decoder_input_ids), decoder_positions, self_mask,
                         encoded, cross, deterministic=deterministic,
                         self_segments=self_segments, cross_segments=cross_segments)
    batch, length, d = y_BTD.shape
    # One token axis for the head's GEMMs too (see layers.per_token).
    logits_NV = self.shared.attend(y_BTD.reshape(batch * length, d)).astype(jnp.float32)
    logits_NV = logits_NV + jax.lax.stop_gradient(self.final_logits_bias).astype(jnp.float32)
    return layers.constrain(logits_NV.reshape(batch, length, -1),
                            ("act_batch", "act_length", "act_vocab"))

  def __call__(self, input_ids: jax.Array, decoder_input_ids: jax.Array,
               attention_mask: jax.Array | None = None,
               decoder_attention_mask: jax.Array | None = None,
               segment_ids: jax.Array | None = None, decoder_segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None, decoder_positions: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """Teacher-forced logits [B, T, V], float32.

    Args:
      input_ids: int [B, L] encoder tokens (the noised source).
      decoder_input_ids: int [B, T], the targets shifted right (start id `</s>` = 1, per
        segment, as fairseq).
      attention_mask: encoder padding mask [B, L] (1 = token); ignored with segment_ids.
      decoder_attention_mask: decoder key mask [B, T], on top of the causal mask.
      segment_ids: packed encoder rows: int [B, L], 1.. per example, 0 on padding.
      decoder_segment_ids: packed decoder rows [B, T]; a decoder token attends to its own
        segment, and (with segment_ids) to the encoder tokens of the same segment.
      positions, decoder_positions: int [B, L] / [B, T] position of each token within its
        example (restarting at 0 per segment); arange when None. Must be below
        max_position_embeddings.
      deterministic: disables dropout.
    """
    encoded_BLD = self.encode(input_ids, attention_mask, segment_ids, positions, deterministic)
    return self.decode(encoded_BLD, decoder_input_ids, attention_mask, decoder_attention_mask,
                       segment_ids, decoder_segment_ids, decoder_positions, deterministic)
