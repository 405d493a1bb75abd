"""ELECTRA: a small MLM generator and a replaced-token-detection discriminator over one shared
embedding table, mirroring `transformers.ElectraForMaskedLM` (generator) and
`transformers.ElectraForPreTraining` (discriminator).

Both towers read the same embeddings (word, position and token-type tables of width E, then
LayerNorm), as the original shares them; each projects E to its own width
(`embeddings_project`, only when they differ, as HF) and runs its own post-LN BERT encoder.
The generator's head is dense -> GELU -> LayerNorm (width E) -> logits against the tied word
embeddings + bias; the discriminator's is dense -> act -> dense to one logit per token.

One module holds both; `tower` picks which runs ("generator", "discriminator", or "both" for
initialisation), so the two forward passes of a training step share one param tree.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_like.families.bert.model import BertConfig, BertEncoder
from t5x_like.models import layers

FEATURES = ("input_ids", "attention_mask", "token_type_ids", "labels")
TOWERS = ("generator", "discriminator", "both")


@dataclasses.dataclass(frozen=True)
class ElectraConfig:
  """Shapes and options of both towers; names follow `transformers.ElectraConfig`, the
  discriminator's sizes unprefixed."""
  vocab_size: int
  hidden_size: int = 256
  num_layers: int = 12
  num_heads: int = 4
  intermediate_size: int = 1024
  embedding_size: int = 128
  generator_hidden_size: int = 64
  generator_num_heads: int = 1
  generator_intermediate_size: int = 256
  generator_num_layers: int = 0  # 0 = num_layers
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

  def tower(self, name: str) -> BertConfig:
    """The BERT encoder config of the generator or the discriminator."""
    gen = name == "generator"
    return BertConfig(
        vocab_size=self.vocab_size,
        hidden_size=self.generator_hidden_size if gen else self.hidden_size,
        num_layers=(self.generator_num_layers or self.num_layers) if gen else self.num_layers,
        num_heads=self.generator_num_heads if gen else self.num_heads,
        intermediate_size=self.generator_intermediate_size if gen else self.intermediate_size,
        max_position_embeddings=self.max_position_embeddings,
        type_vocab_size=self.type_vocab_size, hidden_act=self.hidden_act,
        layer_norm_eps=self.layer_norm_eps, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        initializer_range=self.initializer_range, dtype=self.dtype,
        param_dtype=self.param_dtype, remat=self.remat, scan_layers=self.scan_layers)


class ElectraEmbeddings(nn.Module):
  """word + position + token-type tables of width E, LayerNorm, dropout (shared by both)."""
  config: ElectraConfig

  def setup(self) -> None:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    kw = {"dtype": dtype, "param_dtype": pdtype,
          "embedding_init": layers.normal(c.initializer_range)}
    self.word_embeddings = layers.Embed(c.vocab_size, c.embedding_size, ("vocab", "embed"), **kw)
    self.position_embeddings = layers.Embed(c.max_position_embeddings, c.embedding_size,
                                            ("position", "embed"), **kw)
    self.token_type_embeddings = layers.Embed(c.type_vocab_size, c.embedding_size,
                                              ("type", "embed"), **kw)
    self.layer_norm = layers.LayerNorm(c.layer_norm_eps, dtype, pdtype)
    self.dropout = nn.Dropout(c.dropout_rate)

  def __call__(self, input_ids_BL: jax.Array, token_type_ids_BL: jax.Array,
               positions_BL: jax.Array, deterministic: bool) -> jax.Array:
    x_BLE = (self.word_embeddings(input_ids_BL) + self.position_embeddings(positions_BL) +
             self.token_type_embeddings(token_type_ids_BL))
    x_BLE = self.dropout(self.layer_norm(x_BLE), deterministic=deterministic)
    return layers.constrain(x_BLE, ("act_batch", "act_length", "act_embed"))

  def attend(self, h: jax.Array) -> jax.Array:
    return self.word_embeddings.attend(h)


class ElectraTower(nn.Module):
  """`embeddings_project` (E -> H, when they differ) and a BERT encoder: HF's ElectraModel
  less its embeddings."""
  config: BertConfig
  embedding_size: int
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BLE: jax.Array, bias: jax.Array | None) -> jax.Array:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    x_BLD = x_BLE
    if self.embedding_size != c.hidden_size:
      x_BLD = layers.Dense((c.hidden_size,), ("embed",), ("hidden",), dtype=dtype,
                           param_dtype=pdtype, kernel_init=layers.normal(c.initializer_range),
                           name="embeddings_project")(x_BLE)
    x_BLD = layers.constrain(x_BLD, ("act_batch", "act_length", "act_embed"))
    return BertEncoder(c, self.deterministic, name="encoder")(x_BLD, bias)


