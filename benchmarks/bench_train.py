"""Training throughput of our jitted BERT MLM step versus HF `BertForMaskedLM` (PyTorch).

For each shape both sides train the same architecture (vocab, hidden, layers, heads, FFN, max
positions, erf-GELU, LayerNorm eps, dropout 0) with AdamW (same lr, betas, eps, weight decay
with biases/LayerNorm excluded, global-norm clipping at 1.0) on the same MLM batches. Batches
come from the real objective (`mlm.make_example` on random blocks) and are pre-built on the
device for both sides, so input time is excluded. Steps are timed one by one (our side with
`jax.block_until_ready`), compilation is excluded and reported separately, and the two sides
run interleaved in rounds so machine noise hits both alike. Run from the repo root:

  python -m benchmarks.bench_train [--shapes bert_tiny,bert_small] [--steps 20] [--warmup 3]
      [--rounds 4] [--json out.json]

Ours scores only the masked positions (the head gathers them first, as the original BERT);
HF computes logits at all B*L positions. That difference is part of what is compared. MFU
uses the same FLOP count for both sides (`t5x_like.flops.train_flops_per_step`, the FLOPs the
model actually needs), so HF's extra head FLOPs count as waste, not as work.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from data_pipelines.objectives import mlm
from data_pipelines.vocab import VocabInfo
from t5x_like import flops, sharding
from t5x_like.config import Config, load_config, max_predictions
from t5x_like.training import optimizer, step, tasks

TORCH_THREADS = 2
# Dropout is 0 on both sides (the bert_tiny preset's value), so both run the same math.
SHAPES: dict[str, tuple[str, ...]] = {
    "bert_tiny": (),
    "bert_small": ("model.num_layers=4", "model.hidden_size=256", "model.num_heads=4",
                   "model.intermediate_size=1024", "model.max_position_embeddings=128",
                   "model.vocab_size=8000", "data.seq_len=128", "train.batch_size=16",
                   "model.dropout_rate=0.0", "model.attention_dropout_rate=0.0"),
}
# One CPU device, whatever else the environment asks for; a constant learning rate on both
# sides (HF's loop below has no schedule).
COMMON_OVERRIDES = ("mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1", "optim.grad_accum_steps=1",
                    "optim.schedule=constant", "optim.warmup_steps=0")
NUM_BATCHES = 4  # distinct pre-built batches, cycled on both sides


def shape_config(name: str, total_steps: int) -> Config:
  """The preset config of a benchmark shape, on one device, with `total_steps` steps."""
  return load_config("bert_tiny", [*SHAPES[name], *COMMON_OVERRIDES,
                                   f"train.steps={total_steps}"])


def make_batches(config: Config, vocab: VocabInfo, count: int,
                 seed: int) -> list[dict[str, np.ndarray]]:
  """`count` int32 batches [B, L] from the MLM objective on random blocks (EOS every ~300)."""
  b, length = config.train.batch_size, config.data.seq_len
  params = mlm.MLMParams(max_predictions=max_predictions(config),
                         mask_prob=config.objective.mask_prob,
                         mask_token_frac=config.objective.mask_token_frac,
                         random_token_frac=config.objective.random_token_frac)
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    blocks = rng.choice(vocab.normal_ids, size=(b, length - 2))
    blocks[rng.random(blocks.shape) < 1 / 300] = vocab.eos_id
    rows = [mlm.make_example(block, rng, params, vocab) for block in blocks.astype(np.int32)]
    batches.append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  return batches


def torch_matmul_peak(size: int = 1024, repeats: int = 10, dtype: str = "float32") -> float:
  """FLOP/s of a square matmul in torch, measured as `flops.measured_matmul_peak` does."""
  import torch

  a = torch.ones((size, size), dtype=getattr(torch, dtype))
  b = torch.ones((size, size), dtype=getattr(torch, dtype))
  torch.mm(a, b)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    torch.mm(a, b)
    times.append(time.perf_counter() - start)
  return 2.0 * size ** 3 / min(times)


@dataclasses.dataclass
class Side:
  """One framework's training step: `run(i)` does step i (batch i mod NUM_BATCHES) to done."""
  run: Callable[[int], float]
  times: list[float] = dataclasses.field(default_factory=list)
  losses: list[float] = dataclasses.field(default_factory=list)
  state: Callable[[], object] | None = None  # ours: the live train state (bench_checkpoint)


