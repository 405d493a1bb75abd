"""Training throughput of our jitted ALBERT step (whole-word n-gram MLM + sentence-order
prediction) versus HF `AlbertForPreTraining` (PyTorch) on the same objective.

Both sides train the same model (factorised embeddings, one shared layer, tied MLM decoder,
SOP head; gelu_new, dropout 0) with AdamW (same lr, betas, eps, weight decay with
biases/LayerNorm excluded, global-norm clipping at 1.0) on the same batches from the real
objective (`sentence_order.make_example` on random blocks with sentence ends and documents).
The HF step: `AlbertForPreTraining(..., labels=, sentence_order_label=)`, whose loss is the
MLM cross-entropy (logits at every position) + the SOP cross-entropy, as ours
(`t5x_like/objectives/sentence_order.py`, which scores only the masked positions). Run from
the repo root:

  python -m benchmarks.bench_train_albert [--shapes albert_tiny,albert_base_bench]
      [--steps 20] [--warmup 3] [--rounds 4] [--json out.json]
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
from data_pipelines.objectives import sentence_order as sop
from data_pipelines.vocab import VocabInfo
from t5x_like.config import Config
from t5x_like.objectives import sentence_order as sop_objective


def make_batches(config: Config, vocab: VocabInfo, count: int, seed: int) -> list[Batch]:
  """`count` int32 batches of the objective on random blocks (a sentence end every ~12
  tokens, a document end every ~300)."""
  b, length = config.train.batch_size, config.data.seq_len
  params = sop_objective.params(config)
  rng = np.random.default_rng(seed)
  ends = np.flatnonzero(vocab.sentence_end) if vocab.sentence_end is not None else np.zeros(0)
  batches = []
  for _ in range(count):
    blocks = rng.choice(vocab.normal_ids, size=(b, length - 3))
    if ends.size:
      stops = rng.random(blocks.shape) < 1 / 12
      blocks[stops] = rng.choice(ends, size=int(stops.sum()))
    blocks[rng.random(blocks.shape) < 1 / 300] = vocab.eos_id
    batches.append(stack_rows([sop.make_example(block, rng, params, vocab)
                               for block in blocks.astype(np.int32)]))
  return batches


def row_fields(config: Config, batches: list[Batch]) -> dict[str, Any]:
  return encoder_row_fields(config, batches, "embedding_size")


def hf_model(config: Config) -> Any:
  import transformers

  m = config.model
  return transformers.AlbertForPreTraining(transformers.AlbertConfig(
      vocab_size=m.vocab_size, embedding_size=m.embedding_size, hidden_size=m.hidden_size,
      num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
      intermediate_size=m.intermediate_size, hidden_act=m.hidden_act,
      max_position_embeddings=m.max_position_embeddings, type_vocab_size=m.type_vocab_size,
      layer_norm_eps=m.layer_norm_eps, hidden_dropout_prob=m.dropout_rate,
      attention_probs_dropout_prob=m.attention_dropout_rate, classifier_dropout_prob=0.0,
      initializer_range=m.initializer_range, pad_token_id=0))


SPEC = TrainSpec(
    family="ALBERT", description=__doc__.splitlines()[0], preset="albert_tiny",
    shapes={
        "albert_tiny": (),
        # ALBERT-base's shared layer (E=128, d=768, 12 heads, FFN 3072) applied 4 times,
        # L=128, B=8.
        "albert_base_bench": (
            "model.num_layers=4", "model.hidden_size=768", "model.num_heads=12",
            "model.intermediate_size=3072", "model.embedding_size=128",
            "model.max_position_embeddings=128", "model.vocab_size=8000", "data.seq_len=128",
            "train.batch_size=8"),
    },
    default_shapes="albert_tiny,albert_base_bench",
    overrides=("model.dropout_rate=0.0", "model.attention_dropout_rate=0.0"),
    make_batches=make_batches, row_fields=row_fields, hf_model=hf_model,
    hf_optimizer=lambda model, config: adamw(
        model, config.optim, lambda name: name.endswith("bias") or "LayerNorm" in name),
    hf_inputs=lambda batch: torch_inputs(
        batch, ("input_ids", "attention_mask", "token_type_ids", "labels",
                "sentence_order_label")))


def main(argv: list[str] | None = None) -> dict[str, Any]:
  return train_harness.main(SPEC, argv)


if __name__ == "__main__":
  main()
