"""MPT (decoder-only, ALiBi, fused q/k/v, bias-free), mirroring `transformers.MptForCausalLM`."""

from __future__ import annotations

from typing import Any

from t5x_like import families, models
from t5x_like.families.mpt import export, flops, hf_config, model
from t5x_like.families.mpt.config import MptModelConfig


def _module_config(cfg: Any) -> model.MptConfig:
  models.xla_attention_only(cfg, "its ALiBi bias is added to the attention logits, which the "
                            "splash kernel cannot take")
  return models.copy_fields(model.MptConfig, cfg)


def _logits(module: Any, params: Any, b: dict[str, Any]) -> Any:
  return module.apply({"params": params}, b["input_ids"], b.get("segment_ids"),
                      b.get("positions"), deterministic=True)


FAMILY = families.register(families.Family(
    name="mpt",
    config=MptModelConfig,
    module_config=_module_config,
    build=model.MptForCausalLM,
    features=model.FEATURES,
    packed_features=model.PACKED_FEATURES,
    decoder_only=True,  # no context_length: ALiBi reads past its training length
    logits=_logits,
    logits_features=("input_ids", "segment_ids", "positions"),
    lora_targets=("Wqkv",),
    flops=flops.train_flops_per_step,
    export=export.export_mpt,
    hf=families.HFSpec(
        model_type="mpt",
        architectures=("MptForCausalLM",),
        config_from_hf=hf_config.config_from_hf,
        to_hf=export.mpt_to_hf_state_dict,
        probe={"vocab_size": 11, "hidden_size": 8, "num_heads": 2, "intermediate_size": 5},
        tied={"lm_head.weight": "transformer.wte.weight"}),
    # as MPT's GPT-NeoX tokenizer: no BOS or EOS added to a sequence
    tokenizer=families.TokenizerSpec(single="$A:0", pair="$A:0 $B:1", specials=()),
))