def build_ours(config: Config, batches: list[dict[str, np.ndarray]]) -> tuple[Side, float]:
  """Our train step built as `t5x_like.training.loop.Trainer` does; returns (side, compile s)."""
  task = tasks.make_task(config)
  mesh = sharding.make_mesh(config.mesh, jax.local_devices()[:1])
  schedule = optimizer.make_schedule(config.optim, config.train.steps)
  tx = optimizer.make_optimizer(config.optim, config.train.steps)
  _, _, state_sh = step.state_shardings(task, tx, mesh, config.train.batch_size)
  batch_sh = step.batch_shardings(task.features, mesh)
  device_batches = [{k: jax.device_put(b[k], batch_sh[k]) for k in task.features}
                    for b in batches]
  jax.block_until_ready(device_batches)
  train_step = step.jit_train_step(
      step.make_train_step(task, tx, schedule, config.train.seed,
                           config.optim.grad_accum_steps), state_sh, batch_sh, mesh)
  with step.mesh_context(mesh):
    holder = {"state": step.init_state(task, tx, mesh, config.train.seed, state_sh,
                                       config.train.batch_size)}
    start = time.perf_counter()
    train_step.lower(holder["state"], device_batches[0]).compile()
    compile_s = time.perf_counter() - start

  def run(i: int) -> float:
    with step.mesh_context(mesh):
      state, metrics = train_step(holder["state"], device_batches[i % len(device_batches)])
      jax.block_until_ready((state, metrics))
    holder["state"] = state
    return float(metrics["loss"])

  return Side(run, state=lambda: holder["state"]), compile_s


def build_hf(config: Config, batches: list[dict[str, np.ndarray]]) -> Side:
  """HF `BertForMaskedLM` + `torch.optim.AdamW` with the same config and batches."""
  import torch
  import transformers

  m, o = config.model, config.optim
  torch.manual_seed(config.train.seed)
  hf_config = transformers.BertConfig(
      vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
      num_attention_heads=m.num_heads, intermediate_size=m.intermediate_size,
      max_position_embeddings=m.max_position_embeddings, type_vocab_size=m.type_vocab_size,
      hidden_act=m.hidden_act, layer_norm_eps=m.layer_norm_eps,
      hidden_dropout_prob=m.dropout_rate, attention_probs_dropout_prob=m.attention_dropout_rate,
      initializer_range=m.initializer_range, pad_token_id=0)
  model = transformers.BertForMaskedLM(hf_config).to(torch.float32)
  model.train()
  # HF Trainer's convention, as ours: no weight decay on biases and LayerNorm weights.
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
  torch_batches = [{k: torch.from_numpy(b[k].astype(np.int64)) for k in b} for b in batches]

  def run(i: int) -> float:
    batch = torch_batches[i % len(torch_batches)]
    opt.zero_grad(set_to_none=True)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"], labels=batch["labels"])
    out.loss.backward()
    if o.grad_clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip_norm)
    opt.step()
    return float(out.loss.detach())

  return Side(run)


def timed(side: Side, first: int, count: int) -> None:
  """Runs steps [first, first + count) of `side`, recording each step's wall time."""
  for i in range(first, first + count):
    start = time.perf_counter()
    loss = side.run(i)
    side.times.append(time.perf_counter() - start)
    side.losses.append(loss)


