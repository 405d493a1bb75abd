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
machine noise hits both alike. Run from the repo root:

  python -m benchmarks.bench_train_t5 [--shapes t5_small_bench] [--steps 20] [--warmup 3]
      [--rounds 4] [--json out.json]

Tokens/s counts encoder input tokens + decoder target tokens per second. MFU uses the same
analytic FLOP count for both sides (`t5x_like.flops.train_flops_per_step`).
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import platform
from typing import Any

import jax
import numpy as np

from benchmarks.bench_train import (
  TORCH_THREADS,
  Side,
  add_side_stats,
  autocast,
  build_ours,
  measure_peaks,
  parse_args,
  run_interleaved,
  write_report,
)
from data_pipelines.objectives import span_corruption
from data_pipelines.vocab import VocabInfo
from t5x_like import flops
from t5x_like.config import Config, load_config

SHAPES: dict[str, tuple[str, ...]] = {
    # The T5-small benchmark shape: 4+4 layers, d=256, inputs 128, targets 32.
    "t5_small_bench": ("model.num_layers=4", "model.num_decoder_layers=4",
                       "model.hidden_size=256", "model.num_heads=4", "model.head_dim=64",
                       "model.intermediate_size=1024", "model.vocab_size=8000",
                       "data.seq_len=128", "data.target_len=32", "train.batch_size=16"),
    "t5_tiny": ("data.target_len=29",),
}
COMMON_OVERRIDES = ("mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1", "optim.grad_accum_steps=1",
                    "model.dropout_rate=0.0", "objective.z_loss=0.0", "optim.schedule=constant",
                    "optim.learning_rate=0.01", "optim.warmup_steps=0",
                    "optim.adafactor_min_dim_size_to_factor=1")
NUM_BATCHES = 4
NUM_SENTINELS = 100


def shape_config(name: str, total_steps: int, dtype: str = "float32") -> Config:
  return load_config("t5_tiny", [*SHAPES[name], *COMMON_OVERRIDES, f"train.steps={total_steps}",
                                 f"model.dtype={dtype}"])


def make_batches(config: Config, vocab: VocabInfo, count: int,
                 seed: int) -> list[dict[str, np.ndarray]]:
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
    batches.append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  return batches


