"""Export our Flax `XLNetLMHeadModel` as a HuggingFace `XLNetLMHeadModel` folder.

The folder holds `config.json` (a full `XLNetConfig`), `model.safetensors` (float32), the
tokenizer files (see `t5x_like.export.tokenizer`: XLNet's `A <sep> <s>` template with
token_type_ids 0 .. 0 0 2 and left padding, also writes `spiece.model`) and the marker file of
`t5x_like.export.common`.

The safetensors keys are those `XLNetLMHeadModel.save_pretrained` writes in transformers 5:
`transformer.word_embedding.weight` but not its tied copy `lm_loss.weight`; `lm_loss.bias`
is saved.
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
from t5x_like.families.xlnet import model as xlnet_lib
from t5x_like.families.xlnet.model import XLNetConfig

__all__ = ["MARKER_FILE", "check_target", "export_xlnet", "hf_config_dict",
           "xlnet_to_hf_state_dict"]

# Our activation names are HF's ACT2FN keys with the same meaning ("gelu" is the erf form).
_HF_ACTIVATIONS = ("gelu", "gelu_new", "relu")
# Positions a query may be asked about; XLNet has no position table, this only goes into
# tokenizer_config.json as model_max_length.
_DEFAULT_MAX_LENGTH = 512


def xlnet_to_hf_state_dict(params: Mapping[str, Any], config: XLNetConfig
                           ) -> dict[str, np.ndarray]:
  """Maps our param tree to the `XLNetLMHeadModel` state dict (float32), shapes checked.

  Args:
    params: `{'word_embedding', 'mask_emb', 'layer_{i}' | 'layers', 'lm_loss_bias'}` as the
      model's init makes them (optionally under 'params', boxed or not, per-layer or
      scanned); numpy or fully addressable jax arrays. On multi-host meshes gather first.
    config: the model's config; used to check every shape and the layer count.

  Returns:
    HF parameter name -> float32 array in torch layout, without `lm_loss.weight` (the tied
    copy of `transformer.word_embedding.weight`, which transformers does not save).

  Raises:
    ValueError: a tensor is missing or its shape disagrees with the config.
  """
  p = _unbox(params)
  v, d, h, k, f = (config.vocab_size, config.hidden_size, config.num_heads, config.head_dim,
                   config.intermediate_size)
  out: dict[str, np.ndarray] = {}

  put = functools.partial(put_checked, out)

  put("transformer.word_embedding.weight", p, "word_embedding/embedding", (v, d))
  put("transformer.mask_emb", p, "mask_emb", (d,), lambda x: x.reshape(1, 1, d))
  for i, layer in enumerate(layer_trees(p, config.num_layers, "transformer")):
    pre = f"transformer.layer.{i}"
    for proj in ("q", "k", "v", "r"):  # [D, H, Dh], as HF
      put(f"{pre}.rel_attn.{proj}", layer, f"rel_attn/{proj}/kernel", (d, h, k))
    put(f"{pre}.rel_attn.o", layer, "rel_attn/o/kernel", (h, k, d),
        lambda x: x.transpose(2, 0, 1))  # HF: [D, H, Dh]
    for bias in ("r_w_bias", "r_r_bias", "r_s_bias"):
      put(f"{pre}.rel_attn.{bias}", layer, f"rel_attn/{bias}", (h, k))
    put(f"{pre}.rel_attn.seg_embed", layer, "rel_attn/seg_embed", (2, h, k))
    put(f"{pre}.rel_attn.layer_norm.weight", layer, "rel_attn/layer_norm/scale", (d,))
    put(f"{pre}.rel_attn.layer_norm.bias", layer, "rel_attn/layer_norm/bias", (d,))
    put(f"{pre}.ff.layer_1.weight", layer, "ff/layer_1/kernel", (d, f), np.transpose)
    put(f"{pre}.ff.layer_1.bias", layer, "ff/layer_1/bias", (f,))
    put(f"{pre}.ff.layer_2.weight", layer, "ff/layer_2/kernel", (f, d), np.transpose)
    put(f"{pre}.ff.layer_2.bias", layer, "ff/layer_2/bias", (d,))
    put(f"{pre}.ff.layer_norm.weight", layer, "ff/layer_norm/scale", (d,))
    put(f"{pre}.ff.layer_norm.bias", layer, "ff/layer_norm/bias", (d,))
  put("lm_loss.bias", p, "lm_loss_bias", (v,))
  return out


def hf_config_dict(config: XLNetConfig, pad_token_id: int = vocab_lib.PAD_ID,
                   bos_token_id: int = vocab_lib.BOS_ID, eos_token_id: int = vocab_lib.EOS_ID
                   ) -> dict[str, Any]:
  """`config.json` contents for `transformers.XLNetLMHeadModel` (every XLNetConfig field).

  The model fields come from `t5x_like.families.xlnet.model.hf_config_dict`; the sequence-summary
  fields (unused by the LM head) keep XLNetConfig's defaults.
  """
  if config.hidden_act not in _HF_ACTIVATIONS:
    raise ValueError(f"hidden_act {config.hidden_act!r} has no HF equivalent here "
                     f"(expected one of {list(_HF_ACTIVATIONS)})")
  return {
      "architectures": ["XLNetLMHeadModel"],
      "model_type": "xlnet",
      **xlnet_lib.hf_config_dict(config),
      "d_head": config.head_dim,
      "use_mems_eval": True,
      "use_mems_train": False,
      "same_length": False,
      "summary_type": "last",
      "summary_use_proj": True,
      "summary_activation": "tanh",
      "summary_last_dropout": 0.1,
      "start_n_top": 5,
      "end_n_top": 5,
      "tie_word_embeddings": True,
      "pad_token_id": pad_token_id,
      "bos_token_id": bos_token_id,
      "eos_token_id": eos_token_id,
      "dtype": "float32",
  }


def export_xlnet(params: Mapping[str, Any], config: XLNetConfig, out_dir: str,
                 tokenizer_model: str | None = None, num_sentinels: int = 0,
                 model_max_length: int = _DEFAULT_MAX_LENGTH,
                 special_ids: Mapping[str, int] | None = None) -> str:
  """Writes a HuggingFace `XLNetLMHeadModel` folder, atomically (`export.common.export_folder`
  says what each argument means and what it raises)."""
  return export_folder("xlnet", xlnet_to_hf_state_dict, hf_config_dict, params, config,
                       out_dir, tokenizer_model, num_sentinels, special_ids,
                       model_max_length=model_max_length)