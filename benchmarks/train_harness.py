"""The train benchmarks' shared harness: one family's `TrainSpec` in, a measured report out.

For each shape asked for: the spec's preset with the shape's and the family's overrides on one
CPU device at a constant learning rate; `NUM_BATCHES` batches from the spec (seed 0) for both
sides; our step and the spec's HF peer (`benchmarks.train_sides`) run interleaved after
warm-up; per side the median and minimum step time, tokens/s (the spec's tokens per step over
the median), MFU (`t5x_like.flops.train_flops_per_step`, the FLOPs the model needs, over the
larger of the XLA and torch measured matmul peaks, the same count for both sides) and the
first and last loss. With --dtype bfloat16 (specs that offer it) ours runs with
model.dtype=bfloat16 and the peer under torch.autocast, as HF Trainer's --bf16.

The JSON report (`write_report`) is what `benchmarks.run_all` stores and renders: versions,
peaks, dtype and one row per shape with the fields `add_side_stats` writes.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import json
import platform
import statistics
from typing import Any

import jax

from benchmarks.train_sides import (
  TORCH_THREADS,
  Side,
  autocast,
  build_hf,
  build_ours,
  measure_peaks,
  run_interleaved,
)
from benchmarks.train_spec import TrainSpec
from data_pipelines.vocab import VocabInfo
from t5x_like import flops
from t5x_like.config import Config, load_config

# One CPU device, whatever else the environment asks for; a constant learning rate on both
# sides (the peer's loop has no schedule).
ONE_DEVICE_CONSTANT_LR = ("mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1",
                          "optim.grad_accum_steps=1", "optim.schedule=constant",
                          "optim.warmup_steps=0")
NUM_BATCHES = 4  # distinct pre-built batches, cycled on both sides
VOCAB_SIZE = 8000  # the synthetic vocabulary batches are drawn from


def shape_config(spec: TrainSpec, name: str, total_steps: int, dtype: str = "float32") -> Config:
  """The spec's preset config of shape `name`, on one device, with `total_steps` steps."""
  dtype_override = (f"model.dtype={dtype}",) if spec.dtypes else ()
  return spec.resolve(load_config(spec.preset, [
      *spec.shapes[name], *ONE_DEVICE_CONSTANT_LR, *spec.overrides,
      f"train.steps={total_steps}", *dtype_override]))


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


def bench_shape(spec: TrainSpec, name: str, args: argparse.Namespace, peak: float,
                vocab: VocabInfo) -> dict[str, Any]:
  """Measures one shape; returns its report row."""
  dtype = getattr(args, "dtype", "float32")
  config = shape_config(spec, name, args.warmup + args.steps + 1, dtype)
  batches = spec.make_batches(config, vocab, NUM_BATCHES, 0)
  ours, compile_s = build_ours(config, batches)
  hf = autocast(build_hf(spec, config, batches), dtype)
  run_interleaved(ours, hf, args.steps, args.warmup, args.rounds)
  flops_per_step = flops.train_flops_per_step(config)
  row: dict[str, Any] = {"shape": name, **({"dtype": dtype} if spec.dtypes else {}),
                         **spec.row_fields(config, batches), "steps": args.steps,
                         "warmup": args.warmup, "rounds": args.rounds,
                         "flops_per_step": flops_per_step, "ours_compile_s": compile_s}
  return add_side_stats(row, ours, hf, spec.tokens_per_step(config), flops_per_step, peak)


def parse_args(spec: TrainSpec, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
  """The train benchmarks' common command line; returns (args, the shape names asked for)."""
  parser = argparse.ArgumentParser(description=spec.description)
  parser.add_argument("--shapes", type=str, default=spec.default_shapes,
                      help=f"comma-separated, from {', '.join(spec.shapes)}")
  parser.add_argument("--steps", type=int, default=20, help="timed steps per side")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side")
  parser.add_argument("--rounds", type=int, default=4, help="interleaved ours/HF rounds")
  parser.add_argument("--json", type=str, default=None, help="also write results here")
  if spec.dtypes:
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype of both sides: bfloat16 = ours with "
                        "model.dtype=bfloat16 (float32 parameters and optimiser), HF under "
                        "torch.autocast(bfloat16), as HF Trainer's --bf16")
  args = parser.parse_args(argv)
  names = [s.strip() for s in args.shapes.split(",") if s.strip()]
  unknown = [s for s in names if s not in spec.shapes]
  if unknown:
    parser.error(f"unknown shapes {unknown}; known: {', '.join(spec.shapes)}")
  if args.steps < args.rounds:
    parser.error("--steps must be >= --rounds")
  return args, names


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


