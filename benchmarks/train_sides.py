"""The two sides of a train benchmark, how they are timed, and the matmul peaks MFU is read
against.

Ours is the step `t5x_like.training.loop.Trainer` builds, on one device; the peer is a
family's HF model stepped in PyTorch (forward, backward, optional global-norm clipping,
optimiser step) with what its `TrainSpec` supplies. Batches are pre-built on both sides'
devices, so input time is excluded. Steps are timed one by one to completion (ours with
`jax.block_until_ready`), after untimed warm-up steps; our compilation is timed separately;
the two sides run interleaved in rounds so machine noise hits both alike.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import numpy as np

from t5x_like import flops, sharding
from t5x_like.config import Config
from t5x_like.training import optimizer, step, tasks

if TYPE_CHECKING:
  from benchmarks.train_spec import TrainSpec

TORCH_THREADS = 2


@dataclasses.dataclass
class Side:
  """One framework's training step: `run(i)` does step i (batch i mod the batch count) to
  done and returns its loss."""
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
                           config.optim.grad_accum_steps,
                           config.objective.loss_normalizing_factor), state_sh, batch_sh, mesh)
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


def build_hf(spec: TrainSpec, config: Config, batches: list[dict[str, np.ndarray]]) -> Side:
  """The spec's HF peer in float32, train mode, with the spec's optimiser, on the same batches
  converted once to torch; each step: zero_grad, forward, backward, global-norm clipping at
  optim.grad_clip_norm as ours does (none when 0), optimiser step."""
  import torch

  clip = config.optim.grad_clip_norm
  torch.manual_seed(config.train.seed)
  model = spec.hf_model(config).to(torch.float32)
  model.train()
  opt = spec.hf_optimizer(model, config)
  torch_batches = [spec.hf_inputs(b) for b in batches]

  def run(i: int) -> float:
    opt.zero_grad(set_to_none=True)
    out = model(**torch_batches[i % len(torch_batches)])
    out.loss.backward()
    if clip > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return float(out.loss.detach())

  return Side(run)


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


def measure_peaks(dtype: str = "float32") -> tuple[float, float, float]:
  """(XLA, torch, max) matmul FLOP/s in `dtype`, with torch on TORCH_THREADS threads."""
  import torch

  torch.set_num_threads(TORCH_THREADS)
  xla_peak = flops.measured_matmul_peak(dtype)
  torch_peak = torch_matmul_peak(dtype=dtype)
  return xla_peak, torch_peak, max(xla_peak, torch_peak)
