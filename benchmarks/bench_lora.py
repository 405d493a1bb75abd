"""LoRA vs full training of the same BERT: step time, optimiser state, checkpoint size and
peak host memory, measured in one run.

  python -m benchmarks.bench_lora [--shape bert_base] [--modes full,lora_qv,lora_all]
      [--steps 6] [--warmup 1] [--rounds 3] [--batch-size B] [--in-process] [--json out.json]

Modes, on the same shape, batches (MLM, seed 0) and optimiser (the preset's AdamW at a
constant learning rate, one CPU device): `full` trains every parameter; `lora_qv` is
`lora.rank=8` on the family's default targets (peft's for BertForMaskedLM: query, value);
`lora_all` is rank 8 on every encoder Dense layer (query, key, value, attention output,
intermediate, output). Each mode's step is the one `t5x_like.training.loop.Trainer` builds
(`benchmarks.train_sides.build_ours`), compiled before anything is timed.

Each mode lives in its own child process (spawned one after another, so compilations do not
overlap), which keeps each mode's peak host memory (`ru_maxrss` of its process) its own; the
parent drives them in interleaved rounds (`--warmup` untimed steps each, then `--steps` timed
steps each split over `--rounds` rounds: full, lora_qv, lora_all, full, ...), so machine noise
hits all modes alike, and only one mode runs at a time. Each step is timed to completion
(`jax.block_until_ready`) inside its process. `--in-process` builds every mode in this
process instead (the fast test; peak memory is then the process's, shared by all modes).

After the timed rounds each mode saves one step checkpoint as the trainer does: a synchronous
`t5x_like.checkpointing.Checkpointer` in `<workdir>/checkpoints` holding
`Trainer.saved_state(state)` (full: parameters and optimiser state; LoRA: the adapters and
their optimiser state, without the frozen base). The first LoRA mode also saves its frozen
base once, as a LoRA run does when it starts (`<workdir>/lora_base`). Sizes are the bytes of
the files on disk. Optimiser-state bytes are the sum of the `opt_state` leaves' bytes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
import traceback
from typing import Any

RANK = 8
ALL_LINEAR = "[query,key,value,attention_output,intermediate,output]"
MODES: dict[str, tuple[str, ...]] = {
    "full": (),
    "lora_qv": (f"lora.rank={RANK}",),  # the bert family's default targets: query, value
    "lora_all": (f"lora.rank={RANK}", f"lora.targets={ALL_LINEAR}"),
}
_NO_DROPOUT = ("model.dropout_rate=0.0", "model.attention_dropout_rate=0.0")
# shape -> (preset, overrides)
SHAPES: dict[str, tuple[str, tuple[str, ...]]] = {
    # BERT-base (12 layers, d=768, 12 heads, FFN 3072, 512 positions, WordPiece's 30522 ids)
    # at L=128; B=8 keeps a full step near 10 s on the 2-core CPU.
    "bert_base": ("bert_base", ("model.vocab_size=30522", "data.seq_len=128",
                                "train.batch_size=8", *_NO_DROPOUT)),
    "bert_small": ("bert_tiny", ("model.num_layers=4", "model.hidden_size=256",
                                 "model.num_heads=4", "model.intermediate_size=1024",
                                 "train.batch_size=16", *_NO_DROPOUT)),
    "bert_tiny": ("bert_tiny", ()),
    "bert_micro": ("bert_tiny", ("model.num_layers=1", "model.hidden_size=32", "model.num_heads=2",
                                 "model.intermediate_size=64", "model.vocab_size=500",
                                 "model.max_position_embeddings=32", "data.seq_len=32",
                                 "train.batch_size=2")),  # the fast test's
}


def _dir_bytes(path: str) -> int:
  """Bytes of the files under `path`."""
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(path) for f in files)


def mode_config(shape: str, mode: str, total_steps: int, batch_size: int | None = None) -> Any:
  """The config of `mode` on `shape`: one CPU device, constant learning rate."""
  from benchmarks import train_harness
  from t5x_like.config import load_config

  preset, overrides = SHAPES[shape]
  batch = (f"train.batch_size={batch_size}",) if batch_size else ()
  return load_config(preset, [*overrides, *batch, *train_harness.ONE_DEVICE_CONSTANT_LR,
                              f"train.steps={total_steps}", *MODES[mode]])


class Mode:
  """One mode's training step and state, built as the trainer builds them."""

  def __init__(self, shape: str, mode: str, total_steps: int, batch_size: int | None,
               workdir: str):
    import jax

    from benchmarks import bench_train, train_sides
    from data_pipelines.vocab import VocabInfo
    from t5x_like.models import lora
    from t5x_like.training import step, tasks

    self.name, self.workdir = mode, workdir
    config = mode_config(shape, mode, total_steps, batch_size)
    batches = bench_train.make_batches(config, VocabInfo.synthetic(config.model.vocab_size),
                                       2, seed=0)
    self.side, self.compile_s = train_sides.build_ours(config, batches)
    self.spec = lora.spec_of(config)
    self.task = tasks.make_task(config)
    state = self.side.state()
    nbytes = lambda tree: sum(x.nbytes for x in jax.tree_util.tree_leaves(tree))
    count = lambda tree: sum(x.size for x in jax.tree_util.tree_leaves(tree))
    m = config.model
    self.facts = {
        "mode": mode, "lora_rank": config.lora.rank,
        "lora_targets": list(self.spec.targets) if self.spec else [],
        "params": count(state.params),
        "trainable_params": count(step.trainable_params(self.task, state.params)),
        "params_bytes": nbytes(state.params), "opt_state_bytes": nbytes(state.opt_state),
        "saved_state_bytes": nbytes(self.saved_state(state)),
        "compile_s": self.compile_s,
        "shape": {"batch_size": config.train.batch_size, "seq_len": config.data.seq_len,
                  "hidden_size": m.hidden_size, "num_layers": m.num_layers,
                  "num_heads": m.num_heads, "intermediate_size": m.intermediate_size,
                  "vocab_size": m.vocab_size}}

  def saved_state(self, state: Any) -> Any:
    """What the trainer's step checkpoint holds (`Trainer.saved_state`: the whole state, or
    with LoRA the state with only the trainable parameters). Not a `Trainer` itself: its mesh
    takes every device, and the fast test runs on 8 virtual ones."""
    from t5x_like.training import step

    return state.replace(params=step.trainable_params(self.task, state.params))

  def info(self) -> dict[str, Any]:
    return self.facts

  def steps(self, first: int, count: int) -> list[tuple[float, float]]:
    """Runs steps [first, first + count); each one's (seconds, loss)."""
    out = []
    for i in range(first, first + count):
      start = time.perf_counter()
      loss = self.side.run(i)
      out.append((time.perf_counter() - start, loss))
    return out

  def peak_host_mb(self) -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

  def save(self, step: int, with_base: bool) -> dict[str, Any]:
    """One step checkpoint as the trainer writes it (and the frozen base, `with_base`)."""
    from t5x_like import checkpointing

    state = self.side.state()
    directory = checkpointing.checkpoint_dir(self.workdir)
    ckpt = checkpointing.Checkpointer(directory, keep=1, async_save=False)
    start = time.perf_counter()
    try:
      ckpt.save(step, self.saved_state(state), {}, force=True)
      ckpt.wait()
    finally:
      ckpt.close()
    out = {"checkpoint_bytes": _dir_bytes(directory), "save_s": time.perf_counter() - start}
    if with_base and self.spec is not None:
      # What a LoRA run writes once, at its start (`Trainer._save_lora_base`).
      from t5x_like.models import lora

      base_dir = checkpointing.lora_base_dir(self.workdir)
      base = checkpointing.Checkpointer(base_dir, keep=1, async_save=False)
      try:
        base.save(0, {"params": lora.frozen(state.params, self.spec)}, {}, force=True)
        base.wait()
      finally:
        base.close()
      out["lora_base_bytes"] = _dir_bytes(base_dir)
    return out


