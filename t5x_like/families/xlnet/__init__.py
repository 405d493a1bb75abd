"""XLNet (two-stream relative attention, segment encoding, memory), mirroring
`transformers.XLNetLMHeadModel`."""

from __future__ import annotations

import dataclasses
from typing import Any

from t5x_like import families, models
from t5x_like.families.xlnet import export, flops, hf_config, model
from t5x_like.families.xlnet.config import XLNetModelConfig


def _module_config(cfg: Any) -> model.XLNetConfig:
  """XLNet's fields from the run config (bi_data and memory included); attention stays
  bidirectional and the r-biases untied (transformers' model unties them whatever untie_r
  says)."""
  models.xla_attention_only(cfg, "its relative attention adds position terms to the logits, "
                            "which the splash kernel cannot take")
  names = [f.name for f in dataclasses.fields(model.XLNetConfig)
           if f.name not in ("untie_r", "attn_type")]
  return model.XLNetConfig(**{name: getattr(cfg, name) for name in names})


def _logits(module: Any, params: Any, b: dict[str, Any]) -> Any:
  return module.apply({"params": params}, b["input_ids"], b.get("token_type_ids"),
                      b.get("perm_mask"), b.get("target_mapping"), b.get("attention_mask"),
                      deterministic=True)


FAMILY = families.register(families.Family(
    name="xlnet",
    config=XLNetModelConfig,
    module_config=_module_config,
    build=model.XLNetLMHeadModel,
    features=model.FEATURES,  # rows are never packed (the objective refuses packing)
    logits=_logits,
    logits_features=("input_ids", "token_type_ids", "perm_mask", "target_mapping",
                     "attention_mask"),
    float_features=("perm_mask", "target_mapping"),
    lora_targets=("ff/layer_1", "ff/layer_2"),
    flops=flops.train_flops_per_step,
    export=export.export_xlnet,
    hf=families.HFSpec(
        model_type="xlnet",
        architectures=("XLNetLMHeadModel",),
        config_from_hf=hf_config.config_from_hf,
        to_hf=export.xlnet_to_hf_state_dict,
        probe={"vocab_size": 11, "hidden_size": 8, "num_heads": 2, "intermediate_size": 5},
        tied={"lm_loss.weight": "transformer.word_embedding.weight"}),
    # as XLNetTokenizer: A <sep> <cls>, CLS last with segment 2; our <s> is its <cls>; it
    # pads on the left so the CLS at the end stays last
    tokenizer=families.TokenizerSpec(
        single="$A:0 <sep>:0 <s>:2", pair="$A:0 <sep>:0 $B:1 <sep>:1 <s>:2",
        specials=("<sep>", "<s>"), roles={"cls_token": "<s>", "sep_token": "<sep>"},
        token_type_ids=True, padding_side="left"),
))
