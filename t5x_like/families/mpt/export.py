"""Export our Flax `MptForCausalLM` as a HuggingFace `transformers.MptForCausalLM` folder.

The folder holds `config.json`, `model.safetensors` (float32), the tokenizer files (see
`t5x_like.export.tokenizer`) and the marker file of our exports. The safetensors file has the
keys `MptForCausalLM.save_pretrained` writes in transformers 5: the tied `lm_head.weight` is
left out (re-tied on load to `transformer.wte.weight`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipelines import vocab as vocab_lib
from t5x_like.export.common import _unbox, export_folder, layer_trees, put_checked
from t5x_like.families.mpt.model import MptConfig

# transformers' MptMLP is `Linear(d, 4d) -> GELU(approximate="none") -> Linear(4d, d)`
# whatever config.json says: its expansion_ratio and activation are fixed there.
HF_EXPANSION_RATIO = 4
HF_ACTIVATION = "gelu"


def mpt_to_hf_state_dict(params: Mapping[str, Any], config: MptConfig
                         ) -> dict[str, np.ndarray]:
  """Maps our param tree to the `MptForCausalLM` state dict (float32, torch layouts).

  Args:
    params: `{'transformer': ...}` as `MptForCausalLM.init` makes it (optionally under
      'params'), scanned or looped; numpy or fully addressable jax arrays.
    config: the model's config; fixes the shapes checked and the layer count.

  Returns:
    HF parameter name -> float32 array, without the tied `lm_head.weight`.
  """
  t = _unbox(params)["transformer"]
  d, h, k, f = config.hidden_size, config.num_heads, config.head_dim, config.intermediate_size
  out: dict[str, np.ndarray] = {}
  put_checked(out, "transformer.wte.weight", t, "wte/embedding", (config.vocab_size, d))
  for i, layer in enumerate(layer_trees(t["blocks"], config.num_layers, "blocks")):
    pre = f"transformer.blocks.{i}."
    put_checked(out, pre + "norm_1.weight", layer, "norm_1/scale", (d,))
    # [D, 3, H, K] -> [3*H*K, D]: HF chunks Wqkv's outputs into q, k, v, each head-major.
    put_checked(out, pre + "attn.Wqkv.weight", layer, "attn/Wqkv/kernel", (d, 3, h, k),
                lambda w: w.reshape(d, -1).T)
    put_checked(out, pre + "attn.out_proj.weight", layer, "attn/out_proj/kernel", (h, k, d),
                lambda w: w.reshape(-1, d).T)
    put_checked(out, pre + "norm_2.weight", layer, "norm_2/scale", (d,))
    put_checked(out, pre + "ffn.up_proj.weight", layer, "ffn/up_proj/kernel", (d, f), np.transpose)
    put_checked(out, pre + "ffn.down_proj.weight", layer, "ffn/down_proj/kernel", (f, d),
                np.transpose)
  put_checked(out, "transformer.norm_f.weight", t, "norm_f/scale", (d,))
  return out


def hf_config_dict(config: MptConfig, pad_token_id: int = vocab_lib.PAD_ID,
                   bos_token_id: int = vocab_lib.BOS_ID,
                   eos_token_id: int = vocab_lib.EOS_ID) -> dict[str, Any]:
  """`config.json` contents for `transformers.MptForCausalLM`.

  Raises:
    ValueError: a model transformers' MPT cannot express (its MLP is fixed at 4 x d_model
      with exact GELU; heads must divide d_model).
  """
  if config.intermediate_size != HF_EXPANSION_RATIO * config.hidden_size:
    raise ValueError(f"intermediate_size ({config.intermediate_size}) must be "
                     f"{HF_EXPANSION_RATIO} x hidden_size ({config.hidden_size}) for "
                     "transformers' MptForCausalLM, whose MLP ignores expansion_ratio")
  if config.hidden_act != HF_ACTIVATION:
    raise ValueError(f"hidden_act {config.hidden_act!r} has no HF MPT equivalent (its MLP "
                     f"uses exact GELU, {HF_ACTIVATION!r})")
  if config.hidden_size % config.num_heads:
    raise ValueError("hidden_size must be divisible by num_heads for HF MPT")
  return {
      "architectures": ["MptForCausalLM"],
      "model_type": "mpt",
      "vocab_size": config.vocab_size,
      "d_model": config.hidden_size,
      "n_heads": config.num_heads,
      "n_layers": config.num_layers,
      "expansion_ratio": HF_EXPANSION_RATIO,
      "max_seq_len": config.max_seq_len,
      # Our dropout_rate is HF's attn_pdrop (attention probabilities and both residual
      # branches), but transformers 5 types attn_pdrop as an int (strict), so a fractional rate
      # would make the folder unloadable: it goes in resid_pdrop (unused by HF, llm-foundry's
      # residual dropout) and attn_pdrop stays 0; our import reads it back from there.
      "resid_pdrop": config.dropout_rate,
      "emb_pdrop": 0.0,
      "layer_norm_epsilon": config.layer_norm_eps,
      "learned_pos_emb": False,  # ALiBi: no position table
      "attn_config": {
          "attn_type": "multihead_attention",
          "attn_pdrop": 0,
          "attn_impl": "torch",
          "clip_qkv": None,
          "softmax_scale": None,
          "prefix_lm": False,
          "qk_ln": False,
          "attn_uses_sequence_id": False,
          "alibi": True,
          "alibi_bias_max": config.alibi_bias_max,
      },
      "init_device": "cpu",
      "logit_scale": None,
      "no_bias": True,
      "embedding_fraction": 1.0,
      "norm_type": "low_precision_layernorm",
      "use_cache": False,
      "initializer_range": config.initializer_range,
      "tie_word_embeddings": True,
      "pad_token_id": pad_token_id,
      "bos_token_id": bos_token_id,
      "eos_token_id": eos_token_id,
      "dtype": "float32",
  }


def export_mpt(params: Mapping[str, Any], config: MptConfig, out_dir: str,
               tokenizer_model: str | None = None, num_sentinels: int = 0,
               special_ids: Mapping[str, int] | None = None) -> str:
  """Writes a HuggingFace `MptForCausalLM` folder, atomically (`export.common.export_folder`
  says what each argument means and what it raises)."""
  return export_folder("mpt", mpt_to_hf_state_dict, hf_config_dict, params, config, out_dir,
                       tokenizer_model, num_sentinels, special_ids,
                       model_max_length=config.max_seq_len)