def _serve(conn: Any, args: tuple) -> None:
  """A mode's child process: builds it, then answers (method, args) calls until None."""
  try:
    mode = Mode(*args)
    conn.send(("ok", None))
    while (call := conn.recv()) is not None:
      method, call_args = call
      conn.send(("ok", getattr(mode, method)(*call_args)))
  except Exception:  # noqa: BLE001 - any failure goes back to the parent, which raises it
    conn.send(("error", traceback.format_exc()))
  finally:
    conn.close()


class Remote:
  """A `Mode` in its own spawned process, called through a pipe."""

  def __init__(self, *args: Any):
    context = multiprocessing.get_context("spawn")
    self._conn, child = context.Pipe()
    self._proc = context.Process(target=_serve, args=(child, args), daemon=True)
    self._proc.start()
    child.close()
    self._answer()

  def _answer(self) -> Any:
    status, value = self._conn.recv()
    if status != "ok":
      raise RuntimeError(f"a benchmark child failed:\n{value}")
    return value

  def __getattr__(self, method: str) -> Any:
    if method.startswith("_"):
      raise AttributeError(method)
    return lambda *a: (self._conn.send((method, a)), self._answer())[1]

  def close(self) -> None:
    self._conn.send(None)
    self._proc.join(timeout=60)


