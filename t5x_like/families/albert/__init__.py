"""ALBERT (Lan et al. 2020): factorised embeddings (E -> H) and one layer shared by all
`num_layers`, with the MLM and sentence-order heads, mirroring
`transformers.AlbertForPreTraining`; trained with the `sentence_order` objective (whole-word
n-gram MLM + SOP)."""

from __future__ import annotations

from typing import Any

from t5x_like import families, models
from t5x_like.families.albert import export, flops, hf_config, model
from t5x_like.families.albert.config import AlbertModelConfig


def _module_config(cfg: Any) -> model.AlbertConfig:
  models.xla_attention_only(cfg, "its shared layer uses the XLA attention path")
  return models.copy_fields(model.AlbertConfig, cfg)


def _logits(module: Any, params: Any, b: dict[str, Any]) -> Any:
  """The MLM logits [B, L, V] (AlbertForPreTraining's `prediction_logits`)."""
  return module.apply({"params": params}, b["input_ids"], b.get("attention_mask"),
                      b.get("token_type_ids"), deterministic=True)


def _normalise_names(tensors: dict[str, Any]) -> dict[str, Any]:
  # AlbertModel saves without the `albert.` prefix.
  heads = ("predictions.", "sop_classifier.")
  if any(k.startswith("albert.") for k in tensors):
    return tensors
  return {(k if k.startswith(heads) else "albert." + k): v for k, v in tensors.items()}


FAMILY = families.register(families.Family(
    name="albert",
    config=AlbertModelConfig,
    module_config=_module_config,
    build=model.AlbertForPreTraining,
    features=model.FEATURES,
    logits=_logits,
    logits_features=("input_ids", "attention_mask", "token_type_ids"),
    # peft's default target_modules for ALBERT: query and value (of the one shared layer).
    lora_targets=("attention/query", "attention/value"),
    flops=flops.train_flops_per_step,
    export=export.export_albert,
    hf=families.HFSpec(
        model_type="albert",
        architectures=("AlbertForPreTraining", "AlbertForMaskedLM", "AlbertModel"),
        config_from_hf=hf_config.config_from_hf,
        to_hf=export.albert_to_hf_state_dict,
        probe={"vocab_size": 11, "hidden_size": 8, "num_heads": 2, "intermediate_size": 5,
               "embedding_size": 6, "max_position_embeddings": 7, "type_vocab_size": 3},
        tied={"predictions.decoder.weight": "albert.embeddings.word_embeddings.weight",
              "predictions.decoder.bias": "predictions.bias"},
        ignored={"albert.embeddings.position_ids": "position-id buffer (we compute positions)"},
        optional={"albert.pooler.": "no pooler in the checkpoint (e.g. AlbertForMaskedLM): "
                                    "newly initialised",
                  "sop_classifier.": "no sentence-order head in the checkpoint: newly "
                                     "initialised",
                  "predictions.": "no MLM head in the checkpoint (an AlbertModel): newly "
                                  "initialised"},
        normalise_names=_normalise_names),
    tokenizer=families.TokenizerSpec(
        single="<s> $A:0 <sep>:0", pair="<s>:0 $A:0 <sep>:0 $B:1 <sep>:1",
        specials=("<s>", "<sep>"), roles={"cls_token": "<s>", "sep_token": "<sep>"},
        token_type_ids=True),
))
