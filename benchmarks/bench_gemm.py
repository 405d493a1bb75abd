"""float32 GEMM throughput of XLA:CPU versus torch on the shapes of a train step.

The encoder-decoder benchmarks are matmul-bound on CPU; this isolates the GEMMs. For each
(tokens, d_in, d_out) it times forward y = x @ w and both backward products (dx = dy @ w^T,
dw = x^T @ dy), XLA jitted and torch eager, interleaved, median of repeats. Run from the
repo root:

  python -m benchmarks.bench_gemm [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.bench_train import TORCH_THREADS

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


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=30)
  args = parser.parse_args(argv)
  import torch
  torch.set_num_threads(TORCH_THREADS)
  rows = []
  print("| tokens × d_in → d_out | XLA GFLOP/s | torch GFLOP/s | XLA/torch |")
  print("|---|---:|---:|---:|")
  for t, i, o in SHAPES:
    rng = np.random.default_rng(0)
    x, w, dy = (rng.standard_normal(s).astype(np.float32) for s in ((t, i), (i, o), (t, o)))
    jx, jw, jdy = (jnp.asarray(a) for a in (x, w, dy))
    fwd_bwd = jax.jit(lambda a, b, g: (a @ b, g @ b.T, a.T @ g))
    jax.block_until_ready(fwd_bwd(jx, jw, jdy))
    tx, tw, tdy = (torch.from_numpy(a) for a in (x, w, dy))

    def torch_fn():
      return tx @ tw, tdy @ tw.T, tx.T @ tdy
    torch_fn()
    xla_s, torch_s = [], []
    for _ in range(3):  # interleaved rounds
      xla_s.append(_time(lambda: jax.block_until_ready(fwd_bwd(jx, jw, jdy)), args.repeats))
      torch_s.append(_time(torch_fn, args.repeats))
    flop = 3 * 2.0 * t * i * o
    xla, tor = flop / statistics.median(xla_s) / 1e9, flop / statistics.median(torch_s) / 1e9
    rows.append({"tokens": t, "d_in": i, "d_out": o, "xla_gflops": xla, "torch_gflops": tor})
    print(f"| {t} × {i} → {o} | {xla:.1f} | {tor:.1f} | {xla / tor:.2f} |")
  return rows


if __name__ == "__main__":
  main()
