"""Training throughput of our jitted XLNet permutation-LM step versus HF `XLNetLMHeadModel`
(PyTorch) on the same shape and the same inputs, in the same invocation.

Both sides train the same XLNet (post-LN, relative attention, two streams, tied head with
bias, dropout 0) with AdamW (same lr, betas, eps, weight decay with biases/LayerNorm
excluded, global-norm clipping at 1.0, constant lr) on the same batches from
`permutation_lm.make_example` on random blocks: `input_ids`, `token_type_ids`, `perm_mask`
[B, L, L], `target_mapping` [B, P, L], `labels` [B, P] (P = L/6). Batches are pre-built on the
device for both sides; steps are timed one by one after warm-up, compilation is excluded and
reported separately, and the sides alternate in rounds. Run from the repo root:

  python -m benchmarks.bench_train_xlnet [--shapes xlnet_small_bench] [--steps 20]
      [--warmup 3] [--rounds 4] [--json out.json]

Tokens/s counts row positions (B x L); MFU uses the same analytic FLOP count for both sides
(`t5x_like.flops.xlnet_train_flops_per_step`: the FLOPs the model needs, query stream on the
P targets only).
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
  build_ours,
  measure_peaks,
  parse_args,
  run_interleaved,
  write_report,
)
from data_pipelines.objectives import permutation_lm
from data_pipelines.vocab import VocabInfo
from pretrain import data as data_glue
from t5x_like import flops, models
from t5x_like.config import Config, load_config
from t5x_like.families.xlnet import model as xlnet
from t5x_like.objectives import permutation_lm as permutation_objective

SHAPES: dict[str, tuple[str, ...]] = {
    # The size of the other families' small shapes: 4 layers, d=256, rows of 128.
    "xlnet_small_bench": ("model.num_layers=4", "model.hidden_size=256", "model.num_heads=4",
                          "model.intermediate_size=1024", "model.vocab_size=8000",
                          "data.seq_len=128", "train.batch_size=16"),
    "xlnet_tiny": (),
}
COMMON_OVERRIDES = ("mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1", "optim.grad_accum_steps=1",
                    "model.dropout_rate=0.0", "optim.schedule=constant",
                    "optim.warmup_steps=0")
NUM_BATCHES = 4


def shape_config(name: str, total_steps: int) -> Config:
  return load_config("xlnet_tiny", [*SHAPES[name], *COMMON_OVERRIDES,
                                    f"train.steps={total_steps}"])


def make_batches(config: Config, vocab: VocabInfo, count: int,
                 seed: int) -> list[dict[str, np.ndarray]]:
  params = permutation_objective.params(config)
  raw = data_glue.block_length(config)
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    blocks = rng.choice(vocab.normal_ids, size=(config.train.batch_size, raw)).astype(np.int32)
    rows = [permutation_lm.make_example(block, rng, params, vocab) for block in blocks]
    batches.append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  return batches


def build_hf(config: Config, batches: list[dict[str, np.ndarray]]) -> Side:
  """HF `XLNetLMHeadModel` + `torch.optim.AdamW`, same config and batches."""
  import torch
  import transformers

  o = config.optim
  torch.manual_seed(config.train.seed)
  hf_config = transformers.XLNetConfig(**xlnet.hf_config_dict(models.module_config(config.model)),
                                       pad_token_id=0, bos_token_id=3, eos_token_id=1)
  model = transformers.XLNetLMHeadModel(hf_config).to(torch.float32)
  model.train()
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    (no_decay if name.endswith("bias") or "layer_norm" in name else decay).append(p)
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
  ints, floats = ("input_ids", "token_type_ids", "labels"), ("perm_mask", "target_mapping")
  torch_batches = [{**{k: torch.from_numpy(b[k].astype(np.int64)) for k in ints},
                    **{k: torch.from_numpy(b[k]) for k in floats}} for b in batches]

  def run(i: int) -> float:
    batch = torch_batches[i % len(torch_batches)]
    opt.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    if o.grad_clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip_norm)
    opt.step()
    return float(out.loss.detach())

  return Side(run)


def bench_shape(name: str, steps: int, warmup: int, rounds: int, peak: float,
                vocab: VocabInfo) -> dict[str, Any]:
  config = shape_config(name, total_steps=warmup + steps + 1)
  batches = make_batches(config, vocab, NUM_BATCHES, seed=0)
  ours, compile_s = build_ours(config, batches)
  hf = build_hf(config, batches)
  run_interleaved(ours, hf, steps, warmup, rounds)
  m, d, b = config.model, config.data, config.train.batch_size
  flops_per_step = flops.train_flops_per_step(config)
  row: dict[str, Any] = {
      "shape": name, "batch_size": b, "seq_len": d.seq_len,
      "num_predict": int(batches[0]["labels"].shape[1]), "hidden_size": m.hidden_size,
      "num_layers": m.num_layers, "num_heads": m.num_heads,
      "intermediate_size": m.intermediate_size, "vocab_size": m.vocab_size, "steps": steps,
      "warmup": warmup, "rounds": rounds, "flops_per_step": flops_per_step,
      "ours_compile_s": compile_s}
  return add_side_stats(row, ours, hf, b * d.seq_len, flops_per_step, peak)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args, shapes = parse_args(argv, __doc__.splitlines()[0], SHAPES, "xlnet_small_bench")
  import torch
  import transformers

  torch.set_flush_denormal(True)  # as XLA's CPU backend (see bench_train_bart)
  xla_peak, torch_peak, peak = measure_peaks()
  vocab = VocabInfo.synthetic(8000)
  rows = [bench_shape(s, args.steps, args.warmup, args.rounds, peak, vocab) for s in shapes]

  print(f"XLNet train step, median of {args.steps} steps after {args.warmup} warm-up, "
        f"{args.rounds} interleaved rounds; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}); jax {jax.__version__}, torch "
        f"{torch.__version__} ({TORCH_THREADS} threads), transformers {transformers.__version__}")
  print(f"f32 1024^3 matmul peak: XLA {xla_peak / 1e9:.1f} GFLOP/s, torch "
        f"{torch_peak / 1e9:.1f} GFLOP/s; MFU uses {peak / 1e9:.1f} GFLOP/s\n")
  print("| shape | B×L (P) | ours tokens/s | HF tokens/s | ours/HF | ours MFU | HF MFU | "
        "ours ms/step | HF ms/step | ours compile s | loss first→last (ours / HF) |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
  for r in rows:
    print(f"| {r['shape']} ({r['num_layers']}L, d={r['hidden_size']}, {r['num_heads']}H, "
          f"FFN {r['intermediate_size']}, V={r['vocab_size']}) | {r['batch_size']}×"
          f"{r['seq_len']} ({r['num_predict']}) | {r['ours_tokens_per_s']:,.0f} | "
          f"{r['hf_tokens_per_s']:,.0f} | {r['ratio']:.2f}× | {100 * r['ours_mfu']:.1f}% | "
          f"{100 * r['hf_mfu']:.1f}% | {1e3 * r['ours_median_s']:.1f} | "
          f"{1e3 * r['hf_median_s']:.1f} | {r['ours_compile_s']:.1f} | "
          f"{r['ours_first_loss']:.2f}→{r['ours_last_loss']:.2f} / "
          f"{r['hf_first_loss']:.2f}→{r['hf_last_loss']:.2f} |")
  return write_report(args.json, xla_peak, torch_peak, rows)


if __name__ == "__main__":
  main()