def build_hf(config: Config, batches: list[dict[str, np.ndarray]]) -> Side:
  """HF `T5ForConditionalGeneration` + HF's torch Adafactor, same config and batches."""
  import torch
  import transformers
  from transformers.optimization import Adafactor

  m, o = config.model, config.optim
  torch.manual_seed(config.train.seed)
  hf_config = transformers.T5Config(
      vocab_size=m.vocab_size, d_model=m.hidden_size, d_kv=m.head_dim,
      d_ff=m.intermediate_size, num_layers=m.num_layers,
      num_decoder_layers=m.num_decoder_layers, num_heads=m.num_heads,
      relative_attention_num_buckets=m.relative_attention_num_buckets,
      relative_attention_max_distance=m.relative_attention_max_distance,
      dropout_rate=m.dropout_rate, layer_norm_epsilon=m.layer_norm_eps,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0,
      eos_token_id=1, decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(hf_config).to(torch.float32)
  # transformers 5 always ties lm_head to `shared` in a freshly built T5 (T5Config forces
  # tie_word_embeddings=True); v1.1 has an untied head, so give it its own weight, initialised
  # as HF initialises an untied head (normal, std = initializer_factor).
  if model.lm_head.weight is model.shared.weight:
    head = torch.empty_like(model.shared.weight).normal_(0.0, m.initializer_factor)
    model.lm_head.weight = torch.nn.Parameter(head)
  assert model.lm_head.weight is not model.shared.weight
  assert not model.config.scale_decoder_outputs  # v1.1: no d_model**-0.5 on the output
  model.train()
  opt = Adafactor(model.parameters(), lr=o.learning_rate, relative_step=False,
                  scale_parameter=o.adafactor_multiply_by_parameter_scale,
                  warmup_init=False, decay_rate=-o.adafactor_decay_rate,
                  clip_threshold=o.adafactor_clipping_threshold, beta1=None, weight_decay=0.0)
  torch_batches = [{k: torch.from_numpy(b[k].astype(np.int64)) for k in b} for b in batches]

  def run(i: int) -> float:
    batch = torch_batches[i % len(torch_batches)]
    opt.zero_grad(set_to_none=True)
    out = model(input_ids=batch["input_ids"], decoder_input_ids=batch["decoder_input_ids"],
                labels=batch["labels"])
    out.loss.backward()
    opt.step()
    return float(out.loss.detach())

  return Side(run)


def bench_shape(name: str, steps: int, warmup: int, rounds: int, peak: float,
                vocab: VocabInfo, dtype: str = "float32") -> dict[str, Any]:
  config = shape_config(name, total_steps=warmup + steps + 1, dtype=dtype)
  batches = make_batches(config, vocab, NUM_BATCHES, seed=0)
  ours, compile_s = build_ours(config, batches)
  hf = autocast(build_hf(config, batches), dtype)
  run_interleaved(ours, hf, steps, warmup, rounds)
  m, d, b = config.model, config.data, config.train.batch_size
  tokens = b * (d.seq_len + d.target_len)
  flops_per_step = flops.train_flops_per_step(config)
  row: dict[str, Any] = {
      "shape": name, "dtype": dtype, "batch_size": b, "inputs": d.seq_len,
      "targets": d.target_len,
      "hidden_size": m.hidden_size, "num_layers": m.num_layers,
      "num_decoder_layers": m.num_decoder_layers, "num_heads": m.num_heads,
      "head_dim": m.head_dim, "intermediate_size": m.intermediate_size,
      "vocab_size": m.vocab_size, "steps": steps, "warmup": warmup, "rounds": rounds,
      "flops_per_step": flops_per_step, "ours_compile_s": compile_s}
  return add_side_stats(row, ours, hf, tokens, flops_per_step, peak)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args, shapes = parse_args(argv, __doc__.splitlines()[0], SHAPES, "t5_small_bench",
                             dtypes=True)
  import torch
  import transformers

  # Adafactor's eps of 1e-30 drives second-moment statistics into float32 denormals, which
  # x86 handles in microcode (~100x slower) unless flushed to zero; XLA's CPU backend
  # flushes them, so torch does too here (it made HF's step 16 s instead of 0.7 s).
  torch.set_flush_denormal(True)
  xla_peak, torch_peak, peak = measure_peaks(args.dtype)
  vocab = VocabInfo.synthetic(8000, num_sentinels=NUM_SENTINELS)
  rows = [bench_shape(s, args.steps, args.warmup, args.rounds, peak, vocab, args.dtype)
          for s in shapes]

  print(f"T5 train step, median of {args.steps} steps after {args.warmup} warm-up, "
        f"{args.rounds} interleaved rounds; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}); jax {jax.__version__}, torch "
        f"{torch.__version__} ({TORCH_THREADS} threads), transformers {transformers.__version__}")
  print(f"{args.dtype} 1024^3 matmul peak: XLA {xla_peak / 1e9:.1f} GFLOP/s, torch "
        f"{torch_peak / 1e9:.1f} GFLOP/s; MFU uses {peak / 1e9:.1f} GFLOP/s\n")
  print("| shape | B×(inputs+targets) | ours tokens/s | HF tokens/s | ours/HF | ours MFU | "
        "HF MFU | ours ms/step | HF ms/step | ours compile s | loss first→last (ours / HF) |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
  for r in rows:
    print(f"| {r['shape']} ({r['num_layers']}+{r['num_decoder_layers']}L, "
          f"d={r['hidden_size']}, {r['num_heads']}H×{r['head_dim']}, FFN {r['intermediate_size']}"
          f" gated, V={r['vocab_size']}) | {r['batch_size']}×({r['inputs']}+{r['targets']}) | "
          f"{r['ours_tokens_per_s']:,.0f} | {r['hf_tokens_per_s']:,.0f} | {r['ratio']:.2f}× | "
          f"{100 * r['ours_mfu']:.1f}% | {100 * r['hf_mfu']:.1f}% | "
          f"{1e3 * r['ours_median_s']:.1f} | {1e3 * r['hf_median_s']:.1f} | "
          f"{r['ours_compile_s']:.1f} | {r['ours_first_loss']:.2f}→{r['ours_last_loss']:.2f} / "
          f"{r['hf_first_loss']:.2f}→{r['hf_last_loss']:.2f} |")
  return write_report(args.json, xla_peak, torch_peak, rows, args.dtype)


if __name__ == "__main__":
  main()
