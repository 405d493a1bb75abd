"""XLNet two-stream permutation LM, mirroring `transformers.XLNetLMHeadModel`.

Post-LN blocks; relative attention with score
`((q+r_w_bias)·k + rel_shift((q+r_r_bias)·k_r) + (q+r_s_bias)·seg_embed[s_ij]) / sqrt(Dh)`
over sinusoidal relative positions (attn_type "bi": distances klen .. -qlen+1); a segment
term that only asks whether two tokens' token_type_ids differ; a head tied to the word
embedding plus a bias (`lm_loss`).

Two streams share every weight. The content stream h starts from the word embeddings and
attends under `perm_mask` with its diagonal cleared (a token sees itself); the query stream g
starts from the learned `mask_emb` and attends under `perm_mask` (a target does not see
itself). As in HF the query stream has one row per `target_mapping` row (P rows); HF scatters
those P queries into L rows, runs the attention core on L rows and gathers them back. Here
the core runs on the P rows directly, with each row's mask row, relative positions and
segment row gathered at its target position: the same numbers for one-hot rows, and zero
attention output (as HF) for all-zero padding rows. Rows of `target_mapping` must be one-hot
or zero.

Memory (Transformer-XL recurrence, HF `mems` / `cache_mem`): `mems` [layers, B, M, D] holds,
per layer, the content-stream inputs of earlier segments. Keys and values run over
`[memory; h]`; every query may see all of the memory (mask columns 0, segment id 0 as HF's
`mem_pad`); relative distances run from klen = M + L down to -L + 1. With `return_mems` the
model also returns the new memory: per layer the last `mem_len` rows of `[memory; layer
input]` (only the first `reuse_len` tokens of the input when reuse_len > 0), under
stop_gradient, so no gradient flows into an earlier segment.

bi_data (XLNet's bidirectional data): the first half of the batch holds forward text and the
second half reversed text; the forward half uses distances klen .. -L + 1 and the reversed
half their negatives (HF `relative_positional_encoding`); the batch must be even.

Activations are [B, L, D] / [B, L, H, Dh] (not HF's length-major layout) and projections
run on a flattened token axis (see layers.per_token). Not supported: attn_type "uni", tied
r-biases (HF's PyTorch model has per-layer biases whatever `untie_r` says).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.models import layers
from t5x_like.models.layers import REMAT_POLICIES
from t5x_like.models.stack import layer_stack

FEATURES = ("input_ids", "token_type_ids", "perm_mask", "target_mapping", "labels")

_ACT_BLD = ("act_batch", "act_length", "act_embed")
_ACT_BLHK = ("act_batch", "act_length", "act_heads", None)
_MASKED = 1e30  # HF subtracts 1e30 * mask from the scores (float32)


@dataclasses.dataclass(frozen=True)
class XLNetConfig:
  """Shape and options; comments give the `transformers.XLNetConfig` names."""
  vocab_size: int
  hidden_size: int = 768  # d_model
  num_layers: int = 12  # n_layer
  num_heads: int = 12  # n_head
  intermediate_size: int = 3072  # d_inner
  hidden_act: str = "gelu"  # ff_activation; "gelu" is the exact (erf) GELU
  layer_norm_eps: float = 1e-12
  dropout_rate: float = 0.1  # dropout (embeddings, positions, attention probs, outputs)
  initializer_range: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"  # "none" | "full" | "dots" (layers.REMAT_POLICIES)
  scan_layers: bool = False
  mem_len: int = 0  # rows of memory returned per layer (0: all of them, HF's cutoff 0)
  reuse_len: int = 0  # tokens of each segment cached into the memory (0: all)
  clamp_len: int = -1  # relative distances clipped to [-clamp_len, clamp_len] when > 0
  untie_r: bool = True
  bi_data: bool = False  # second half of the batch is reversed text (negated distances)
  attn_type: str = "bi"

  def __post_init__(self) -> None:
    if self.hidden_size % self.num_heads:
      raise ValueError(f"XLNet hidden_size ({self.hidden_size}) must be divisible by "
                       f"num_heads ({self.num_heads})")
    if self.hidden_size % 2:
      raise ValueError(f"XLNet hidden_size ({self.hidden_size}) must be even (sinusoids)")
    if self.hidden_act not in layers.ACTIVATIONS:
      raise ValueError(f"XLNet hidden_act {self.hidden_act!r} is not one of "
                       f"{sorted(layers.ACTIVATIONS)}")
    if self.remat not in ("none", *REMAT_POLICIES):
      raise ValueError(f"XLNet remat {self.remat!r} is not one of "
                       f"{['none', *REMAT_POLICIES]}")
    if self.mem_len < 0 or self.reuse_len < 0:
      raise ValueError(f"XLNet mem_len ({self.mem_len}) and reuse_len ({self.reuse_len}) "
                       "must be >= 0")
    if self.attn_type != "bi":
      raise ValueError(f"XLNet attn_type {self.attn_type!r} is not supported (only 'bi')")
    if not self.untie_r:
      raise ValueError("XLNet untie_r=False is not supported (HF's model unties them too)")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


def relative_positional_encoding(qlen: int, klen: int, d_model: int, clamp_len: int = -1,
                                 backward: bool = False) -> np.ndarray:
  """Sinusoids [klen + qlen, D] for distances klen, klen-1, .., -qlen+1 (HF, attn_type bi).

  backward: the distances negated (-klen .. qlen-1), bi_data's reversed half.
  """
  inv_freq = 1.0 / np.power(10000.0, np.arange(0, d_model, 2.0) / d_model)
  pos_seq = np.arange(klen, -qlen, -1.0)
  if backward:
    pos_seq = -pos_seq
  if clamp_len > 0:
    pos_seq = np.clip(pos_seq, -clamp_len, clamp_len)
  sinusoid = pos_seq[:, None] * inv_freq[None, :]
  return np.concatenate([np.sin(sinusoid), np.cos(sinusoid)], -1).astype(np.float32)


def rel_shift(x_BHQR: jax.Array, klen: int) -> jax.Array:
  """HF `rel_shift_bnij`: [B, H, Q, R] -> [B, H, Q, klen], out[.., i, j] = x[.., i, Q-i+j]."""
  b, h, q, r = x_BHQR.shape
  x = x_BHQR.reshape(b, h, r, q)[:, :, 1:]
  return x.reshape(b, h, q, r - 1)[..., :klen]


class XLNetRelativeAttention(nn.Module):
  """Two-stream relative attention; `__call__` returns the new (h [B,L,D], g [B,P,D] | None)."""
  config: XLNetConfig
  deterministic: bool = True

  def setup(self) -> None:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    h, k = c.num_heads, c.head_dim
    init = layers.normal(c.initializer_range)
    proj = lambda: layers.Dense((h, k), ("embed",), ("heads", "kv"), use_bias=False,
                                dtype=dtype, param_dtype=pdtype, kernel_init=init)
    self.q, self.k, self.v, self.r = proj(), proj(), proj(), proj()
    self.o = layers.Dense((c.hidden_size,), ("heads", "kv"), ("embed",), use_bias=False,
                          dtype=dtype, param_dtype=pdtype, kernel_init=init)
    bias = lambda: layers.logical(init, ("heads", "kv"))
    self.r_w_bias = self.param("r_w_bias", bias(), (h, k), pdtype)
    self.r_r_bias = self.param("r_r_bias", bias(), (h, k), pdtype)
    self.r_s_bias = self.param("r_s_bias", bias(), (h, k), pdtype)
    self.seg_embed = self.param("seg_embed", layers.logical(init, ("type", "heads", "kv")),
                                (2, h, k), pdtype)
    self.layer_norm = layers.LayerNorm(c.layer_norm_eps, dtype, pdtype)
    self.dropout = nn.Dropout(c.dropout_rate)

  def _core(self, q_BQHK: jax.Array, k_BKHK: jax.Array, v_BKHK: jax.Array,
            kr_BRHK: jax.Array, seg_BQK: jax.Array | None, mask_BQK: jax.Array,
            positions_BQ: jax.Array | None) -> jax.Array:
    """HF `rel_attn_core` -> [B, Q, H, Dh]; kr is [B, R, H, Dh] or [R, H, Dh].

    K = M + L keys (memory first); R = K + L distances. positions_BQ: each query's position
    among the L current tokens (None: the content stream, query i at position i); mask_BQK
    bool, True = cannot attend.
    """
    c = self.config
    dtype = q_BQHK.dtype
    f32 = jnp.float32
    klen = k_BKHK.shape[1]
    cast = lambda p: p.astype(dtype)
    ac = jnp.einsum("bqhd,bkhd->bhqk", q_BQHK + cast(self.r_w_bias), k_BKHK,
                    preferred_element_type=f32)
    kr_spec = "brhd" if kr_BRHK.ndim == 4 else "rhd"
    bd_raw = jnp.einsum(f"bqhd,{kr_spec}->bhqr", q_BQHK + cast(self.r_r_bias), kr_BRHK,
                        preferred_element_type=f32)
    if positions_BQ is None:
      bd = rel_shift(bd_raw, klen)
    else:  # row i of the shifted scores reads column qlen - i + j, qlen = R - klen
      qlen = bd_raw.shape[-1] - klen
      cols_BQK = qlen - positions_BQ[:, :, None] + jnp.arange(klen)[None, None, :]
      bd = jnp.take_along_axis(bd_raw, cols_BQK[:, None], axis=-1)
    scores = ac + bd
    if seg_BQK is not None:
      ef_BHQS = jnp.einsum("bqhd,shd->bhqs", q_BQHK + cast(self.r_s_bias),
                           cast(self.seg_embed), preferred_element_type=f32)
      same, diff = ef_BHQS[..., 0:1], ef_BHQS[..., 1:2]
      scores = scores + same + seg_BQK[:, None].astype(f32) * (diff - same)
    scores = scores * (c.head_dim ** -0.5)
    scores = jnp.where(mask_BQK[:, None], -_MASKED, scores)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    probs = self.dropout(probs, deterministic=self.deterministic)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v_BKHK)

  def _post(self, x_BQD: jax.Array, vec_BQHK: jax.Array) -> jax.Array:
    out_BQD = layers.per_token(self.o, layers.constrain(vec_BQHK, _ACT_BLHK), num_in=2)
    out_BQD = self.dropout(out_BQD, deterministic=self.deterministic)
    return self.layer_norm(out_BQD + x_BQD)

  def __call__(self, h_BLD: jax.Array, g_BPD: jax.Array | None, mem_BMD: jax.Array | None,
               r_RD: jax.Array, seg_BLK: jax.Array | None, mask_h_BLK: jax.Array,
               mask_g_BPK: jax.Array | None, seg_g_BPK: jax.Array | None,
               positions_BP: jax.Array | None, valid_BP: jax.Array | None
               ) -> tuple[jax.Array, jax.Array | None]:
    cat_BKD = h_BLD if mem_BMD is None else jnp.concatenate(
        [mem_BMD.astype(h_BLD.dtype), h_BLD], axis=1)
    k_BLHK = layers.constrain(layers.per_token(self.k, cat_BKD), _ACT_BLHK)
    v_BLHK = layers.constrain(layers.per_token(self.v, cat_BKD), _ACT_BLHK)
    # r is [R, D] (shared by the batch), [2, R, D] (bi_data: forward and backward distances,
    # each shared by its half of the batch) or [B, R, D] (dropped out per example, as HF).
    kr_BRHK = self.r(r_RD).astype(k_BLHK.dtype)
    batch = h_BLD.shape[0]
    if kr_BRHK.ndim == 4 and kr_BRHK.shape[0] != batch:
      kr_BRHK = jnp.repeat(kr_BRHK, batch // 2, axis=0)
    q_BLHK = layers.constrain(layers.per_token(self.q, h_BLD), _ACT_BLHK)
    vec_h = self._core(q_BLHK, k_BLHK, v_BLHK, kr_BRHK, seg_BLK, mask_h_BLK, None)
    out_h = self._post(h_BLD, vec_h)
    if g_BPD is None:
      return out_h, None
    q_BPHK = layers.constrain(layers.per_token(self.q, g_BPD), _ACT_BLHK)
    vec_g = self._core(q_BPHK, k_BLHK, v_BLHK, kr_BRHK, seg_g_BPK, mask_g_BPK, positions_BP)
    vec_g = vec_g * valid_BP[:, :, None, None].astype(vec_g.dtype)
    return out_h, self._post(g_BPD, vec_g)


class XLNetFeedForward(nn.Module):
  """layer_1 -> act -> dropout -> layer_2 -> dropout, residual, LayerNorm."""
  config: XLNetConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    init = layers.normal(c.initializer_range)
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=self.deterministic)
    layer_1 = layers.Dense((c.intermediate_size,), ("embed",), ("mlp",), dtype=dtype,
                           param_dtype=pdtype, kernel_init=init, name="layer_1")
    layer_2 = layers.Dense((c.hidden_size,), ("mlp",), ("embed",), dtype=dtype,
                           param_dtype=pdtype, kernel_init=init, name="layer_2")
    y_BLF = drop(layers.ACTIVATIONS[c.hidden_act](layers.per_token(layer_1, x_BLD)))
    y_BLF = layers.constrain(y_BLF, ("act_batch", "act_length", "act_mlp"))
    y_BLD = drop(layers.per_token(layer_2, y_BLF))
    norm = layers.LayerNorm(c.layer_norm_eps, dtype, pdtype, name="layer_norm")
    return layers.constrain(norm(y_BLD + x_BLD), _ACT_BLD)


def cache_mem(h_BLD: jax.Array, mem_BMD: jax.Array | None, mem_len: int, reuse_len: int
              ) -> jax.Array:
  """HF `cache_mem`: the last mem_len rows of [memory; h[:reuse_len]], without gradient."""
  cur_BLD = h_BLD[:, :reuse_len] if reuse_len > 0 else h_BLD
  cat_BKD = cur_BLD if mem_BMD is None else jnp.concatenate(
      [mem_BMD.astype(cur_BLD.dtype), cur_BLD], axis=1)
  if mem_len > 0:
    cat_BKD = cat_BKD[:, -mem_len:]
  return jax.lax.stop_gradient(cat_BKD)


class XLNetLayer(nn.Module):
  """`rel_attn` then `ff` on each stream; carry = (h [B,L,D], g [B,P,D] | None).

  Returns (carry, the layer's new memory [B, M', D] or None).
  """
  config: XLNetConfig
  deterministic: bool = True
  return_mems: bool = False

  @nn.compact
  def __call__(self, carry: tuple[jax.Array, jax.Array | None], mem_BMD: jax.Array | None,
               r_RD: jax.Array, seg_BLK: jax.Array | None, mask_h_BLK: jax.Array,
               mask_g_BPK: jax.Array | None, seg_g_BPK: jax.Array | None,
               positions_BP: jax.Array | None, valid_BP: jax.Array | None
               ) -> tuple[tuple[jax.Array, jax.Array | None], jax.Array | None]:
    c = self.config
    h_BLD, g_BPD = carry
    new_mem = (cache_mem(h_BLD, mem_BMD, c.mem_len, c.reuse_len) if self.return_mems
               else None)
    h_BLD, g_BPD = XLNetRelativeAttention(c, self.deterministic, name="rel_attn")(
        h_BLD, g_BPD, mem_BMD, r_RD, seg_BLK, mask_h_BLK, mask_g_BPK, seg_g_BPK, positions_BP,
        valid_BP)
    ff = XLNetFeedForward(c, self.deterministic, name="ff")
    if g_BPD is not None:
      g_BPD = ff(g_BPD)
    return (ff(h_BLD), g_BPD), new_mem


class XLNetLMHeadModel(nn.Module):
  """The two-stream model with the tied LM head; logits are float32 whatever the dtype.

  Params: `word_embedding/embedding` [V, D], `mask_emb` [D] (HF: [1, 1, D]), `layer_{i}`
  (or scanned `layers`) each with `rel_attn/{q,k,v,r}/kernel` [D, H, Dh] (as HF),
  `rel_attn/o/kernel` [H, Dh, D] (HF: [D, H, Dh]), `rel_attn/{r_w,r_r,r_s}_bias` [H, Dh],
  `rel_attn/seg_embed` [2, H, Dh], `rel_attn/layer_norm`, `ff/{layer_1,layer_2,layer_norm}`;
  and `lm_loss_bias` [V] (HF: `lm_loss.bias`).
  """
  config: XLNetConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array | None, token_type_ids: jax.Array | None = None,
               perm_mask: jax.Array | None = None, target_mapping: jax.Array | None = None,
               attention_mask: jax.Array | None = None, mems: jax.Array | None = None,
               deterministic: bool = True, inputs_embeds: jax.Array | None = None,
               return_mems: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Logits [B, P, V] from the query stream with target_mapping, else [B, L, V] (content).

    Args:
      input_ids: int [B, L] (None when inputs_embeds is given).
      token_type_ids: int [B, L] segment ids; only "same or different" matters.
      perm_mask: float [B, L, L]; 1 at [b, i, j] = i cannot see j.
      target_mapping: float [B, P, L], one-hot rows (zero rows = padding predictions).
      attention_mask: [B, L], 1 = token, 0 = padding key.
      mems: [num_layers, B, M, D] memory from earlier segments (HF's list of [M, B, D]
        stacked and batch-major), visible to every query; None = no memory.
      deterministic: disables dropout.
      inputs_embeds: float [B, L, D] instead of the word embeddings of input_ids.
      return_mems: also return the new memory [num_layers, B, M', D] (see `cache_mem`).
    """
    c = self.config
    dtype, pdtype = layers.dtypes(c)
    init = layers.normal(c.initializer_range)
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    word_embedding = layers.Embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), dtype,
                                  pdtype, embedding_init=init, name="word_embedding")
    mask_emb = self.param("mask_emb", layers.logical(init, ("embed",)), (c.hidden_size,),
                          pdtype)
    if inputs_embeds is None:
      x_BLD = word_embedding(input_ids)
    else:
      x_BLD = layers.constrain(inputs_embeds.astype(dtype), _ACT_BLD)
    batch, length = x_BLD.shape[:2]
    mlen = 0
    if mems is not None:
      if mems.ndim != 4 or mems.shape[0] != c.num_layers or mems.shape[1] != batch or (
          mems.shape[3] != c.hidden_size):
        raise ValueError(f"XLNet mems must be [num_layers={c.num_layers}, batch={batch}, M, "
                         f"hidden={c.hidden_size}], got {tuple(mems.shape)}")
      mlen = mems.shape[2]
    if c.bi_data and batch % 2:
      raise ValueError(f"XLNet bi_data needs an even batch (forward half, reversed half), "
                       f"got {batch}")

    # HF: data_mask = (1 - attention_mask) over keys + perm_mask; > 0 = masked. Memory columns
    # come first and are never masked; the content stream may see its own token.
    data_BLL = jnp.zeros((batch, length, length), jnp.float32)
    if perm_mask is not None:
      data_BLL = data_BLL + perm_mask.astype(jnp.float32)
    if attention_mask is not None:
      data_BLL = data_BLL + (1.0 - attention_mask.astype(jnp.float32))[:, None, :]
    with_mem = lambda m_BLL: m_BLL if not mlen else jnp.concatenate(
        [jnp.zeros((batch, length, mlen), bool), m_BLL], axis=-1)
    mask_g_BLK = with_mem(data_BLL > 0)
    mask_h_BLK = with_mem((data_BLL - jnp.eye(length, dtype=jnp.float32)) > 0)  # non_tgt_mask
    seg_BLK = None
    if token_type_ids is not None:
      cat_ids_BK = token_type_ids if not mlen else jnp.concatenate(
          [jnp.zeros((batch, mlen), token_type_ids.dtype), token_type_ids], axis=1)
      seg_BLK = token_type_ids[:, :, None] != cat_ids_BK[:, None, :]

    h_BLD = drop(x_BLD)
    g_BPD = mask_g_BPK = seg_g_BPK = positions_BP = valid_BP = None
    if target_mapping is not None:
      num_predict = target_mapping.shape[1]
      g_BPD = drop(jnp.broadcast_to(mask_emb.astype(dtype), (batch, num_predict,
                                                              c.hidden_size)))
      positions_BP = jnp.argmax(target_mapping, axis=-1).astype(jnp.int32)
      valid_BP = jnp.sum(target_mapping, axis=-1)
      rows = lambda m_BLK: jnp.take_along_axis(m_BLK, positions_BP[:, :, None], axis=1)
      mask_g_BPK = rows(mask_g_BLK)
      seg_g_BPK = None if seg_BLK is None else rows(seg_BLK)

    klen = mlen + length
    r_RD = jnp.asarray(relative_positional_encoding(length, klen, c.hidden_size, c.clamp_len),
                       dtype)
    if c.bi_data:  # [2, R, D]: forward distances, and their negatives for the reversed half
      r_bwd = jnp.asarray(relative_positional_encoding(length, klen, c.hidden_size,
                                                       c.clamp_len, backward=True), dtype)
      r_RD = jnp.stack([r_RD, r_bwd])
    if not deterministic and c.dropout_rate > 0:  # HF drops the batch-expanded copy
      r_RD = (jnp.repeat(r_RD, batch // 2, axis=0) if c.bi_data
              else jnp.broadcast_to(r_RD, (batch,) + r_RD.shape))
      r_RD = drop(r_RD)

    carry = (layers.constrain(h_BLD, _ACT_BLD), g_BPD)
    block_kwargs = {"config": c, "deterministic": deterministic, "return_mems": return_mems}
    carry, new_mems = layer_stack(
        XLNetLayer, c.num_layers, c.remat, c.scan_layers, block_kwargs, carry,
        mems if mlen else None, r_RD, seg_BLK, mask_h_BLK, mask_g_BPK, seg_g_BPK, positions_BP,
        valid_BP, per_layer=1)
    out_BXD = drop(carry[1] if target_mapping is not None else carry[0])

    lm_loss_bias = self.param("lm_loss_bias",
                              layers.zeros(("vocab",)), (c.vocab_size,), pdtype)
    b, x, d = out_BXD.shape
    # One token axis for the head's GEMMs (see layers.per_token); only the P rows when given.
    logits_NV = word_embedding.attend(out_BXD.reshape(b * x, d)).astype(jnp.float32)
    logits_NV = logits_NV + lm_loss_bias.astype(jnp.float32)
    logits = layers.constrain(logits_NV.reshape(b, x, -1),
                              ("act_batch", "act_length", "act_vocab"))
    return (logits, new_mems) if return_mems else logits


def hf_config_dict(config: XLNetConfig) -> dict:
  """Keyword arguments for `transformers.XLNetConfig` describing `config`."""
  return {"vocab_size": config.vocab_size, "d_model": config.hidden_size,
          "n_layer": config.num_layers, "n_head": config.num_heads,
          "d_inner": config.intermediate_size, "ff_activation": config.hidden_act,
          "layer_norm_eps": config.layer_norm_eps, "dropout": config.dropout_rate,
          "initializer_range": config.initializer_range, "mem_len": config.mem_len or None,
          "reuse_len": config.reuse_len or None, "clamp_len": config.clamp_len,
          "untie_r": config.untie_r,
          "bi_data": config.bi_data, "attn_type": config.attn_type}
