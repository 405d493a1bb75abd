"""Training throughput of our jitted BERT MLM step versus HF `BertForMaskedLM` (PyTorch).

For each shape both sides train the same architecture (vocab, hidden, layers, heads, FFN, max
positions, erf-GELU, LayerNorm eps, dropout 0) with AdamW (same lr, betas, eps, weight decay
with biases/LayerNorm excluded, global-norm clipping at 1.0) on the same MLM batches. Batches
come from the real objective (`mlm.make_example` on random blocks) and are pre-built on the
device for both sides, so input time is excluded. Steps are timed one by one (our side with
`jax.block_until_ready`), compilation is excluded and reported separately, and the two sides
run interleaved in rounds so machine noise hits both alike (`benchmarks.train_harness`).
Run from the repo root:

  python -m benchmarks.bench_train [--shapes bert_tiny,bert_small] [--steps 20] [--warmup 3]
      [--rounds 4] [--json out.json]

Ours scores only the masked positions (the head gathers them first, as the original BERT);
HF computes logits at all B*L positions. That difference is part of what is compared. MFU
uses the same FLOP count for both sides (`t5x_like.flops.train_flops_per_step`, the FLOPs the
model actually needs), so HF's extra head FLOPs count as waste, not as work.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import train_harness
from benchmarks.train_spec import (
  Batch,
  TrainSpec,
  adamw,
  encoder_row_fields,
  stack_rows,
  torch_inputs,
)
from data_pipelines.objectives import mlm
from data_pipelines.vocab import VocabInfo
from t5x_like.config import Config


def make_batches(config: Config, vocab: VocabInfo, count: int, seed: int) -> list[Batch]:
  """`count` int32 batches [B, L] from the MLM objective on random blocks (EOS every ~300)."""
  b, length = config.train.batch_size, config.data.seq_len
  params = mlm.MLMParams(max_predictions=config.objective.predictions_per_row(config),
                         mask_prob=config.objective.mask_prob,
                         mask_token_frac=config.objective.mask_token_frac,
                         random_token_frac=config.objective.random_token_frac)
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    blocks = rng.choice(vocab.normal_ids, size=(b, length - 2))
    blocks[rng.random(blocks.shape) < 1 / 300] = vocab.eos_id
    batches.append(stack_rows([mlm.make_example(block, rng, params, vocab)
                               for block in blocks.astype(np.int32)]))
  return batches


def row_fields(config: Config, batches: list[Batch]) -> dict[str, Any]:
  return encoder_row_fields(config, batches,
                            max_predictions=config.objective.predictions_per_row(config))


def hf_model(config: Config) -> Any:
  """HF `BertForMaskedLM` with our config."""
  import transformers

  m = config.model
  return transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
      num_attention_heads=m.num_heads, intermediate_size=m.intermediate_size,
      max_position_embeddings=m.max_position_embeddings, type_vocab_size=m.type_vocab_size,
      hidden_act=m.hidden_act, layer_norm_eps=m.layer_norm_eps,
      hidden_dropout_prob=m.dropout_rate, attention_probs_dropout_prob=m.attention_dropout_rate,
      initializer_range=m.initializer_range, pad_token_id=0))


SPEC = TrainSpec(
    family="BERT", description=__doc__.splitlines()[0], preset="bert_tiny",
    # Dropout is 0 on both sides (the bert_tiny preset's value), so both run the same math.
    shapes={
        "bert_tiny": (),
        "bert_small": ("model.num_layers=4", "model.hidden_size=256", "model.num_heads=4",
                       "model.intermediate_size=1024", "model.max_position_embeddings=128",
                       "model.vocab_size=8000", "data.seq_len=128", "train.batch_size=16",
                       "model.dropout_rate=0.0", "model.attention_dropout_rate=0.0"),
    },
    default_shapes="bert_tiny,bert_small", overrides=(), make_batches=make_batches,
    row_fields=row_fields, hf_model=hf_model,
    hf_optimizer=lambda model, config: adamw(
        model, config.optim, lambda name: name.endswith("bias") or "LayerNorm" in name),
    hf_inputs=lambda batch: torch_inputs(
        batch, ("input_ids", "attention_mask", "token_type_ids", "labels")))


def main(argv: list[str] | None = None) -> dict[str, Any]:
  return train_harness.main(SPEC, argv)


if __name__ == "__main__":
  main()
