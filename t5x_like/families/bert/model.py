"""BERT / RoBERTa encoder with the MLM head, mirroring `transformers.BertForMaskedLM`.

Post-LN Transformer encoder, learned absolute positions, token-type embeddings, and an MLM
head (dense -> act -> LayerNorm -> tied decoder + bias). As in the original BERT, the head
can score only the masked positions (`masked_positions`, gathered first), so the [B, L, V]
logits tensor is never built during pretraining.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_like.models import layers
from t5x_like.models.stack import layer_stack

# Batch features this family consumes (the objective must produce exactly these).
FEATURES = ("input_ids", "attention_mask", "token_type_ids", "labels")
PACKED_FEATURES = ("segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Shape and options of the encoder; names follow `transformers.BertConfig`."""
  vocab_size: int
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-12
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  initializer_range: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  scan_layers: bool = False
  attention_kernel: str = "xla"  # or "splash" (Pallas; see layers.splash_attention)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


class BertEmbeddings(nn.Module):
  config: BertConfig
  deterministic: bool = True

  def setup(self) -> None:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    kw = {"dtype": dtype, "param_dtype": pdtype,
          "embedding_init": layers.normal(c.initializer_range)}
    self.word_embeddings = layers.Embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), **kw)
    self.position_embeddings = layers.Embed(c.max_position_embeddings, c.hidden_size,
                                            ("position", "embed"), **kw)
    self.token_type_embeddings = layers.Embed(c.type_vocab_size, c.hidden_size,
                                              ("type", "embed"), **kw)
    self.layer_norm = layers.LayerNorm(c.layer_norm_eps, dtype, pdtype)
    self.dropout = nn.Dropout(c.dropout_rate)

  def __call__(self, input_ids_BL: jax.Array, token_type_ids_BL: jax.Array,
               positions_BL: jax.Array) -> jax.Array:
    x_BLD = (self.word_embeddings(input_ids_BL) + self.position_embeddings(positions_BL) +
             self.token_type_embeddings(token_type_ids_BL))
    x_BLD = self.layer_norm(x_BLD)
    x_BLD = self.dropout(x_BLD, deterministic=self.deterministic)
    return layers.constrain(x_BLD, ("act_batch", "act_length", "act_embed"))

  def attend(self, h: jax.Array) -> jax.Array:
    return self.word_embeddings.attend(h)


