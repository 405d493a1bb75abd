"""config.json of a HuggingFace mpt checkpoint -> our module config (the inverse of the
exporter's `hf_config_dict`).

Refused, because our model (like transformers' MptForCausalLM, which silently ignores most of
them) cannot compute what the checkpoint was trained to: a learned position table instead of
ALiBi, clipped or layer-normed q/k, a non-default softmax scale, multi-/grouped-query
attention, biases, a logit scale, other norms or MLPs, untied heads, prefix-LM training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from t5x_like import hf_config as hfc
from t5x_like.families.mpt import export as mpt_export
from t5x_like.families.mpt.model import MptConfig

_NORMS = ("low_precision_layernorm", "layernorm")


def _refuse(ok: bool, what: str) -> None:
  if not ok:
    raise hfc.HFImportError(f"config.json: {what} is not supported (ours: MPT with ALiBi, "
                            "multi-head attention, exact GELU MLP, no biases, tied head)")


def _attention(attn: Mapping[str, Any], head_dim: int, notes: list[str]) -> None:
  _refuse(hfc.get(attn, "alibi", True) is True,
          "attn_config.alibi false (learned position embeddings)")
  _refuse(hfc.get(attn, "attn_type", "multihead_attention") == "multihead_attention",
          f"attn_config.attn_type {attn.get('attn_type')!r}")
  _refuse(attn.get("clip_qkv") is None, f"attn_config.clip_qkv {attn.get('clip_qkv')!r}")
  _refuse(not hfc.get(attn, "qk_ln", False), "attn_config.qk_ln true")
  _refuse(not hfc.get(attn, "prefix_lm", False),
          "attn_config.prefix_lm true (pass prefix_BL to our model instead)")
  scale = attn.get("softmax_scale")
  _refuse(scale is None or math.isclose(scale, head_dim ** -0.5, rel_tol=1e-6),
          f"attn_config.softmax_scale {scale!r} (ours: 1/sqrt(head_dim))")
  for key in ("rope", "sliding_window_size"):
    value = attn.get(key)
    _refuse(value in (None, False, -1), f"attn_config.{key} {value!r}")
  if hfc.get(attn, "attn_uses_sequence_id", False):
    notes.append("attn_config.attn_uses_sequence_id: our packed rows always keep attention "
                 "within a document (segment_ids)")


def _mlp(hf: Mapping[str, Any]) -> None:
  ffn = hf.get("ffn_config") or {}
  _refuse(hfc.get(ffn, "ffn_type", "mptmlp") == "mptmlp",
          f"ffn_config.ffn_type {ffn.get('ffn_type')!r}")
  act = ffn.get("ffn_act_fn")
  _refuse(act is None or (act.get("name") == "gelu" and act.get("approximate", "none") ==
                          "none"), f"ffn_config.ffn_act_fn {act!r} (ours: exact GELU)")
  _refuse(ffn.get("ffn_hidden_size") is None, "ffn_config.ffn_hidden_size")


def config_from_hf(hf: Mapping[str, Any], notes: list[str]) -> Any:
  d_model = hfc.integer(hf, "d_model", 2048)
  n_heads = hfc.integer(hf, "n_heads", 16)
  if n_heads < 1 or d_model % n_heads:
    raise hfc.HFImportError(f"config.json: d_model ({d_model}) must be divisible by n_heads "
                            f"({n_heads})")
  attn = hf.get("attn_config") or {}
  if not isinstance(attn, Mapping):
    raise hfc.HFImportError(f"config.json: attn_config must be a mapping, got {attn!r}")
  _attention(attn, d_model // n_heads, notes)
  _mlp(hf)
  _refuse(hfc.get(hf, "no_bias", True) is True, "no_bias false (biased linear layers)")
  _refuse(hf.get("logit_scale") is None, f"logit_scale {hf.get('logit_scale')!r}")
  _refuse(hfc.get(hf, "norm_type", _NORMS[0]) in _NORMS, f"norm_type {hf.get('norm_type')!r}")
  _refuse(hfc.get(hf, "tie_word_embeddings", True) is True,
          "tie_word_embeddings false (an untied lm_head)")
  expansion = hfc.get(hf, "expansion_ratio", mpt_export.HF_EXPANSION_RATIO)
  intermediate = expansion * d_model
  if intermediate != int(intermediate):
    raise hfc.HFImportError(f"config.json: expansion_ratio {expansion} x d_model {d_model} "
                            "is not a whole number of MLP units")
  if float(hfc.get(hf, "embedding_fraction", 1.0)) != 1.0:
    notes.append(f"embedding_fraction {hf['embedding_fraction']} (a gradient scale on the "
                 "embeddings) is not applied by our training; the forward pass is the same")
  # Ours is one rate at HF's attn_pdrop sites (the attention probabilities and both residual
  # branches); our exports keep it in resid_pdrop (see hf_config_dict).
  attn_pdrop = float(hfc.get(attn, "attn_pdrop", 0.0))
  resid_pdrop = float(hfc.get(hf, "resid_pdrop", 0.0))
  dropout = attn_pdrop or resid_pdrop
  if attn_pdrop and resid_pdrop not in (0.0, attn_pdrop):
    notes.append(f"resid_pdrop {resid_pdrop} is not used: dropout_rate is attn_config."
                 f"attn_pdrop ({attn_pdrop}) at the attention probabilities and both residual "
                 "branches, as in transformers' MPT")
  if float(hfc.get(hf, "emb_pdrop", 0.0)):
    notes.append(f"emb_pdrop {hf['emb_pdrop']} is not used (nor by transformers' MPT)")
  return MptConfig(
      vocab_size=hfc.integer(hf, "vocab_size", 50368),
      hidden_size=d_model,
      num_layers=hfc.integer(hf, "n_layers", 24),
      num_heads=n_heads,
      intermediate_size=int(intermediate),
      hidden_act=mpt_export.HF_ACTIVATION,
      layer_norm_eps=float(hfc.get(hf, "layer_norm_epsilon", 1e-5)),
      dropout_rate=dropout,
      initializer_range=float(hfc.get(hf, "initializer_range", 0.02)),
      alibi_bias_max=hfc.integer(attn, "alibi_bias_max", 8),
      max_seq_len=hfc.integer(hf, "max_seq_len", 2048))
