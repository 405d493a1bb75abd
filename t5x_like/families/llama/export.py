"""Export our Flax `LlamaForCausalLM` as a HuggingFace `transformers.LlamaForCausalLM` folder.

The folder holds `config.json`, `model.safetensors` (float32), the tokenizer files (see
`t5x_like.export.tokenizer`) and the marker file of `t5x_like.export.common`.

The safetensors keys are those `LlamaForCausalLM.save_pretrained` writes in transformers 5:
`lm_head.weight` only for an untied head (a tied one is re-tied on load to
`model.embed_tokens.weight`), and no rotary `inv_freq` buffer (HF recomputes it from
`rope_theta`, as we do).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipelines import vocab as vocab_lib
from t5x_like.export.common import (
  MARKER_FILE,
  _unbox,
  check_target,
  export_folder,
  layer_trees,
  put_checked,
)
from t5x_like.families.llama.model import ACTIVATIONS, LlamaConfig

__all__ = ["MARKER_FILE", "check_target", "export_llama", "hf_config_dict",
           "llama_to_hf_state_dict"]
# Our activation names are HF's ACT2FN keys with the same meaning ("gelu" is the erf form).
HF_ACTIVATIONS = tuple(ACTIVATIONS)


def llama_to_hf_state_dict(params: Mapping[str, Any], config: LlamaConfig
                           ) -> dict[str, np.ndarray]:
  """Maps our param tree to the `LlamaForCausalLM` state dict (float32, torch layouts).

  Args:
    params: `{'model', 'lm_head'}` as the model's init makes them (optionally under 'params',
      boxed or not, per-layer or scanned); numpy or fully addressable jax arrays. On
      multi-host meshes gather first.
    config: the model's config; used to check every shape and the layer count.

  Returns:
    HF parameter name -> float32 array ([out, in] for Linear), without a tied head.

  Raises:
    ValueError: a tensor is missing or its shape disagrees with the config.
  """
  p = _unbox(params)
  d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
  h, kv, k = config.num_heads, config.kv_heads, config.d_head
  out: dict[str, np.ndarray] = {}
  put = functools.partial(put_checked, out)
  if "model" not in p:
    raise ValueError(f"our params have no 'model' (got {sorted(p)})")
  tree = p["model"]

  put("model.embed_tokens.weight", tree, "embed_tokens/embedding", (v, d))
  for i, layer in enumerate(layer_trees(tree, config.num_layers, "model")):
    pre = f"model.layers.{i}"
    put(f"{pre}.input_layernorm.weight", layer, "input_layernorm/scale", (d,))
    # [D, H, K] -> [H*K, D]: HF's view(..., heads, head_dim) is head-major, as ours.
    for proj, heads in (("q_proj", h), ("k_proj", kv), ("v_proj", kv)):
      put(f"{pre}.self_attn.{proj}.weight", layer, f"self_attn/{proj}/kernel", (d, heads, k),
          lambda x, n=heads: x.reshape(d, n * k).T)
    put(f"{pre}.self_attn.o_proj.weight", layer, "self_attn/o_proj/kernel", (h, k, d),
        lambda x: x.reshape(h * k, d).T)
    put(f"{pre}.post_attention_layernorm.weight", layer, "post_attention_layernorm/scale",
        (d,))
    for proj, shape in (("gate_proj", (d, f)), ("up_proj", (d, f)), ("down_proj", (f, d))):
      put(f"{pre}.mlp.{proj}.weight", layer, f"mlp/{proj}/kernel", shape, np.transpose)
  put("model.norm.weight", tree, "norm/scale", (d,))
  if config.tie_word_embeddings:
    if "lm_head" in p:
      raise ValueError("config.tie_word_embeddings is True but the params have an lm_head")
  else:
    if "lm_head" not in p:
      raise ValueError("config.tie_word_embeddings is False but the params have no lm_head")
    put("lm_head.weight", p, "lm_head/kernel", (d, v), np.transpose)
  return out


def hf_config_dict(config: LlamaConfig, pad_token_id: int = vocab_lib.PAD_ID,
                   bos_token_id: int = vocab_lib.BOS_ID,
                   eos_token_id: int = vocab_lib.EOS_ID) -> dict[str, Any]:
  """`config.json` contents for `transformers.LlamaForCausalLM`.

  RoPE is written both ways: `rope_parameters` (transformers 5) and `rope_theta` /
  `rope_scaling` (4.x).
  """
  if config.hidden_act not in HF_ACTIVATIONS:
    raise ValueError(f"hidden_act {config.hidden_act!r} has no HF equivalent here")
  if config.hidden_size % config.num_heads:
    # transformers' LlamaConfig refuses it even with an explicit head_dim.
    raise ValueError(f"hidden_size ({config.hidden_size}) must be divisible by num_heads "
                     f"({config.num_heads}) for HF Llama")
  return {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "vocab_size": config.vocab_size,
      "hidden_size": config.hidden_size,
      "intermediate_size": config.intermediate_size,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.kv_heads,
      "head_dim": config.d_head,
      "hidden_act": config.hidden_act,
      "max_position_embeddings": config.max_position_embeddings,
      "initializer_range": config.initializer_range,
      "rms_norm_eps": config.layer_norm_eps,
      "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
      "rope_theta": config.rope_theta,
      "rope_scaling": None,
      "attention_bias": False,
      "attention_dropout": config.dropout_rate,
      "mlp_bias": False,
      "pretraining_tp": 1,
      "tie_word_embeddings": config.tie_word_embeddings,
      "use_cache": True,
      "pad_token_id": pad_token_id,
      "bos_token_id": bos_token_id,
      "eos_token_id": eos_token_id,
      "dtype": "float32",
  }


def export_llama(params: Mapping[str, Any], config: LlamaConfig, out_dir: str,
                 tokenizer_model: str | None = None, num_sentinels: int = 0,
                 special_ids: Mapping[str, int] | None = None) -> str:
  """Writes a HuggingFace `LlamaForCausalLM` folder, atomically (`export.common.export_folder`
  says what each argument means and what it raises)."""
  return export_folder("llama", llama_to_hf_state_dict, hf_config_dict, params, config,
                       out_dir, tokenizer_model, num_sentinels, special_ids,
                       model_max_length=config.max_position_embeddings)
