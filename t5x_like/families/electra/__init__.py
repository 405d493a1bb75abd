"""ELECTRA (replaced-token detection): generator + discriminator over shared embeddings,
exported as `transformers.ElectraForPreTraining` and `ElectraForMaskedLM`."""

from __future__ import annotations

from typing import Any

from t5x_like import families, models
from t5x_like.families.electra import export, flops, model
from t5x_like.families.electra.config import ElectraModelConfig


def _module_config(cfg: Any) -> model.ElectraConfig:
  models.xla_attention_only(cfg, "its two towers use the XLA attention path")
  return models.copy_fields(model.ElectraConfig, cfg)


def _logits(module: Any, params: Any, b: dict[str, Any]) -> Any:
  """The discriminator's replaced-token logits [B, L] (ElectraForPreTraining's)."""
  return module.apply({"params": params}, b["input_ids"], b.get("attention_mask"),
                      b.get("token_type_ids"), tower="discriminator", deterministic=True)


FAMILY = families.register(families.Family(
    name="electra",
    config=ElectraModelConfig,
    module_config=_module_config,
    build=model.ElectraForPretraining,
    features=model.FEATURES,
    logits=_logits,
    logits_features=("input_ids", "attention_mask", "token_type_ids"),
    # peft's default target_modules for ELECTRA: query and value (both towers here).
    lora_targets=("attention/query", "attention/value"),
    flops=flops.train_flops_per_step,
    export=export.export_electra,
    tokenizer=families.TokenizerSpec(
        single="<s> $A:0 <sep>:0", pair="<s>:0 $A:0 <sep>:0 $B:1 <sep>:1",
        specials=("<s>", "<sep>"), roles={"cls_token": "<s>", "sep_token": "<sep>"},
        token_type_ids=True),
))
