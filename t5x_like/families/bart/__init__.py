"""BART encoder-decoder (learned positions with offset 2, layernorm_embedding, tied head),
mirroring `transformers.BartForConditionalGeneration`."""

from __future__ import annotations

from typing import Any

from t5x_like import families, flops, models
from t5x_like.families.bart import export, hf_config, model
from t5x_like.families.bart.config import BartModelConfig


def _module_config(cfg: Any) -> model.BartConfig:
  return models.copy_fields(model.BartConfig, cfg)


def _flops(config: Any) -> float:
  return flops.seq2seq_train_flops_per_step(config, gated=False)


FAMILY = families.register(families.Family(
    name="bart",
    config=BartModelConfig,
    module_config=_module_config,
    build=model.BartForConditionalGeneration,
    features=model.FEATURES,
    packed_features=model.PACKED_FEATURES,
    # Sources have random lengths, so even one block per row is a packed row (one segment,
    # padded tail).
    always_packed=True,
    encoder_decoder=True,
    init_args=2,
    logits=models.encoder_decoder_logits,
    logits_features=models.ENCODER_DECODER_LOGITS_FEATURES,
    required=("input_ids", "decoder_input_ids"),
    lora_targets=("q_proj", "v_proj"),
    flops=_flops,
    export=export.export_bart,
    hf=families.HFSpec(
        model_type="bart",
        architectures=("BartForConditionalGeneration",),
        config_from_hf=hf_config.config_from_hf,
        to_hf=export.bart_to_hf_state_dict,
        probe={"vocab_size": 11, "hidden_size": 8, "num_heads": 2, "intermediate_size": 5,
               "max_position_embeddings": 7},
        tied={"model.encoder.embed_tokens.weight": "model.shared.weight",
              "model.decoder.embed_tokens.weight": "model.shared.weight",
              "lm_head.weight": "model.shared.weight"},
        optional={"final_logits_bias": "no final_logits_bias buffer: ours starts at zero"}),
    # as BartTokenizer (RoBERTa's template): <s> A </s> </s> B </s>; cls = bos, sep = eos
    tokenizer=families.TokenizerSpec(
        single="<s>:0 $A:0 </s>:0", pair="<s>:0 $A:0 </s>:0 </s>:1 $B:1 </s>:1",
        specials=("<s>", "</s>"), roles={"cls_token": "<s>", "sep_token": "</s>"}),
))
