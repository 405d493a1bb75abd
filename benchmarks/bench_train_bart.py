"""Training throughput of our jitted BART denoising step versus HF
`BartForConditionalGeneration` (PyTorch) on the same shape, in the same invocation.

Both sides train the same BART architecture (post-LN, GELU, learned positions with offset 2,
layernorm_embedding, tied head + final_logits_bias, dropout 0) with AdamW (same lr, betas, eps,
weight decay with biases/LayerNorm excluded, global-norm clipping at 1.0) on the same batches:
the default noise mix (text infilling 0.3, Poisson(3), sentence permutation 1.0) from
`denoising.make_example` on random blocks, each block one (padded) row: sources of at most
`seq_len` tokens with segment ids/positions for ours and the equivalent attention mask for HF,
targets the clean `<s> block </s>`, decoder inputs the targets shifted right from `</s>`.
Batches are pre-built on the device for both sides; steps are timed one by one after
warm-up, compilation is excluded and reported separately, and the two sides alternate in
rounds so machine noise hits both alike (`benchmarks.train_harness`). Run from the repo root:

  python -m benchmarks.bench_train_bart [--shapes bart_small_bench] [--steps 20] [--warmup 3]
      [--rounds 4] [--dtype float32|bfloat16] [--json out.json]

Tokens/s counts the row positions of both streams (B x (source + target)); MFU uses the same
analytic FLOP count for both sides (`t5x_like.flops.train_flops_per_step`, full rows).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import train_harness
from benchmarks.train_spec import Batch, TrainSpec, adamw, source_target_tokens, stack_rows
from data_pipelines import packing
from data_pipelines.objectives import denoising
from data_pipelines.vocab import VocabInfo
from pretrain import data as data_glue
from t5x_like.config import Config
from t5x_like.objectives import denoising as denoising_objective


def make_batches(config: Config, vocab: VocabInfo, count: int, seed: int) -> list[Batch]:
  """int32 batches of one-segment rows: input_ids, segment_ids, positions [B, L];
  decoder_input_ids, labels, decoder_segment_ids, decoder_positions [B, T]."""
  d = config.data
  params = denoising_objective.params(config)
  raw = data_glue.block_length(config)
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    # The synthetic vocabulary makes ~1/20 of the ids sentence ends, so random blocks hold
    # about 6 sentences each and sentence permutation has work to do.
    blocks = rng.choice(vocab.normal_ids, size=(config.train.batch_size, raw)).astype(np.int32)
    rows = []
    for block in blocks:
      ex = denoising.make_example(block, rng, params, vocab)
      row = packing.pack_one([ex], {"input_ids": d.seq_len, "labels": d.target_len},
                             groups={"input_ids": "", "labels": "decoder_"})
      targets = np.where(row["labels"] < 0, 0, row["labels"])
      row["decoder_input_ids"] = packing.shift_right_per_segment(
          targets, row["decoder_segment_ids"], vocab.eos_id)
      rows.append(row)
    batches.append(stack_rows(rows))
  return batches


def row_fields(config: Config, batches: list[Batch]) -> dict[str, Any]:
  m, d = config.model, config.data
  return {"batch_size": config.train.batch_size, "inputs": d.seq_len, "targets": d.target_len,
          "hidden_size": m.hidden_size, "num_layers": m.num_layers,
          "num_decoder_layers": m.num_decoder_layers, "num_heads": m.num_heads,
          "intermediate_size": m.intermediate_size, "vocab_size": m.vocab_size,
          "source_fill": float(np.mean([np.mean(x["segment_ids"] > 0) for x in batches]))}


def hf_model(config: Config) -> Any:
  """HF `BartForConditionalGeneration` with our config."""
  import transformers

  m = config.model
  return transformers.BartForConditionalGeneration(transformers.BartConfig(
      vocab_size=m.vocab_size, d_model=m.hidden_size, encoder_layers=m.num_layers,
      decoder_layers=m.num_decoder_layers or m.num_layers, encoder_attention_heads=m.num_heads,
      decoder_attention_heads=m.num_heads, encoder_ffn_dim=m.intermediate_size,
      decoder_ffn_dim=m.intermediate_size, max_position_embeddings=m.max_position_embeddings,
      activation_function=m.hidden_act, dropout=m.dropout_rate,
      attention_dropout=m.attention_dropout_rate, activation_dropout=0.0,
      init_std=m.initializer_range, scale_embedding=m.scale_embedding, pad_token_id=0,
      bos_token_id=3, eos_token_id=1, decoder_start_token_id=1, forced_eos_token_id=1))


def hf_inputs(batch: Batch) -> dict[str, Any]:
  """HF's inputs: the attention mask is where ours has a segment (the row's real source)."""
  import torch

  return {"input_ids": torch.from_numpy(batch["input_ids"].astype(np.int64)),
          "attention_mask": torch.from_numpy((batch["segment_ids"] > 0).astype(np.int64)),
          "decoder_input_ids": torch.from_numpy(batch["decoder_input_ids"].astype(np.int64)),
          "labels": torch.from_numpy(batch["labels"].astype(np.int64))}


SPEC = TrainSpec(
    family="BART", description=__doc__.splitlines()[0], preset="bart_tiny",
    shapes={
        # A BART-small shape like the T5 one: 4+4 layers, d=256, rows of 128 + 128.
        "bart_small_bench": ("model.num_layers=4", "model.num_decoder_layers=4",
                             "model.hidden_size=256", "model.num_heads=4",
                             "model.intermediate_size=1024", "model.vocab_size=8000",
                             "model.max_position_embeddings=128", "data.seq_len=128",
                             "train.batch_size=16"),
        "bart_tiny": (),
    },
    default_shapes="bart_small_bench",
    overrides=("model.dropout_rate=0.0", "model.attention_dropout_rate=0.0"),
    make_batches=make_batches, row_fields=row_fields, hf_model=hf_model,
    hf_optimizer=lambda model, config: adamw(
        model, config.optim,
        lambda name: "bias" in name or "layer_norm" in name or "layernorm" in name),
    hf_inputs=hf_inputs, tokens_per_step=source_target_tokens,
    vocab_options={"sentence_end_every": 20}, dtypes=True,
    flush_denormals=True,  # Adam's second moments of tiny gradients reach float32 denormals
    resolve=data_glue.resolve_lengths, console_columns=(("source fill", "source_fill", ".0%"),))


def main(argv: list[str] | None = None) -> dict[str, Any]:
  return train_harness.main(SPEC, argv)


if __name__ == "__main__":
  main()
