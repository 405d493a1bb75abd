"""ALBERT: factorised embeddings (width E, mapped to H) and one post-LN layer applied
`num_layers` times (cross-layer sharing: the parameter count does not depend on the depth),
with the MLM head (H -> E, act, LayerNorm, tied decoder + bias) and the sentence-order head
(pooler dense + tanh on [CLS], then a 2-way classifier), mirroring
`transformers.AlbertForPreTraining` with one hidden group and one inner layer.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_like.families.bert.model import BertConfig, BertLayer
from t5x_like.models import layers

FEATURES = ("input_ids", "attention_mask", "token_type_ids", "labels")


@dataclasses.dataclass(frozen=True)
class AlbertConfig:
  """Names follow `transformers.AlbertConfig` (num_hidden_groups = inner_group_num = 1)."""
  vocab_size: int
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  embedding_size: int = 128
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  hidden_act: str = "gelu_new"
  layer_norm_eps: float = 1e-12
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  initializer_range: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  scan_layers: bool = False  # accepted for the common options; one shared layer has no stack

  def layer(self) -> BertConfig:
    """The shared layer's config (a BERT post-LN layer of width H)."""
    return BertConfig(
        vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_layers=1,
        num_heads=self.num_heads, intermediate_size=self.intermediate_size,
        hidden_act=self.hidden_act, layer_norm_eps=self.layer_norm_eps,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        initializer_range=self.initializer_range, dtype=self.dtype, param_dtype=self.param_dtype)


class AlbertForPreTraining(nn.Module):
  """MLM logits (float32), and with `sop=True` also the sentence-order logits [B, 2]."""
  config: AlbertConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None, masked_positions: jax.Array | None = None,
               deterministic: bool = True, sop: bool = False
               ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """MLM logits [B, P, V] at `masked_positions` ([B, L, V] when None); with sop=True the
    pair (MLM logits, SOP logits [B, 2]: 0 = in order, 1 = swapped)."""
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    init = layers.normal(c.initializer_range)
    batch, length = input_ids.shape
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    kw = {"dtype": dtype, "param_dtype": pdtype, "embedding_init": init}
    words = layers.Embed(c.vocab_size, c.embedding_size, ("vocab", "embed"), **kw,
                         name="word_embeddings")
    x_BLE = (words(input_ids) +
             layers.Embed(c.max_position_embeddings, c.embedding_size, ("position", "embed"),
                          **kw, name="position_embeddings")(positions) +
             layers.Embed(c.type_vocab_size, c.embedding_size, ("type", "embed"), **kw,
                          name="token_type_embeddings")(token_type_ids))
    x_BLE = layers.LayerNorm(c.layer_norm_eps, dtype, pdtype, name="embeddings_layer_norm")(
        x_BLE)
    x_BLE = nn.Dropout(c.dropout_rate)(x_BLE, deterministic=deterministic)
    x_BLD = layers.Dense((c.hidden_size,), ("embed",), ("hidden",), dtype=dtype,
                         param_dtype=pdtype, kernel_init=init,
                         name="embedding_hidden_mapping_in")(x_BLE)
    x_BLD = layers.constrain(x_BLD, ("act_batch", "act_length", "act_embed"))
    bias = layers.attention_bias(attention_mask, segment_ids)
    block = BertLayer
    if c.remat != "none":
      block = nn.remat(BertLayer, policy=layers.REMAT_POLICIES[c.remat])
    shared = block(c.layer(), deterministic, name="shared_layer")
    for _ in range(c.num_layers):  # one set of parameters, applied num_layers times
      x_BLD, _ = shared(x_BLD, bias)

    dense = lambda features, in_axes, out_axes, name: layers.Dense(
        features, in_axes, out_axes, dtype=dtype, param_dtype=pdtype, kernel_init=init,
        name=name)
    pooled_BD = jnp.tanh(dense((c.hidden_size,), ("embed",), ("hidden",), "pooler")(
        x_BLD[:, 0]).astype(jnp.float32))
    sop_B2 = dense((2,), ("hidden",), (None,), "sop_classifier")(pooled_BD.astype(dtype))
    h_BLD = x_BLD
    if masked_positions is not None:
      select_BPL = jax.nn.one_hot(masked_positions, length, dtype=x_BLD.dtype)
      h_BLD = jnp.einsum("bpl,bld->bpd", select_BPL, x_BLD)
    h_BPE = dense((c.embedding_size,), ("hidden",), ("embed",), "mlm_dense")(h_BLD)
    h_BPE = layers.ACTIVATIONS[c.hidden_act](h_BPE)
    h_BPE = layers.LayerNorm(c.layer_norm_eps, dtype, pdtype, name="mlm_layer_norm")(h_BPE)
    logits_BPV = words.attend(h_BPE).astype(jnp.float32)
    logits_BPV = logits_BPV + self.param("mlm_bias", layers.zeros(("vocab",)), (c.vocab_size,),
                                         pdtype).astype(jnp.float32)
    logits_BPV = layers.constrain(logits_BPV, ("act_batch", "act_length", "act_vocab"))
    return (logits_BPV, sop_B2.astype(jnp.float32)) if sop else logits_BPV