def shape_text(r: dict[str, Any]) -> str:
  """A row's shape name with its architecture, from whichever size fields the row has."""
  layers = (f"{r['num_layers']}+{r['num_decoder_layers']}L" if "num_decoder_layers" in r
            else f"{r['num_layers']}L")
  heads = (f"{r['num_heads']}H" + (f"×{r['head_dim']}" if "head_dim" in r else "")
           + (f"/{r['num_kv_heads']}KV" if "num_kv_heads" in r else ""))
  return (f"{r['shape']} ({layers}, d={r['hidden_size']}, {heads}, "
          f"FFN {r['intermediate_size']}, V={r['vocab_size']})")


def tokens_text(r: dict[str, Any]) -> str:
  """B×L, or B×(source+target) for encoder-decoder rows, and their product."""
  if "inputs" in r:
    per_row, total = f"({r['inputs']}+{r['targets']})", r["inputs"] + r["targets"]
  else:
    per_row, total = str(r["seq_len"]), r["seq_len"]
  return f"{r['batch_size']}×{per_row} = {r['batch_size'] * total:,}"


def console_table(spec: TrainSpec, rows: list[dict[str, Any]]) -> list[str]:
  """The rows as a Markdown table: shape, tokens, the spec's extra columns, both sides."""
  extra = spec.console_columns
  lines = ["| shape | tokens/step | " + "".join(f"{h} | " for h, _, _ in extra)
           + "ours tokens/s | HF tokens/s | ours/HF | ours MFU | HF MFU | ours ms/step | "
           "HF ms/step | ours compile s | loss first→last (ours / HF) |",
           "|---|---|" + "---:|" * (len(extra) + 8) + "---|"]
  for r in rows:
    lines.append(
        f"| {shape_text(r)} | {tokens_text(r)} | "
        + "".join(f"{format(r[k], fmt)} | " for _, k, fmt in extra)
        + f"{r['ours_tokens_per_s']:,.0f} | {r['hf_tokens_per_s']:,.0f} | {r['ratio']:.2f}× | "
        f"{100 * r['ours_mfu']:.1f}% | {100 * r['hf_mfu']:.1f}% | "
        f"{1e3 * r['ours_median_s']:.1f} | {1e3 * r['hf_median_s']:.1f} | "
        f"{r['ours_compile_s']:.1f} | {r['ours_first_loss']:.2f}→{r['ours_last_loss']:.2f} / "
        f"{r['hf_first_loss']:.2f}→{r['hf_last_loss']:.2f} |")
  return lines


def main(spec: TrainSpec, argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the spec's benchmark from the command line `argv`; prints and returns the report."""
  args, shapes = parse_args(spec, argv)
  dtype = getattr(args, "dtype", "float32")
  import torch
  import transformers

  if spec.flush_denormals:
    torch.set_flush_denormal(True)
  xla_peak, torch_peak, peak = measure_peaks(dtype)
  vocab = VocabInfo.synthetic(VOCAB_SIZE, **spec.vocab_options)
  rows = [bench_shape(spec, s, args, peak, vocab) for s in shapes]

  print(f"{spec.family} train step, median of {args.steps} steps after {args.warmup} warm-up, "
        f"{args.rounds} interleaved rounds; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}); jax {jax.__version__}, torch "
        f"{torch.__version__} ({TORCH_THREADS} threads), transformers {transformers.__version__}")
  print(f"{dtype} 1024^3 matmul peak: XLA {xla_peak / 1e9:.1f} GFLOP/s, torch "
        f"{torch_peak / 1e9:.1f} GFLOP/s; MFU uses {peak / 1e9:.1f} GFLOP/s\n")
  print("\n".join(console_table(spec, rows)))
  return write_report(args.json, xla_peak, torch_peak, rows, dtype)
