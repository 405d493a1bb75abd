"""Checkpoint cost in training: our train step with and without orbax saves, same process.

  python -m benchmarks.bench_checkpoint [--shape bert_small] [--steps 20] [--every 10]
      [--rounds 3] [--json out.json]

Per round, three windows of `--steps` steps each, interleaved so machine noise hits all of
them alike: no saving; an asynchronous save (as `pretrain train` does) every `--every` steps;
a synchronous save every `--every` steps. Each window ends when its last save is on disk
(`wait`), so the background writes' whole cost is inside it. The overhead of a kind is its
window's whole wall time (steps, `save()` calls and the final wait) over the no-save window
of the same round, minus one, median over rounds: a slowed step, a blocking save and the
wait for the last write all count (a median step time would hide the slowed steps). Also
reported: median step time per kind, the cost of one save in step times, the blocking part
of `save()` (device -> host copy), the final wait, compile time, and peak host memory.
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

from benchmarks import bench_train, train_harness
from benchmarks.train_sides import Side, build_ours
from data_pipelines.vocab import VocabInfo
from t5x_like import checkpointing


def _window(side: Side, start: int, steps: int, every: int,
            ckpt: checkpointing.Checkpointer | None
            ) -> tuple[list[float], list[float], float, float]:
  """(each step's seconds, each save() call's seconds, seconds waiting for the last save,
  the window's whole seconds)."""
  step_s, save_s = [], []
  begin = time.perf_counter()
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
  end = time.perf_counter()
  return step_s, save_s, end - t0, end - begin


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="bert_small", choices=sorted(bench_train.SPEC.shapes))
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--every", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)

  total = args.steps * 3 * args.rounds + 10
  config = train_harness.shape_config(bench_train.SPEC, args.shape, total)
  batches = bench_train.make_batches(config, VocabInfo.synthetic(config.model.vocab_size),
                                     train_harness.NUM_BATCHES, seed=0)
  side, compile_s = build_ours(config, batches)
  for i in range(3):  # warm-up
    side.run(i)
  root = tempfile.mkdtemp(prefix="bench_ckpt_")
  kinds = ("none", "async", "sync")
  steps_s = {k: [] for k in kinds}
  saves_s = {k: [] for k in kinds}
  waits_s = {k: [] for k in kinds}
  windows_s = {k: [] for k in kinds}
  state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(side.state()))
  try:
    step = 3
    for r in range(args.rounds):
      for kind in kinds:
        ckpt = None
        if kind != "none":
          ckpt = checkpointing.Checkpointer(os.path.join(root, f"{kind}_{r}"), keep=2,
                                            async_save=kind == "async")
        s_, v_, w_, total_s = _window(side, step, args.steps, args.every, ckpt)
        if ckpt is not None:
          ckpt.close()
        steps_s[kind] += s_
        saves_s[kind] += v_
        waits_s[kind].append(w_)
        windows_s[kind].append(total_s)
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
      "window_ms": {k: [1000 * w for w in v] for k, v in windows_s.items()},
      "peak_host_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }
  # Whole windows, each against the no-save window of its own round (the same minutes of
  # machine noise): everything saving costs, spread over the window's steps.
  result["overhead"] = {
      k: statistics.median(w / none - 1 for w, none in zip(windows_s[k], windows_s["none"]))
      for k in kinds[1:]}
  saves_per_window = args.steps // args.every
  result["save_cost_steps"] = {
      k: result["overhead"][k] * args.steps / max(saves_per_window, 1) for k in kinds[1:]}
  print(f"checkpoint cost, {args.shape}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, jax {jax.__version__}; train state {result['state_mb']:.1f} "
        f"MB; compile {compile_s:.1f} s; peak host memory {result['peak_host_mb']:.0f} MB")
  print(f"{args.rounds} rounds of {args.steps} steps per kind (interleaved), a save every "
        f"{args.every} steps; overhead = whole window / the round's no-save window - 1, "
        "median over rounds\n")
  print("| saving | median step (ms) | save() blocks (ms) | final wait (ms) | "
        "one save, in step times | overhead on the window |")
  print("|---|---:|---:|---:|---:|---:|")
  print(f"| none | {base:.1f} | – | – | – | – |")
  for k in kinds[1:]:
    print(f"| {k} | {step_ms[k]:.1f} | {result['save_blocking_ms'][k]:.1f} | "
          f"{result['final_wait_ms'][k]:.1f} | {result['save_cost_steps'][k]:.2f} | "
          f"{100 * result['overhead'][k]:+.1f}% |")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