class GeneratorHead(nn.Module):
  """dense (H_gen -> E) -> GELU (erf, fixed in HF) -> LayerNorm -> tied logits + bias."""
  config: ElectraConfig

  @nn.compact
  def __call__(self, h_BPD: jax.Array, embeddings: ElectraEmbeddings) -> jax.Array:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    h_BPE = layers.Dense((c.embedding_size,), ("hidden",), ("embed",), dtype=dtype,
                         param_dtype=pdtype, kernel_init=layers.normal(c.initializer_range),
                         name="dense")(h_BPD)
    h_BPE = layers.ACTIVATIONS["gelu"](h_BPE)
    h_BPE = layers.LayerNorm(c.layer_norm_eps, dtype, pdtype, name="layer_norm")(h_BPE)
    logits_BPV = embeddings.attend(h_BPE).astype(jnp.float32)
    bias = self.param("bias", layers.zeros(("vocab",)), (c.vocab_size,), pdtype)
    logits_BPV = logits_BPV + bias.astype(jnp.float32)
    return layers.constrain(logits_BPV, ("act_batch", "act_length", "act_vocab"))


class DiscriminatorHead(nn.Module):
  """dense (H -> H) -> act -> dense_prediction (H -> 1): one float32 logit per token."""
  config: ElectraConfig

  @nn.compact
  def __call__(self, h_BLD: jax.Array) -> jax.Array:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    init = layers.normal(c.initializer_range)
    h_BLD = layers.Dense((c.hidden_size,), ("embed",), ("hidden",), dtype=dtype,
                         param_dtype=pdtype, kernel_init=init, name="dense")(h_BLD)
    h_BLD = layers.ACTIVATIONS[c.hidden_act](h_BLD)
    logit_BL1 = layers.Dense((1,), ("hidden",), (None,), dtype=dtype, param_dtype=pdtype,
                             kernel_init=init, out_dtype=jnp.float32,
                             name="dense_prediction")(h_BLD)
    return logit_BL1[..., 0]


class ElectraForPretraining(nn.Module):
  """Generator and discriminator over shared embeddings. Logits are float32."""
  config: ElectraConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None, positions: jax.Array | None = None,
               masked_positions: jax.Array | None = None, tower: str = "discriminator",
               deterministic: bool = True) -> jax.Array | tuple[jax.Array, jax.Array]:
    """The generator's MLM logits [B, P, V] at `masked_positions` [B, P] ([B, L, V] when
    None), the discriminator's replaced-token logits [B, L], or with tower="both" the pair.

    Args:
      input_ids: int [B, L] (the generator reads the masked row, the discriminator the row
        with the generator's samples in place).
      attention_mask: 1 for real tokens, 0 for padding, [B, L].
      token_type_ids: int [B, L] (zeros when None).
      positions: int [B, L] position ids (arange when None).
      masked_positions: int [B, P]: the positions the generator scores.
      tower: "generator", "discriminator" or "both".
      deterministic: disables dropout.
    """
    if tower not in TOWERS:
      raise ValueError(f"tower must be one of {TOWERS}, got {tower!r}")
    c = self.config
    batch, length = input_ids.shape
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    embeddings = ElectraEmbeddings(c, name="embeddings")
    x_BLE = embeddings(input_ids, token_type_ids, positions, deterministic)
    bias = layers.attention_bias(attention_mask, None)
    out = []
    if tower in ("generator", "both"):
      h_BLD = ElectraTower(c.tower("generator"), c.embedding_size, deterministic,
                           name="generator")(x_BLE, bias)
      if masked_positions is not None:
        # A one-hot product, as BERT's gather-first head (it partitions cleanly).
        select_BPL = jax.nn.one_hot(masked_positions, length, dtype=h_BLD.dtype)
        select_BPL = layers.constrain(select_BPL, ("act_batch", "act_length", None))
        h_BLD = jnp.einsum("bpl,bld->bpd", select_BPL, h_BLD)
      out.append(GeneratorHead(c, name="generator_head")(h_BLD, embeddings))
    if tower in ("discriminator", "both"):
      h_BLD = ElectraTower(c.tower("discriminator"), c.embedding_size, deterministic,
                           name="discriminator")(x_BLE, bias)
      out.append(DiscriminatorHead(c, name="discriminator_head")(h_BLD))
    return tuple(out) if tower == "both" else out[0]