def measure(shape: str = "bert_base", modes: tuple[str, ...] = tuple(MODES), steps: int = 6,
            warmup: int = 1, rounds: int = 3, batch_size: int | None = None,
            in_process: bool = False) -> dict[str, Any]:
  """The benchmark's report (see the module docstring)."""
  import jax

  if "full" not in modes or len(modes) < 2:
    raise ValueError("modes must include full and at least one LoRA mode")
  total = warmup + steps + 1
  root = tempfile.mkdtemp(prefix="bench_lora_")
  sides: dict[str, Any] = {}
  try:
    for name in modes:  # one after another: compilations do not overlap
      args = (shape, name, total, batch_size, os.path.join(root, name))
      sides[name] = Mode(*args) if in_process else Remote(*args)
    for name in modes:
      sides[name].steps(0, warmup)
    per_round = [steps // rounds + (r < steps % rounds) for r in range(rounds)]
    timed: dict[str, list[tuple[float, float]]] = {name: [] for name in modes}
    done = warmup
    for count in per_round:
      for name in modes:
        timed[name] += sides[name].steps(done, count)
      done += count
    rows = []
    for name in modes:
      row = dict(sides[name].info())
      times = [t for t, _ in timed[name]]
      row.update(median_step_s=statistics.median(times), min_step_s=min(times),
                 step_s=times, first_loss=timed[name][0][1], last_loss=timed[name][-1][1],
                 peak_host_mb_before_save=sides[name].peak_host_mb())
      row.update(sides[name].save(done, name != "full" and not any(
          "lora_base_bytes" in r for r in rows)))
      row["peak_host_mb"] = sides[name].peak_host_mb()
      rows.append(row)
  finally:
    for side in sides.values():
      if isinstance(side, Remote):
        side.close()
    shutil.rmtree(root, ignore_errors=True)

  full = next(r for r in rows if r["mode"] == "full")
  for r in rows:
    r["step_time_vs_full"] = r["median_step_s"] / full["median_step_s"]
    r["opt_state_smaller"] = full["opt_state_bytes"] / r["opt_state_bytes"]
    r["checkpoint_smaller"] = full["checkpoint_bytes"] / r["checkpoint_bytes"]
  shape_fields = rows[0].pop("shape")
  for r in rows[1:]:
    r.pop("shape")
  return {"shape": shape, **shape_fields, "steps": steps, "warmup": warmup, "rounds": rounds,
          "memory": "one process (all modes)" if in_process else "per mode (one process each)",
          "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
          "jax": jax.__version__,
          "lora_base_bytes": next((r["lora_base_bytes"] for r in rows if "lora_base_bytes" in r),
                                  None),
          "results": rows}


def table(report: dict[str, Any]) -> list[str]:
  """The report's rows as Markdown."""
  mb = lambda n: f"{n / 2**20:,.2f}"
  lines = [("| mode | trainable params | median step (ms) | vs full | optimiser state (MB) | "
            "smaller | checkpoint on disk (MB) | smaller | save (s) | peak host (MB) | "
            "compile (s) | loss first→last |"),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
  for r in report["results"]:
    lines.append(
        f"| {r['mode']} | {r['trainable_params']:,} | {1e3 * r['median_step_s']:,.0f} | "
        f"{r['step_time_vs_full']:.2f}× | {mb(r['opt_state_bytes'])} | "
        f"{r['opt_state_smaller']:,.0f}× | {mb(r['checkpoint_bytes'])} | "
        f"{r['checkpoint_smaller']:,.0f}× | {r['save_s']:.1f} | {r['peak_host_mb']:,.0f} | "
        f"{r['compile_s']:.1f} | {r['first_loss']:.2f}→{r['last_loss']:.2f} |")
  return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="bert_base", choices=sorted(SHAPES))
  parser.add_argument("--modes", default=",".join(MODES),
                      help=f"comma-separated, from {', '.join(MODES)} (full is required)")
  parser.add_argument("--steps", type=int, default=6, help="timed steps per mode")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps per mode")
  parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
  parser.add_argument("--batch-size", type=int, default=None, help="the shape's by default")
  parser.add_argument("--in-process", action="store_true",
                      help="all modes in this process (peak host memory then shared)")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
  if set(modes) - set(MODES) or "full" not in modes or len(modes) < 2:
    parser.error(f"--modes: full and at least one of {', '.join(MODES)}")
  if args.steps < args.rounds:
    parser.error("--steps must be >= --rounds")
  report = measure(args.shape, modes, args.steps, args.warmup, args.rounds, args.batch_size,
                   args.in_process)
  r = report
  print(f"LoRA (rank {RANK}) vs full training, {r['shape']} ({r['num_layers']}L, "
        f"d={r['hidden_size']}, {r['num_heads']}H, FFN {r['intermediate_size']}, "
        f"V={r['vocab_size']}), B×L = {r['batch_size']}×{r['seq_len']}; {r['cpus']} CPUs "
        f"({r['cpu']}), jax {r['jax']}; median of {r['steps']} steps after {r['warmup']} "
        f"warm-up, {r['rounds']} interleaved rounds; peak host memory {r['memory']}; "
        f"lora_base/ (saved once) {(r['lora_base_bytes'] or 0) / 2**20:,.1f} MB\n")
  print("\n".join(table(report)))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  main()