def run_interleaved(ours: Side, hf: Side, steps: int, warmup: int, rounds: int) -> None:
  """`warmup` untimed steps per side, then `steps` timed steps per side in `rounds`
  alternating blocks, so machine noise hits both sides alike."""
  for i in range(warmup):
    ours.run(i)
    hf.run(i)
  per_round = [steps // rounds + (r < steps % rounds) for r in range(rounds)]
  done = warmup
  for count in per_round:
    timed(ours, done, count)
    timed(hf, done, count)
    done += count


def add_side_stats(row: dict[str, Any], ours: Side, hf: Side, tokens: int,
                   flops_per_step: float, peak: float) -> dict[str, Any]:
  """Per-side median/min step time, tokens/s, MFU, first/last loss, and ours/HF ratio."""
  for label, side in (("ours", ours), ("hf", hf)):
    median = statistics.median(side.times)
    row[f"{label}_median_s"] = median
    row[f"{label}_min_s"] = min(side.times)
    row[f"{label}_tokens_per_s"] = tokens / median
    row[f"{label}_mfu"] = flops_per_step / median / peak
    row[f"{label}_first_loss"] = side.losses[0]
    row[f"{label}_last_loss"] = side.losses[-1]
  row["ratio"] = row["ours_tokens_per_s"] / row["hf_tokens_per_s"]
  return row


def parse_args(argv: list[str] | None, description: str, shapes: dict[str, Any],
               default_shapes: str, dtypes: bool = False
               ) -> tuple[argparse.Namespace, list[str]]:
  """The benchmarks' common command line; returns (args, the shape names asked for)."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--shapes", type=str, default=default_shapes,
                      help=f"comma-separated, from {', '.join(shapes)}")
  parser.add_argument("--steps", type=int, default=20, help="timed steps per side")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side")
  parser.add_argument("--rounds", type=int, default=4, help="interleaved ours/HF rounds")
  parser.add_argument("--json", type=str, default=None, help="also write results here")
  if dtypes:
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype of both sides: bfloat16 = ours with "
                        "model.dtype=bfloat16 (float32 parameters and optimiser), HF under "
                        "torch.autocast(bfloat16), as HF Trainer's --bf16")
  args = parser.parse_args(argv)
  names = [s.strip() for s in args.shapes.split(",") if s.strip()]
  unknown = [s for s in names if s not in shapes]
  if unknown:
    parser.error(f"unknown shapes {unknown}; known: {', '.join(shapes)}")
  if args.steps < args.rounds:
    parser.error("--steps must be >= --rounds")
  return args, names


def measure_peaks(dtype: str = "float32") -> tuple[float, float, float]:
  """(XLA, torch, max) matmul FLOP/s in `dtype`, with torch on TORCH_THREADS threads."""
  import torch

  torch.set_num_threads(TORCH_THREADS)
  xla_peak = flops.measured_matmul_peak(dtype)
  torch_peak = torch_matmul_peak(dtype=dtype)
  return xla_peak, torch_peak, max(xla_peak, torch_peak)


def autocast(side: Side, dtype: str) -> Side:
  """The HF side run under `torch.autocast("cpu", bfloat16)` for dtype bfloat16 (HF
  Trainer's --bf16: float32 weights and optimiser, bf16 matmuls); unchanged for float32."""
  if dtype == "float32":
    return side
  import torch

  def run(i: int) -> float:
    with torch.autocast("cpu", dtype=getattr(torch, dtype)):
      return side.run(i)
  return Side(run)


def write_report(path: str | None, xla_peak: float, torch_peak: float,
                 rows: list[dict[str, Any]], dtype: str = "float32") -> dict[str, Any]:
  """The run's versions, peaks and rows; also written to `path` as JSON when given."""
  import torch
  import transformers

  report = {"cpus": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_threads": TORCH_THREADS,
            "xla_matmul_peak": xla_peak, "torch_matmul_peak": torch_peak,
            "peak": max(xla_peak, torch_peak), "dtype": dtype, "results": rows}
  if path:
    with open(path, "w") as f:
      json.dump(report, f, indent=2)
  return report


def bench_shape(name: str, steps: int, warmup: int, rounds: int, peak: float,
                vocab: VocabInfo) -> dict[str, Any]:
  """Measures one shape; returns its result row."""
  config = shape_config(name, total_steps=warmup + steps + 1)
  batches = make_batches(config, vocab, NUM_BATCHES, seed=0)
  ours, compile_s = build_ours(config, batches)
  hf = build_hf(config, batches)
  run_interleaved(ours, hf, steps, warmup, rounds)

  b, length = config.train.batch_size, config.data.seq_len
  tokens = b * length
  flops_per_step = flops.train_flops_per_step(config)
  row: dict[str, Any] = {
      "shape": name, "batch_size": b, "seq_len": length, "hidden_size": config.model.hidden_size,
      "num_layers": config.model.num_layers, "num_heads": config.model.num_heads,
      "intermediate_size": config.model.intermediate_size,
      "vocab_size": config.model.vocab_size, "max_predictions": max_predictions(config),
      "predicted_per_batch": float(np.mean([np.sum(x["labels"] != -100) for x in batches])),
      "dropout": config.model.dropout_rate, "steps": steps, "warmup": warmup,
      "rounds": rounds, "flops_per_step": flops_per_step, "ours_compile_s": compile_s}
  return add_side_stats(row, ours, hf, tokens, flops_per_step, peak)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args, shapes = parse_args(argv, __doc__.splitlines()[0], SHAPES, "bert_tiny,bert_small")
  import torch
  import transformers

  xla_peak, torch_peak, peak = measure_peaks()
  vocab = VocabInfo.synthetic(8000)
  rows = [bench_shape(s, args.steps, args.warmup, args.rounds, peak, vocab) for s in shapes]

  print(f"Train step, median of {args.steps} steps after {args.warmup} warm-up, "
        f"{args.rounds} interleaved rounds; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}); jax {jax.__version__}, torch "
        f"{torch.__version__} ({TORCH_THREADS} threads), transformers {transformers.__version__}")
  print(f"f32 1024^3 matmul peak: XLA {xla_peak / 1e9:.1f} GFLOP/s, torch "
        f"{torch_peak / 1e9:.1f} GFLOP/s; MFU uses {peak / 1e9:.1f} GFLOP/s\n")
  print("| shape | B×L | ours tokens/s | HF tokens/s | ours/HF | ours MFU | HF MFU | "
        "ours ms/step | HF ms/step | ours compile s |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['shape']} (d={r['hidden_size']}, {r['num_layers']}L, {r['num_heads']}H, "
          f"FFN {r['intermediate_size']}, V={r['vocab_size']}) | {r['batch_size']}×{r['seq_len']} "
          f"| {r['ours_tokens_per_s']:,.0f} | {r['hf_tokens_per_s']:,.0f} | {r['ratio']:.2f}× | "
          f"{100 * r['ours_mfu']:.1f}% | {100 * r['hf_mfu']:.1f}% | "
          f"{1e3 * r['ours_median_s']:.1f} | {1e3 * r['hf_median_s']:.1f} | "
          f"{r['ours_compile_s']:.1f} |")
  return write_report(args.json, xla_peak, torch_peak, rows)


if __name__ == "__main__":
  main()
