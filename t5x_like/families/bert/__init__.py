"""BERT / RoBERTa encoder with a tied MLM head, mirroring `transformers.BertForMaskedLM`."""

from __future__ import annotations

from typing import Any

from t5x_like import families, models
from t5x_like.families.bert import export, flops, hf_config, model
from t5x_like.families.bert.config import BertModelConfig


def _module_config(cfg: Any) -> model.BertConfig:
  return models.copy_fields(model.BertConfig, cfg)


def _logits(module: Any, params: Any, b: dict[str, Any]) -> Any:
  return module.apply({"params": params}, b["input_ids"], b.get("attention_mask"),
                      b.get("token_type_ids"), segment_ids=b.get("segment_ids"),
                      positions=b.get("positions"), deterministic=True)


def _normalise_names(tensors: dict[str, Any]) -> dict[str, Any]:
  # BertModel saves without the `bert.` prefix; very old (TF-converted) files call the
  # LayerNorm parameters gamma / beta.
  bare = not any(k.startswith("bert.") for k in tensors)
  out = {}
  for name, value in tensors.items():
    if bare and not name.startswith("cls."):
      name = "bert." + name
    if ".LayerNorm." in name:
      name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta",
                                                                         "LayerNorm.bias")
    out[name] = value
  return out


FAMILY = families.register(families.Family(
    name="bert",
    config=BertModelConfig,
    module_config=_module_config,
    build=model.BertForMaskedLM,
    features=model.FEATURES,
    packed_features=model.PACKED_FEATURES,
    logits=_logits,
    logits_features=("input_ids", "attention_mask", "token_type_ids", "segment_ids",
                     "positions"),
    lora_targets=("attention/query", "attention/value"),
    flops=flops.train_flops_per_step,
    export=export.export_bert,
    hf=families.HFSpec(
        model_type="bert",
        architectures=("BertForMaskedLM", "BertModel", "BertForPreTraining"),
        config_from_hf=hf_config.config_from_hf,
        to_hf=export.bert_to_hf_state_dict,
        probe={"vocab_size": 11, "hidden_size": 8, "num_heads": 2, "intermediate_size": 5,
               "max_position_embeddings": 7, "type_vocab_size": 3},
        tied={"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
              "cls.predictions.decoder.bias": "cls.predictions.bias"},
        ignored={"bert.embeddings.position_ids": "position-id buffer (we compute positions)",
                 "bert.pooler.": "pooler (not part of our BertForMaskedLM)",
                 "cls.seq_relationship.": "next-sentence head (not part of our model)"},
        optional={"cls.": "no MLM head in the checkpoint (e.g. a BertModel): our MLM head "
                          "is newly initialised"},
        aliases={"cls.predictions.bias": "cls.predictions.decoder.bias"},
        normalise_names=_normalise_names),
    tokenizer=families.TokenizerSpec(
        single="<s> $A:0 <sep>:0", pair="<s>:0 $A:0 <sep>:0 $B:1 <sep>:1",
        specials=("<s>", "<sep>"), roles={"cls_token": "<s>", "sep_token": "<sep>"},
        token_type_ids=True),
))
