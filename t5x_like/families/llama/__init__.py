"""Llama decoder-only causal LM (RMSNorm, RoPE, grouped-query attention, SwiGLU), mirroring
`transformers.LlamaForCausalLM`."""

from __future__ import annotations

import re
from typing import Any

from t5x_like import families, models
from t5x_like.families.llama import export, flops, hf_config, model
from t5x_like.families.llama.config import LlamaModelConfig

_LAYER_INV_FREQ = re.compile(r"^model\.layers\.(\d+)\.self_attn\.rotary_emb\.inv_freq$")


def _module_config(cfg: Any) -> model.LlamaConfig:
  return models.copy_fields(model.LlamaConfig, cfg)


def _logits(module: Any, params: Any, b: dict[str, Any]) -> Any:
  return module.apply({"params": params}, b["input_ids"], b.get("segment_ids"),
                      b.get("positions"), deterministic=True)


def _normalise_names(tensors: dict[str, Any]) -> dict[str, Any]:
  # transformers before 4.31 saved each layer's RoPE buffer; it is computed, so it joins the
  # ignored `model.rotary_emb.` buffer under a name that keeps its layer.
  return {(f"model.rotary_emb.inv_freq.{m.group(1)}" if (m := _LAYER_INV_FREQ.match(name))
           else name): value for name, value in tensors.items()}


FAMILY = families.register(families.Family(
    name="llama",
    config=LlamaModelConfig,
    module_config=_module_config,
    build=model.LlamaForCausalLM,
    features=model.FEATURES,
    packed_features=model.PACKED_FEATURES,
    decoder_only=True,
    # RoPE has no table, but the model is only trained (and HF's generate only runs) up to
    # max_position_embeddings: generation refuses longer prompts
    context_length=lambda m: m.max_position_embeddings,
    logits=_logits,
    logits_features=("input_ids", "segment_ids", "positions"),
    lora_targets=("q_proj", "v_proj"),
    flops=flops.train_flops_per_step,
    export=export.export_llama,
    hf=families.HFSpec(
        model_type="llama",
        architectures=("LlamaForCausalLM",),
        config_from_hf=hf_config.config_from_hf,
        to_hf=export.llama_to_hf_state_dict,
        # Sizes >= 2 and distinct, so every axis shows in the layouts; an even head size
        # (RoPE) unlike hidden / heads.
        probe={"vocab_size": 11, "hidden_size": 8, "num_heads": 4, "num_kv_heads": 2,
               "head_dim": 6, "intermediate_size": 5},
        # A tied head HF saved anyway; an untied one is the exporter's own lm_head.weight.
        tied={"lm_head.weight": "model.embed_tokens.weight"},
        ignored={"model.rotary_emb.": "RoPE buffer (we compute inv_freq from rope_theta)"},
        normalise_names=_normalise_names),
    # BOS before each sequence, no EOS (LlamaTokenizer's add_bos_token / add_eos_token).
    tokenizer=families.TokenizerSpec(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                     specials=("<s>",),
                                     roles={"bos_token": "<s>", "eos_token": "</s>"},
                                     padding_side="left"),
))
