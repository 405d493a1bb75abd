"""Export our Flax `T5ForConditionalGeneration` as a HuggingFace T5 folder.

The folder holds `config.json`, `model.safetensors` (float32), the tokenizer files (see
`t5x_like.export.tokenizer`, which also writes `spiece.model`) and the marker file of
`t5x_like.export.common`.

The safetensors keys are those `T5ForConditionalGeneration.save_pretrained` writes in
transformers 5: `shared.weight` but not its tied copies `encoder.embed_tokens.weight` /
`decoder.embed_tokens.weight`, and `lm_head.weight` only for an untied head. The relative
attention bias sits in block 0 of each stack.

transformers 5 forces `T5Config.tie_word_embeddings` to True and reads the value written in
config.json only as "scale the decoder output by d_model**-0.5". Loading an untied (v1.1)
export therefore logs "... both are present in the checkpoints with different values, so we
will NOT tie them"; the head is then loaded untied, which is what we want (the stock
google/t5-v1_1 checkpoints log the same).
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
from t5x_like.families.t5.model import T5Config

__all__ = ["MARKER_FILE", "check_target", "export_t5", "hf_config_dict",
           "t5_to_hf_state_dict"]

# Our activation name -> HF `feed_forward_proj` ("gated-gelu" means gelu_new in HF).
_HF_FEED_FORWARD = {"gelu_new": "gated-gelu", "gelu": "gated-gelu_python", "relu": "gated-relu"}
_MODEL_MAX_LENGTH = 512  # T5 has no position limit; the tokenizer's customary default


def t5_to_hf_state_dict(params: Mapping[str, Any], config: T5Config
                        ) -> dict[str, np.ndarray]:
  """Maps our param tree to the `T5ForConditionalGeneration` state dict (float32).

  Args:
    params: `{'shared', 'encoder', 'decoder', 'lm_head'}` as the model's init makes them
      (optionally under 'params', boxed or not, per-layer or scanned); numpy or fully
      addressable jax arrays. On multi-host meshes gather first.
    config: the model's config; used to check every shape and the layer counts.

  Returns:
    HF parameter name -> float32 array in torch layout ([out, in] for Linear), without the
    tied copies of `shared.weight` (see module docstring).

  Raises:
    ValueError: a tensor is missing or its shape disagrees with the config.
  """
  p = _unbox(params)
  d, h, k, f = config.hidden_size, config.num_heads, config.d_kv, config.intermediate_size
  out: dict[str, np.ndarray] = {}

  put = functools.partial(put_checked, out)

  def attention(pre: str, layer: Mapping[str, Any], module: str) -> None:
    for proj in ("q", "k", "v"):  # [D, H, K] -> [H*K, D] (head-major, as HF's view)
      put(f"{pre}.{module}.{proj}.weight", layer, f"{module}/{proj}/kernel", (d, h, k),
          lambda x: x.reshape(d, h * k).T)
    put(f"{pre}.{module}.o.weight", layer, f"{module}/o/kernel", (h, k, d),
        lambda x: x.reshape(h * k, d).T)

  def mlp(pre: str, layer: Mapping[str, Any]) -> None:
    for proj, shape in (("wi_0", (d, f)), ("wi_1", (d, f)), ("wo", (f, d))):
      put(f"{pre}.DenseReluDense.{proj}.weight", layer, f"DenseReluDense/{proj}/kernel",
          shape, np.transpose)

  put("shared.weight", p, "shared/embedding", (config.vocab_size, d))
  for stack, num_layers in (("encoder", config.num_layers),
                            ("decoder", config.decoder_layers)):
    if stack not in p:
      raise ValueError(f"our params have no {stack!r} (got {sorted(p)})")
    tree = p[stack]
    put(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", tree,
        "relative_attention_bias", (config.relative_attention_num_buckets, h))
    for i, layer in enumerate(layer_trees(tree, num_layers, stack)):
      pre = f"{stack}.block.{i}.layer"
      put(f"{pre}.0.layer_norm.weight", layer, "self_attention_layer_norm/scale", (d,))
      attention(f"{pre}.0", layer, "SelfAttention")
      ff = 1
      if stack == "decoder":
        put(f"{pre}.1.layer_norm.weight", layer, "cross_attention_layer_norm/scale", (d,))
        attention(f"{pre}.1", layer, "EncDecAttention")
        ff = 2
      put(f"{pre}.{ff}.layer_norm.weight", layer, "mlp_layer_norm/scale", (d,))
      mlp(f"{pre}.{ff}", layer)
    put(f"{stack}.final_layer_norm.weight", tree, "final_layer_norm/scale", (d,))
  if config.tie_word_embeddings:
    if "lm_head" in p:
      raise ValueError("config.tie_word_embeddings is True but the params have an lm_head")
  else:
    if "lm_head" not in p:
      raise ValueError("config.tie_word_embeddings is False but the params have no lm_head")
    put("lm_head.weight", p, "lm_head/kernel", (d, config.vocab_size), np.transpose)
  return out


def hf_config_dict(config: T5Config, pad_token_id: int = vocab_lib.PAD_ID,
                   eos_token_id: int = vocab_lib.EOS_ID) -> dict[str, Any]:
  """`config.json` contents for `transformers.T5ForConditionalGeneration`."""
  if config.hidden_act not in _HF_FEED_FORWARD:
    raise ValueError(f"hidden_act {config.hidden_act!r} has no HF equivalent here "
                     f"(expected one of {sorted(_HF_FEED_FORWARD)})")
  return {
      "architectures": ["T5ForConditionalGeneration"],
      "model_type": "t5",
      "vocab_size": config.vocab_size,
      "d_model": config.hidden_size,
      "d_kv": config.d_kv,
      "d_ff": config.intermediate_size,
      "num_layers": config.num_layers,
      "num_decoder_layers": config.decoder_layers,
      "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate,
      "layer_norm_epsilon": config.layer_norm_eps,
      "initializer_factor": config.initializer_factor,
      "feed_forward_proj": _HF_FEED_FORWARD[config.hidden_act],
      "is_encoder_decoder": True,
      # transformers 5 reads this as "scale the decoder output", see the module docstring.
      "tie_word_embeddings": config.tie_word_embeddings,
      "pad_token_id": pad_token_id,
      "eos_token_id": eos_token_id,
      "decoder_start_token_id": pad_token_id,
      "use_cache": True,
      "dtype": "float32",
  }


def export_t5(params: Mapping[str, Any], config: T5Config, out_dir: str,
              tokenizer_model: str | None = None, num_sentinels: int = 0,
              special_ids: Mapping[str, int] | None = None) -> str:
  """Writes a HuggingFace `T5ForConditionalGeneration` folder, atomically.

  `export.common.export_folder` says what each argument means and what it raises.
  """
  return export_folder("t5", t5_to_hf_state_dict, hf_config_dict, params, config, out_dir,
                       tokenizer_model, num_sentinels, special_ids,
                       model_max_length=_MODEL_MAX_LENGTH)