class BertLayer(nn.Module):
  """One post-LN block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""
  config: BertConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BLD: jax.Array, bias: jax.Array | None,
               segment_ids_BL: jax.Array | None = None) -> tuple[jax.Array, None]:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    init = layers.normal(c.initializer_range)
    dense = lambda features, in_axes, out_axes, name: layers.Dense(
        features, in_axes, out_axes, dtype=dtype, param_dtype=pdtype, kernel_init=init,
        name=name)
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=self.deterministic)

    attn_BLHK = layers.MultiHeadDotProductAttention(
        c.num_heads, c.head_dim, c.attention_dropout_rate, self.deterministic, dtype, pdtype,
        init, name="attention")(x_BLD, bias, segment_ids_BL)
    h_BLD = dense((c.hidden_size,), ("heads", "kv"), ("embed",), "attention_output")(attn_BLHK)
    x_BLD = layers.LayerNorm(c.layer_norm_eps, dtype, pdtype,
                             name="attention_layer_norm")(x_BLD + drop(h_BLD))
    x_BLD = layers.constrain(x_BLD, ("act_batch", "act_length", "act_embed"))

    h_BLF = dense((c.intermediate_size,), ("embed",), ("mlp",), "intermediate")(x_BLD)
    h_BLF = layers.ACTIVATIONS[c.hidden_act](h_BLF)
    h_BLF = layers.constrain(h_BLF, ("act_batch", "act_length", "act_mlp"))
    h_BLD = dense((c.hidden_size,), ("mlp",), ("embed",), "output")(h_BLF)
    x_BLD = layers.LayerNorm(c.layer_norm_eps, dtype, pdtype,
                             name="output_layer_norm")(x_BLD + drop(h_BLD))
    return layers.constrain(x_BLD, ("act_batch", "act_length", "act_embed")), None


class BertEncoder(nn.Module):
  """A stack of `BertLayer`s: a Python loop (`layer_{i}`) or one scanned `layers` module."""
  config: BertConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BLD: jax.Array, bias: jax.Array | None,
               segment_ids_BL: jax.Array | None = None) -> jax.Array:
    c = self.config
    x_BLD, _ = layer_stack(BertLayer, c.num_layers, c.remat, c.scan_layers,
                           {"config": c, "deterministic": self.deterministic}, x_BLD, bias,
                           segment_ids_BL)
    return x_BLD


class BertMLMHead(nn.Module):
  """transform (dense -> act -> LN), then logits against the tied word embeddings + bias."""
  config: BertConfig

  @nn.compact
  def __call__(self, h_BPD: jax.Array, embeddings: BertEmbeddings) -> jax.Array:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    h_BPD = layers.Dense((c.hidden_size,), ("embed",), ("hidden",), dtype=dtype,
                         param_dtype=pdtype,
                         kernel_init=layers.normal(c.initializer_range),
                         name="transform")(h_BPD)
    h_BPD = layers.ACTIVATIONS[c.hidden_act](h_BPD)
    h_BPD = layers.LayerNorm(c.layer_norm_eps, dtype, pdtype, name="layer_norm")(h_BPD)
    logits_BPV = embeddings.attend(h_BPD).astype(jnp.float32)
    bias = self.param("bias", layers.zeros(("vocab",)), (c.vocab_size,), pdtype)
    logits_BPV = logits_BPV + bias.astype(jnp.float32)
    return layers.constrain(logits_BPV, ("act_batch", "act_length", "act_vocab"))


def _attention_inputs(c: BertConfig, attention_mask: jax.Array | None,
                      segment_ids: jax.Array | None, batch: int, length: int,
                      deterministic: bool) -> tuple[jax.Array | None, jax.Array | None]:
  """(additive bias, None) for XLA attention, or (None, segment ids) for the splash kernel:
  packed rows' segment ids, or the padding mask as ids (1 = token, 0 = padding), so a token
  attends to exactly the tokens it does on the XLA path."""
  if c.attention_kernel == "splash":
    reason = layers.splash_unusable(length, length, c.attention_dropout_rate > 0 and
                                    not deterministic)
    if reason is None and attention_mask is not None and attention_mask.ndim == 3:
      reason = "a per-query [B, L, L] attention mask is not a segment mask"
    if reason is None:
      if segment_ids is not None:
        return None, segment_ids
      if attention_mask is not None:
        return None, (attention_mask > 0).astype(jnp.int32)
      return None, jnp.ones((batch, length), jnp.int32)
    layers.log_fallback(f"BERT: {reason}")
  return layers.attention_bias(attention_mask, segment_ids), None


class BertForMaskedLM(nn.Module):
  """Encoder + MLM head. Logits are float32 whatever the compute dtype."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None, masked_positions: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """Returns logits [B, P, V] at `masked_positions` [B, P], or [B, L, V] when None.

    Args:
      input_ids: int [B, L].
      attention_mask: 1 for real tokens, 0 for padding, [B, L]; or per query [B, L, L]
        (1: query i may attend key j; UniLM's masks); ignored if segment_ids given.
      token_type_ids: int [B, L] (zeros when None).
      segment_ids: packed rows: int [B, L], 1.. per example, 0 on padding.
      positions: int [B, L] position ids (arange when None; restart per packed example).
      masked_positions: int [B, P] positions whose logits are wanted.
      deterministic: disables dropout.
    """
    c = self.config
    batch, length = input_ids.shape
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    embeddings = BertEmbeddings(c, deterministic, name="embeddings")
    x_BLD = embeddings(input_ids, token_type_ids, positions)
    x_BLD = BertEncoder(c, deterministic, name="encoder")(
        x_BLD, *_attention_inputs(c, attention_mask, segment_ids, batch, length, deterministic))
    if masked_positions is not None:
      # A one-hot matmul rather than take_along_axis: it partitions cleanly when the batch
      # and features are sharded (XLA's SPMD gather transpose gave wrong gradients on a
      # data x fsdp x tensor mesh) and is MXU-friendly on TPU; its cost is P/D of one FFN.
      select_BPL = jax.nn.one_hot(masked_positions, length, dtype=x_BLD.dtype)
      select_BPL = layers.constrain(select_BPL, ("act_batch", "act_length", None))
      x_BLD = jnp.einsum("bpl,bld->bpd", select_BPL, x_BLD)
      x_BLD = layers.constrain(x_BLD, ("act_batch", "act_length", "act_embed"))
    return BertMLMHead(c, name="mlm_head")(x_BLD, embeddings)
