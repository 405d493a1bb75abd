"""float32 GEMM throughput of XLA:CPU versus torch on the shapes of a train step.

The encoder-decoder benchmarks are matmul-bound on CPU; this isolates the GEMMs. For each
(tokens, d_in, d_out) it times forward y = x @ w and both backward products (dx = dy @ w^T,
dw = x^T @ dy), XLA jitted and torch eager, interleaved, median of repeats. Run from the
repo root:

  python -m benchmarks.bench_gemm [--repeats 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.train_sides import TORCH_THREADS

# (tokens, d_in, d_out): the FFN, attention-projection and LM-head GEMMs of the
# bart_small_bench / t5_small_bench shapes (16 x 128 tokens, d=256, FFN 1024, vocab 8000).
SHAPES = ((2048, 256, 1024), (2048, 1024, 256), (2048, 256, 256), (2048, 256, 8000),
          (1024, 1024, 1024))


def _time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


@jax.jit
def _xla_products(x, w, dy):
  return x @ w, dy @ w.T, x.T @ dy


def measure(tokens: int, d_in: int, d_out: int, repeats: int) -> tuple[float, float]:
  """(XLA, torch) GFLOP/s of y = x @ w, dx = dy @ w^T, dw = x^T @ dy; 3 interleaved rounds."""
  import torch

  rng = np.random.default_rng(0)
  x, w, dy = (rng.standard_normal(s).astype(np.float32)
              for s in ((tokens, d_in), (d_in, d_out), (tokens, d_out)))
  jx, jw, jdy = (jnp.asarray(a) for a in (x, w, dy))
  tx, tw, tdy = (torch.from_numpy(a) for a in (x, w, dy))

  def run_xla():
    jax.block_until_ready(_xla_products(jx, jw, jdy))

  def run_torch():
    return tx @ tw, tdy @ tw.T, tx.T @ tdy

  run_xla()
  run_torch()
  xla_s, torch_s = [], []
  for _ in range(3):
    xla_s.append(_time(run_xla, repeats))
    torch_s.append(_time(run_torch, repeats))
  flop = 3 * 2.0 * tokens * d_in * d_out
  return flop / statistics.median(xla_s) / 1e9, flop / statistics.median(torch_s) / 1e9


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--json", type=str, default=None, help="also write results here")
  args = parser.parse_args(argv)
  import torch
  torch.set_num_threads(TORCH_THREADS)
  rows = []
  print("| tokens × d_in → d_out | XLA GFLOP/s | torch GFLOP/s | XLA/torch |")
  print("|---|---:|---:|---:|")
  for t, i, o in SHAPES:
    xla, tor = measure(t, i, o, args.repeats)
    rows.append({"tokens": t, "d_in": i, "d_out": o, "xla_gflops": xla, "torch_gflops": tor})
    print(f"| {t} × {i} → {o} | {xla:.1f} | {tor:.1f} | {xla / tor:.2f} |")
  report = {"repeats": args.repeats, "torch_threads": TORCH_THREADS, "jax": jax.__version__,
            "torch": torch.__version__, "results": rows}
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  main()
