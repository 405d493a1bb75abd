"""Checkpoint cost in training: our train step with and without orbax saves, same process.

  python -m benchmarks.bench_checkpoint [--shape bert_small] [--steps 20] [--every 10]
      [--rounds 3] [--json out.json]

Per round, three windows of `--steps` steps each, interleaved so machine noise hits all of
them alike: no saving; an asynchronous save (as `pretrain train` does) every `--every` steps;
a synchronous save every `--every` steps. Each window ends when its last save is on disk
(`wait`), so the background writes' whole cost is inside it. Reported: median step time per
window kind, the overhead on step time, the cost of one save in step times, the blocking
part of `save()` (device -> host copy), compile time, and the process's peak host memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time

import jax

from benchmarks import bench_train
from data_pipelines.vocab import VocabInfo
from t5x_like import checkpointing


def _window(side: bench_train.Side, start: int, steps: int, every: int,
            ckpt: checkpointing.Checkpointer | None) -> tuple[list[float], list[float], float]:
  """(each step's seconds, each save() call's seconds, seconds waiting for the last save)."""
  step_s, save_s = [], []
  for i in range(start, start + steps):
    t0 = time.perf_counter()
    side.run(i)
    step_s.append(time.perf_counter() - t0)
    if ckpt is not None and (i + 1) % every == 0:
      t0 = time.perf_counter()
      ckpt.save(i + 1, side.state(), {"step": i + 1}, force=True)
      save_s.append(time.perf_counter() - t0)
  t0 = time.perf_counter()
  if ckpt is not None:
    ckpt.wait()
  return step_s, save_s, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="bert_small", choices=sorted(bench_train.SHAPES))
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--every", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)

  total = args.steps * 3 * args.rounds + 10
  config = bench_train.shape_config(args.shape, total)
  batches = bench_train.make_batches(config, VocabInfo.synthetic(config.model.vocab_size),
                                     bench_train.NUM_BATCHES, seed=0)
  side, compile_s = bench_train.build_ours(config, batches)
  for i in range(3):  # warm-up
    side.run(i)
  root = tempfile.mkdtemp(prefix="bench_ckpt_")
  kinds = ("none", "async", "sync")
  steps_s = {k: [] for k in kinds}
  saves_s = {k: [] for k in kinds}
  waits_s = {k: [] for k in kinds}
  state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(side.state()))
  try:
    step = 3
    for r in range(args.rounds):
      for kind in kinds:
        ckpt = None
        if kind != "none":
          ckpt = checkpointing.Checkpointer(os.path.join(root, f"{kind}_{r}"), keep=2,
                                            async_save=kind == "async")
        s_, v_, w_ = _window(side, step, args.steps, args.every, ckpt)
        if ckpt is not None:
          ckpt.close()
        steps_s[kind] += s_
        saves_s[kind] += v_
        waits_s[kind].append(w_)
        step += args.steps
  finally:
    shutil.rmtree(root, ignore_errors=True)

  step_ms = {k: 1000 * statistics.median(v) for k, v in steps_s.items()}
  base = step_ms["none"]
  result = {
      "shape": args.shape, "steps": args.steps, "every": args.every, "rounds": args.rounds,
      "state_mb": state_bytes / 2**20, "compile_s": compile_s,
      "step_ms": step_ms,
      "save_blocking_ms": {k: 1000 * statistics.median(saves_s[k]) for k in kinds[1:]},
      "final_wait_ms": {k: 1000 * statistics.median(waits_s[k]) for k in kinds[1:]},
      "peak_host_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }
  # Per save: the blocking call plus the slowdown of the `every` steps that follow it
  # (background writes compete for the cores), in step times; amortised over `every` steps.
  result["save_cost_steps"] = {
      k: (result["save_blocking_ms"][k] + args.every * (step_ms[k] - base)) / base
      for k in kinds[1:]}
  result["overhead"] = {k: result["save_cost_steps"][k] / args.every for k in kinds[1:]}
  print(f"checkpoint cost, {args.shape}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, jax {jax.__version__}; train state {result['state_mb']:.1f} "
        f"MB; compile {compile_s:.1f} s; peak host memory {result['peak_host_mb']:.0f} MB")
  print(f"medians over {args.rounds} rounds of {args.steps} steps per kind (interleaved), a "
        f"save every {args.every} steps\n")
  print("| saving | median step (ms) | save() blocks (ms) | one save, in step times | "
        f"overhead at every={args.every} |")
  print("|---|---:|---:|---:|---:|")
  print(f"| none | {base:.1f} | – | – | – |")
  for k in kinds[1:]:
    print(f"| {k} | {step_ms[k]:.1f} | {result['save_blocking_ms'][k]:.1f} | "
          f"{result['save_cost_steps'][k]:.2f} | {100 * result['overhead'][k]:+.1f}% |")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
