"""Export our Flax `BartForConditionalGeneration` as a HuggingFace BART folder.

The folder holds `config.json`, `model.safetensors` (float32), the tokenizer files (see
`t5x_like.export.tokenizer`: `<s> A </s>` template, also writes `spiece.model`) and the
marker file of `t5x_like.export.common`.

The safetensors keys are those `BartForConditionalGeneration.save_pretrained` writes in
transformers 5: `model.shared.weight` but not its tied copies
`model.{encoder,decoder}.embed_tokens.weight` and `lm_head.weight`, plus the
`final_logits_bias` buffer as [1, V].
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
from t5x_like.families.bart.model import POSITION_OFFSET, BartConfig

__all__ = ["MARKER_FILE", "bart_to_hf_state_dict", "check_target", "export_bart",
           "hf_config_dict"]

# Our activation names are HF's ACT2FN keys with the same meaning ("gelu" is the erf form).
_HF_ACTIVATIONS = ("gelu", "gelu_new", "relu")


def bart_to_hf_state_dict(params: Mapping[str, Any], config: BartConfig
                          ) -> dict[str, np.ndarray]:
  """Maps our param tree to the `BartForConditionalGeneration` state dict (float32).

  Args:
    params: `{'shared', 'encoder', 'decoder', 'final_logits_bias'}` as the model's init
      makes them (optionally under 'params', boxed or not, per-layer or scanned); numpy or
      fully addressable jax arrays. On multi-host meshes gather first.
    config: the model's config; used to check every shape and the layer counts.

  Returns:
    HF parameter name -> float32 array in torch layout ([out, in] for Linear), without the
    tied copies of `model.shared.weight` (see module docstring).

  Raises:
    ValueError: a tensor is missing or its shape disagrees with the config.
  """
  p = _unbox(params)
  d, h, k, f = config.hidden_size, config.num_heads, config.head_dim, config.intermediate_size
  out: dict[str, np.ndarray] = {}

  put = functools.partial(put_checked, out)

  def layer_norm(name: str, tree: Mapping[str, Any], path: str) -> None:
    put(f"{name}.weight", tree, f"{path}/scale", (d,))
    put(f"{name}.bias", tree, f"{path}/bias", (d,))

  def attention(pre: str, layer: Mapping[str, Any], module: str) -> None:
    for proj in ("q_proj", "k_proj", "v_proj"):  # [D, H, K] -> [H*K, D] (head-major)
      put(f"{pre}.{module}.{proj}.weight", layer, f"{module}/{proj}/kernel", (d, h, k),
          lambda x: x.reshape(d, h * k).T)
      put(f"{pre}.{module}.{proj}.bias", layer, f"{module}/{proj}/bias", (h, k),
          lambda x: x.reshape(h * k))
    put(f"{pre}.{module}.out_proj.weight", layer, f"{module}/out_proj/kernel", (h, k, d),
        lambda x: x.reshape(h * k, d).T)
    put(f"{pre}.{module}.out_proj.bias", layer, f"{module}/out_proj/bias", (d,))

  put("model.shared.weight", p, "shared/embedding", (config.vocab_size, d))
  put("final_logits_bias", p, "final_logits_bias", (config.vocab_size,),
      lambda x: x.reshape(1, -1))
  for stack, num_layers in (("encoder", config.num_layers),
                            ("decoder", config.decoder_layers)):
    if stack not in p:
      raise ValueError(f"our params have no {stack!r} (got {sorted(p)})")
    tree = p[stack]
    put(f"model.{stack}.embed_positions.weight", tree, "embed_positions/embedding",
        (config.max_position_embeddings + POSITION_OFFSET, d))
    layer_norm(f"model.{stack}.layernorm_embedding", tree, "layernorm_embedding")
    for i, layer in enumerate(layer_trees(tree, num_layers, stack)):
      pre = f"model.{stack}.layers.{i}"
      attention(pre, layer, "self_attn")
      layer_norm(f"{pre}.self_attn_layer_norm", layer, "self_attn_layer_norm")
      if stack == "decoder":
        attention(pre, layer, "encoder_attn")
        layer_norm(f"{pre}.encoder_attn_layer_norm", layer, "encoder_attn_layer_norm")
      put(f"{pre}.fc1.weight", layer, "fc1/kernel", (d, f), np.transpose)
      put(f"{pre}.fc1.bias", layer, "fc1/bias", (f,))
      put(f"{pre}.fc2.weight", layer, "fc2/kernel", (f, d), np.transpose)
      put(f"{pre}.fc2.bias", layer, "fc2/bias", (d,))
      layer_norm(f"{pre}.final_layer_norm", layer, "final_layer_norm")
  return out


def hf_config_dict(config: BartConfig, pad_token_id: int | None = None,
                   bos_token_id: int = vocab_lib.BOS_ID, eos_token_id: int = vocab_lib.EOS_ID
                   ) -> dict[str, Any]:
  """`config.json` contents for `transformers.BartForConditionalGeneration`.

  The decoder starts from `</s>` (fairseq: targets shifted right behind eos), and
  generation is forced to end with it, as the stock facebook/bart checkpoints. pad_token_id
  defaults to the model's (its embedding's padding_idx).
  """
  if pad_token_id is None:
    pad_token_id = config.pad_token_id
  if config.hidden_act not in _HF_ACTIVATIONS:
    raise ValueError(f"hidden_act {config.hidden_act!r} has no HF equivalent here "
                     f"(expected one of {list(_HF_ACTIVATIONS)})")
  if not np.isclose(config.layer_norm_eps, 1e-5, rtol=1e-3, atol=0):
    # HF BART's nn.LayerNorm uses torch's default eps and has no config field for it.
    raise ValueError(f"layer_norm_eps {config.layer_norm_eps} cannot be exported: HF BART "
                     "always uses 1e-5")
  return {
      "architectures": ["BartForConditionalGeneration"],
      "model_type": "bart",
      "vocab_size": config.vocab_size,
      "d_model": config.hidden_size,
      "encoder_layers": config.num_layers,
      "decoder_layers": config.decoder_layers,
      "encoder_attention_heads": config.num_heads,
      "decoder_attention_heads": config.num_heads,
      "encoder_ffn_dim": config.intermediate_size,
      "decoder_ffn_dim": config.intermediate_size,
      "max_position_embeddings": config.max_position_embeddings,
      "activation_function": config.hidden_act,
      "dropout": config.dropout_rate,
      "attention_dropout": config.attention_dropout_rate,
      "activation_dropout": 0.0,
      "classifier_dropout": 0.0,
      "encoder_layerdrop": 0.0,
      "decoder_layerdrop": 0.0,
      "init_std": config.initializer_range,
      "scale_embedding": config.scale_embedding,
      # Legacy keys of the facebook/bart-* configs (post-LN, no final norm): read by some
      # tools, ignored by transformers 5.
      "normalize_before": False,
      "add_final_layer_norm": False,
      "is_encoder_decoder": True,
      "tie_word_embeddings": True,
      "pad_token_id": pad_token_id,
      "bos_token_id": bos_token_id,
      "eos_token_id": eos_token_id,
      "decoder_start_token_id": eos_token_id,
      "forced_eos_token_id": eos_token_id,
      "use_cache": True,
      "dtype": "float32",
  }


def export_bart(params: Mapping[str, Any], config: BartConfig, out_dir: str,
                tokenizer_model: str | None = None, num_sentinels: int = 0,
                special_ids: Mapping[str, int] | None = None) -> str:
  """Writes a HuggingFace `BartForConditionalGeneration` folder, atomically.

  `export.common.export_folder` says what each argument means and what it raises.
  """
  return export_folder("bart", bart_to_hf_state_dict, hf_config_dict, params, config, out_dir,
                       tokenizer_model, num_sentinels, special_ids,
                       model_max_length=config.max_position_embeddings)