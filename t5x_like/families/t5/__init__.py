"""T5 v1.1 encoder-decoder (RMSNorm, relative position buckets, gated FFN), mirroring
`transformers.T5ForConditionalGeneration`."""

from __future__ import annotations

from typing import Any

from t5x_like import families, flops, models
from t5x_like.families.t5 import export, hf_config, model
from t5x_like.families.t5.config import T5ModelConfig


def _module_config(cfg: Any) -> model.T5Config:
  models.xla_attention_only(cfg, "its relative position bias is added to the attention "
                            "logits, which the splash kernel cannot take")
  return models.copy_fields(model.T5Config, cfg)


def _flops(config: Any) -> float:
  return flops.seq2seq_train_flops_per_step(config, gated=True, head_dim=config.model.head_dim)


FAMILY = families.register(families.Family(
    name="t5",
    config=T5ModelConfig,
    module_config=_module_config,
    build=model.T5ForConditionalGeneration,
    features=model.FEATURES,
    packed_features=model.PACKED_FEATURES,
    encoder_decoder=True,
    init_args=2,
    logits=models.encoder_decoder_logits,
    logits_features=models.ENCODER_DECODER_LOGITS_FEATURES,
    required=("input_ids", "decoder_input_ids"),
    lora_targets=("q", "v"),
    flops=_flops,
    export=export.export_t5,
    hf=families.HFSpec(
        model_type="t5",
        architectures=("T5ForConditionalGeneration",),
        config_from_hf=hf_config.config_from_hf,
        to_hf=export.t5_to_hf_state_dict,
        probe={"vocab_size": 11, "hidden_size": 8, "num_heads": 2, "head_dim": 3,
               "intermediate_size": 5, "relative_attention_num_buckets": 4},
        tied={"encoder.embed_tokens.weight": "shared.weight",
              "decoder.embed_tokens.weight": "shared.weight",
              "lm_head.weight": "shared.weight"},  # a tied head; untied ones are consumed
        # An unscaled head HF tied in memory is saved only as shared.weight.
        aliases={"lm_head.weight": "shared.weight"}),
    # eos after each sequence, no CLS (T5Tokenizer)
    tokenizer=families.TokenizerSpec(single="$A:0 </s>:0", pair="$A:0 </s>:0 $B:1 </s>:1",
                                     specials=("</s>",)),
))
