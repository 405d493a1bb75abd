"""Training throughput of our jitted T5 span-corruption step versus HF
`T5ForConditionalGeneration` (PyTorch) on the same shape, in the same invocation.

Both sides train the same T5 v1.1 architecture (gated-GELU, RMSNorm, relative position
buckets, untied head, dropout 0) with Adafactor at a constant learning rate (factored second
moments, decay exponent 0.8, update clipping 1.0, parameter-scale relative updates, no
momentum: HF's `transformers.optimization.Adafactor` with `relative_step=False`, ours
`optax.adafactor`), on the same span-corruption batches from `span_corruption.make_example`
on random blocks, pre-built on the device for both sides. Loss = mean cross-entropy over the
target tokens on both sides (z-loss off). Steps are timed one by one after warm-up,
compilation is excluded and reported separately, and the two sides alternate in rounds so
machine noise hits both alike (`benchmarks.train_harness`). Run from the repo root:

  python -m benchmarks.bench_train_t5 [--shapes t5_small_bench] [--steps 20] [--warmup 3]
      [--rounds 4] [--dtype float32|bfloat16] [--json out.json]

Tokens/s counts encoder input tokens + decoder target tokens per second. MFU uses the same
analytic FLOP count for both sides (`t5x_like.flops.train_flops_per_step`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import train_harness
from benchmarks.train_spec import Batch, TrainSpec, source_target_tokens, stack_rows, torch_inputs
from data_pipelines.objectives import span_corruption
from data_pipelines.vocab import VocabInfo
from t5x_like.config import Config


def make_batches(config: Config, vocab: VocabInfo, count: int, seed: int) -> list[Batch]:
  """int32 batches: input_ids [B, L], labels/decoder_input_ids [B, T] (labels padded -100)."""
  d = config.data
  params = span_corruption.SpanCorruptionParams(config.objective.noise_density,
                                                config.objective.mean_noise_span_length)
  raw, _ = span_corruption.random_spans_helper(d.seq_len, params.noise_density,
                                               params.mean_noise_span_length)
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    rows = []
    for block in rng.choice(vocab.normal_ids, size=(config.train.batch_size, raw)):
      ex = span_corruption.make_example(block, rng, params, vocab)
      labels = np.full(d.target_len, -100, np.int32)
      labels[: len(ex["labels"])] = ex["labels"]
      decoder = np.zeros(d.target_len, np.int32)
      decoder[1:] = np.maximum(labels[:-1], 0)
      rows.append({"input_ids": ex["input_ids"], "labels": labels,
                   "decoder_input_ids": decoder})
    batches.append(stack_rows(rows))
  return batches


def row_fields(config: Config, batches: list[Batch]) -> dict[str, Any]:
  m, d = config.model, config.data
  return {"batch_size": config.train.batch_size, "inputs": d.seq_len, "targets": d.target_len,
          "hidden_size": m.hidden_size, "num_layers": m.num_layers,
          "num_decoder_layers": m.num_decoder_layers, "num_heads": m.num_heads,
          "head_dim": m.head_dim, "intermediate_size": m.intermediate_size,
          "vocab_size": m.vocab_size}


def hf_model(config: Config) -> Any:
  """HF `T5ForConditionalGeneration` with our config and an untied head, as v1.1."""
  import torch
  import transformers

  m = config.model
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(
      vocab_size=m.vocab_size, d_model=m.hidden_size, d_kv=m.head_dim,
      d_ff=m.intermediate_size, num_layers=m.num_layers,
      num_decoder_layers=m.num_decoder_layers, num_heads=m.num_heads,
      relative_attention_num_buckets=m.relative_attention_num_buckets,
      relative_attention_max_distance=m.relative_attention_max_distance,
      dropout_rate=m.dropout_rate, layer_norm_epsilon=m.layer_norm_eps,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0,
      eos_token_id=1, decoder_start_token_id=0)).to(torch.float32)
  # transformers 5 always ties lm_head to `shared` in a freshly built T5 (T5Config forces
  # tie_word_embeddings=True); v1.1 has an untied head, so give it its own weight, initialised
  # as HF initialises an untied head (normal, std = initializer_factor).
  if model.lm_head.weight is model.shared.weight:
    head = torch.empty_like(model.shared.weight).normal_(0.0, m.initializer_factor)
    model.lm_head.weight = torch.nn.Parameter(head)
  assert model.lm_head.weight is not model.shared.weight
  assert not model.config.scale_decoder_outputs  # v1.1: no d_model**-0.5 on the output
  return model


def hf_optimizer(model: Any, config: Config) -> Any:
  """HF's torch Adafactor with our settings (constant lr, no momentum, no weight decay)."""
  from transformers.optimization import Adafactor

  o = config.optim
  return Adafactor(model.parameters(), lr=o.learning_rate, relative_step=False,
                   scale_parameter=o.adafactor_multiply_by_parameter_scale,
                   warmup_init=False, decay_rate=-o.adafactor_decay_rate,
                   clip_threshold=o.adafactor_clipping_threshold, beta1=None, weight_decay=0.0)


SPEC = TrainSpec(
    family="T5", description=__doc__.splitlines()[0], preset="t5_tiny",
    shapes={
        # The T5-small benchmark shape: 4+4 layers, d=256, inputs 128, targets 32.
        "t5_small_bench": ("model.num_layers=4", "model.num_decoder_layers=4",
                           "model.hidden_size=256", "model.num_heads=4", "model.head_dim=64",
                           "model.intermediate_size=1024", "model.vocab_size=8000",
                           "data.seq_len=128", "data.target_len=32", "train.batch_size=16"),
        "t5_tiny": ("data.target_len=29",),
    },
    default_shapes="t5_small_bench",
    overrides=("model.dropout_rate=0.0", "objective.z_loss=0.0", "optim.learning_rate=0.01",
               "optim.adafactor_min_dim_size_to_factor=1"),
    make_batches=make_batches, row_fields=row_fields, hf_model=hf_model,
    hf_optimizer=hf_optimizer, hf_inputs=torch_inputs,
    tokens_per_step=source_target_tokens, vocab_options={"num_sentinels": 100}, dtypes=True,
    flush_denormals=True)  # Adafactor's eps of 1e-30: HF's step took 16 s instead of 0.7 s


def main(argv: list[str] | None = None) -> dict[str, Any]:
  return train_harness.main(SPEC, argv)


if __name__ == "__main__":
  main()
