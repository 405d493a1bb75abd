"""The training loop: the only place with side effects (logging, eval, checkpoints, export).

The loop sees data only as host-local numpy batches from an iterator that can report and
restore its position (`get_state` / `set_state`), so it never imports `data_pipelines`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import typing
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import flax.linen as nn
import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from data_pipelines import storage
from t5x_like import checkpointing, flops, sharding
from t5x_like.config import (
  Config,
  ConfigError,
  OptimConfig,
  read_config,
  save_config,
  to_dict,
)
from t5x_like.training import optimizer, tasks
from t5x_like.training import step as step_lib


class DataIterator(Protocol):
  def __next__(self) -> dict[str, np.ndarray]: ...
  def get_state(self) -> dict[str, Any]: ...
  def set_state(self, state: dict[str, Any]) -> None: ...


@dataclasses.dataclass
class DataHooks:
  """What the loop needs from the data side.

  train: host-local training batches (rows of this process), resumable.
  make_eval: returns a fresh finite iterable over host-local validation batches.
  baseline_token: optional id for the unigram-frequency baseline accuracy in eval.
  """
  train: DataIterator
  make_eval: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None
  # The most frequent training token: eval reports the accuracy of always predicting it.
  baseline_token: int | None = None


def _log_main(line: str) -> None:
  """Progress lines go to stderr from process 0 only (one copy per job, not per host)."""
  if is_main_process():
    print(line, file=sys.stderr, flush=True)


def is_main_process() -> bool:
  return jax.process_index() == 0


def check_resume_compatible(workdir: str, config: Config) -> None:
  """A workdir keeps its model: resuming with another shape is an error, not a silent reinit."""
  path = os.path.join(workdir, "config.yaml")
  if not storage.exists(path):
    return
  try:
    saved = read_config(path)
  except ConfigError as e:
    raise ConfigError(f"{path} (from an earlier run) is invalid: {e}") from None
  old, new = to_dict(saved.model), to_dict(config.model)
  shape_keys = ("family", "vocab_size", "hidden_size", "num_layers", "num_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size",
                "num_decoder_layers", "head_dim", "scan_layers")
  diffs = [f"model.{k} {old[k]} -> {new[k]}" for k in shape_keys if old[k] != new[k]]
  if diffs:
    raise ConfigError(f"workdir {workdir} holds a run with a different model shape "
                      f"({'; '.join(diffs)}); use a new --workdir or the original settings")
  _check_optimizer_compatible(workdir, saved, config)


def _check_optimizer_compatible(workdir: str, saved: Config, config: Config) -> None:
  """A resume keeps the optimiser state's structure (tree and shapes): orbax cannot restore
  one optimiser's state into another's. Keys that keep it (learning rate, schedule, ...) may
  change. A step-0 checkpoint (from `pretrain import`) holds no history: any optimiser goes."""
  old, new = to_dict(saved.optim), to_dict(config.optim)
  changed = [k for k in new if old.get(k) != new[k]]
  ckpt_dir = checkpointing.checkpoint_dir(workdir)
  if not changed or not storage.exists(ckpt_dir):
    return
  ckpt = checkpointing.Checkpointer(ckpt_dir, read_only=True)
  try:
    step = ckpt.latest_step()
    if step is None or not checkpointing.holds_optimizer_history(step):
      return
    stored = ckpt.optimizer_layout(step)
  finally:
    ckpt.close()
  task = tasks.make_task(config)
  params = jax.eval_shape(lambda rng: nn.meta.unbox(task.init(rng))["params"],
                          jax.random.key(0))

  def layout(optim: OptimConfig) -> dict[tuple[str, ...], tuple[int, ...] | None]:
    tx = optimizer.make_optimizer(optim, config.train.steps)
    return checkpointing.optimizer_layout(jax.eval_shape(tx.init, params))

  if layout(config.optim) == stored:
    return
  # Name the keys that change the structure on their own (not a learning rate changed with
  # them); all changed keys if none does alone.
  culprits = [k for k in changed
              if layout(dataclasses.replace(saved.optim, **{k: new[k]})) != stored] or changed
  diffs = "; ".join(f"optim.{k} {old.get(k)} -> {new[k]}" for k in culprits)
  raise ConfigError(
      f"workdir {workdir}: checkpoint {step} holds an optimiser state of another structure "
      f"({diffs}); resume with the original optim settings, or start a new --workdir "
      "(`pretrain export` then `pretrain import` carries the weights over with a new "
      "optimiser state)")


def _summary_writer(logdir: str) -> Any:
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX imports torch, when installed, only to accept torch tensors (2+ s of every
  run's start-up here); this loop logs Python floats, so torch is hidden while it imports.
  """
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter(logdir)


class MetricsWriter:
  """metrics.jsonl + TensorBoard event files, written by process 0 only."""

  def __init__(self, workdir: str):
    self.enabled = is_main_process()
    self._jsonl = None
    self._tb = None
    if self.enabled:
      # Kept open for the run's lifetime and closed in close().
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")  # noqa: SIM115
      self._tb = _summary_writer(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": step, "split": split, "time": time.time(), **values}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for key, value in values.items():
      self._tb.add_scalar(f"{split}/{key}", value, step)
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def _to_global(batch: dict[str, np.ndarray], shardings: dict[str, Any],
               features: tuple[str, ...]) -> dict[str, jax.Array]:
  missing = [f for f in features if f not in batch]
  if missing:
    raise ConfigError(f"the data pipeline does not produce features {missing} that the model "
                      f"needs (it produced {sorted(batch)})")
  return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(batch[k]))
          for k in features}


def evaluate(eval_fn: Callable, params: Any, batches: Iterable[dict[str, np.ndarray]],
             shardings: dict[str, Any], features: tuple[str, ...],
             max_batches: int, baseline_token: int | None = None,
             mems: Any = None) -> dict[str, float]:
  """Loss, accuracy and perplexity over predicted tokens of up to `max_batches` batches.

  mems: the task's initial memory (XLNet), carried from batch to batch (the eval batches come
  in stream order then); None for tasks without memory.
  """
  totals = {"loss_sum": 0.0, "count": 0.0, "correct": 0.0}
  baseline_hits = 0
  for i, batch in enumerate(batches):
    if max_batches and i >= max_batches:
      break
    out, mems = eval_fn(params, _to_global(batch, shardings, features), mems)
    out = jax.device_get(out)
    for key in totals:
      totals[key] += float(out[key])
    if baseline_token is not None:
      baseline_hits += int(np.sum(np.asarray(batch["labels"]) == baseline_token))
  count = max(totals["count"], 1.0)
  loss = totals["loss_sum"] / count
  metrics = {"loss": loss, "accuracy": totals["correct"] / count,
             "perplexity": math.exp(min(loss, 50.0)), "predicted_tokens": totals["count"]}
  if baseline_token is not None:
    # Each host sees only its rows' labels; hosts hold equal shares of every batch.
    metrics["unigram_baseline_accuracy"] = baseline_hits * jax.process_count() / count
  return metrics


class WorkdirLock:
  """An exclusive lock on <workdir>/.lock for the run's lifetime, so two runs never write one
  workdir. flock: released by the OS when the process ends, even by SIGKILL (no stale lock).
  Process 0 takes it for the whole job (the hosts of one job share the workdir). Re-entrant
  within a process (the CLI takes it before data preparation, the Trainer again)."""

  _held: typing.ClassVar[dict[str, int]] = {}  # path -> nesting depth in this process

  def __init__(self, workdir: str, create: bool = True):
    # A gs:// workdir is locked in its local mirror: against a second run on this machine
    # only (an object store has no flock; docs/tpu.md).
    self.path = os.path.join(storage.local_mirror(workdir), ".lock")
    self._create = create  # False: a workdir that does not exist yet is not locked (no-op)
    self._file: Any = None
    self._nested = False

  def __enter__(self) -> typing.Self:
    if not is_main_process() or (not self._create and
                                 not os.path.isdir(os.path.dirname(self.path))):
      return self
    if self.path in WorkdirLock._held:  # this process holds it already (CLI, then Trainer)
      WorkdirLock._held[self.path] += 1
      self._nested = True
      return self
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    f = open(self.path, "a+", encoding="utf-8")  # held until __exit__
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise ConfigError(f"workdir {os.path.dirname(self.path)} is in use by another run "
                        f"({holder}); wait for it to end or stop it") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    self._file = f
    WorkdirLock._held[self.path] = 1
    return self

  def __exit__(self, *exc: object) -> None:
    if self._nested:
      WorkdirLock._held[self.path] -= 1
      return
    if self._file is not None:
      del WorkdirLock._held[self.path]
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None


class NonFiniteLossError(RuntimeError):
  """A step had a NaN/Inf loss or gradient and train.on_nonfinite is "stop"."""


class PreemptionWatch:
  """Stop at a step boundary when the VM is being taken away (SIGTERM on a spot / preemptible
  VM, ~30 s before it goes).

  One process: a SIGTERM handler sets a flag the loop reads after each step. Several
  processes: every host must stop at the same step, so the loop asks JAX's preemption sync
  point (`multihost_utils.reached_preemption_sync_point`, which catches SIGTERM itself on
  TPU pods); where that service is unavailable the hosts' flags are combined at log steps.
  """

  def __init__(self, log_every: int):
    self.requested = False
    self._log_every = log_every
    self._previous: Any = None
    self._multi = jax.process_count() > 1
    self._sync_point = self._multi

  def __enter__(self) -> typing.Self:
    # Python signal handlers can only be set from the main thread; with several processes
    # JAX's preemption notifier owns SIGTERM.
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc: object) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _handle(self, signum: int, frame: object) -> None:
    del signum, frame
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if not self._multi:
      return self.requested
    if self._sync_point:
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # no preemption service (e.g. CPU): combine the flags
        self._sync_point = False
    if step % self._log_every:
      return False
    flags = multihost_utils.process_allgather(np.array(self.requested))
    return bool(np.any(flags))


@dataclasses.dataclass
class Trainer:
  """Builds everything a run needs once; `run` executes or resumes it."""
  config: Config
  workdir: str
  log: Callable[[str], None] = lambda s: _log_main(s)

  def __post_init__(self):
    c = self.config
    self.task = tasks.make_task(c)
    self.mesh = sharding.make_mesh(c.mesh)
    sharding.check_batch_divisible(c.train.batch_size, self.mesh)
    self.schedule = optimizer.make_schedule(c.optim, c.train.steps)
    self.tx = optimizer.make_optimizer(c.optim, c.train.steps)
    self.boxed, self.abstract, self.state_sh = step_lib.state_shardings(
        self.task, self.tx, self.mesh, c.train.batch_size)
    self.batch_sh = step_lib.batch_shardings(self.task.features, self.mesh)

  def zero_mems(self) -> Any:
    """The task's initial memory (None without one): each evaluation pass starts from it."""
    return step_lib.zero_mems(self.task, self.config.train.batch_size, self.mesh,
                              self.state_sh.mems)

  def init_or_restore(self, ckpt: checkpointing.Checkpointer,
                      data: DataIterator | None) -> step_lib.TrainState:
    latest = ckpt.latest_step()
    if latest is None:
      return step_lib.init_state(self.task, self.tx, self.mesh, self.config.train.seed,
                                 self.state_sh, self.config.train.batch_size)
    if checkpointing.holds_optimizer_history(latest):
      state, data_state, step = ckpt.restore(latest, self.abstract)
    else:
      # The import's step 0: its weights, and the fresh optimiser state (and memory) of this
      # run's settings, whatever optimiser the import was configured with.
      params, data_state, step = ckpt.restore_params(latest, self.abstract.params)
      state = self._fresh_state(params)
    if data is not None and data_state:
      data.set_state(data_state)
    self.log(f"resumed from {ckpt.directory}/{step}")
    return state

  def _fresh_state(self, params: Any) -> step_lib.TrainState:
    """Step 0 with `params` and a new optimiser state and memory, as `init_state` makes them."""
    opt_state = jax.jit(self.tx.init, out_shardings=self.state_sh.opt_state)(params)
    step = jax.device_put(np.zeros((), np.int32), self.state_sh.step)
    return step_lib.TrainState(step=step, params=params, opt_state=opt_state,
                               mems=self.zero_mems())

  @property
  def mirror(self) -> str:
    """Where metrics and TensorBoard files are written: the workdir itself, or for a gs://
    workdir its local mirror, copied up after every checkpoint save and at the end."""
    return storage.local_mirror(self.workdir)

  def sync_up(self) -> None:
    """gs:// workdir: copies metrics.jsonl and tensorboard/ from the mirror (process 0)."""
    if storage.is_remote(self.workdir) and is_main_process():
      for name in ("metrics.jsonl", "tensorboard"):
        storage.upload(os.path.join(self.mirror, name), storage.join(self.workdir, name))

  def run(self, data: DataHooks,
          export_fn: Callable[[Any], None] | None = None) -> dict[str, Any]:
    os.makedirs(self.mirror, exist_ok=True)
    remote_metrics = storage.join(self.workdir, "metrics.jsonl")
    if storage.is_remote(self.workdir) and is_main_process() and storage.exists(remote_metrics):
      # A resumed run (perhaps on a new VM) continues the history the bucket holds.
      storage.download(remote_metrics, os.path.join(self.mirror, "metrics.jsonl"))
    with WorkdirLock(self.workdir):
      return self._run_locked(data, export_fn)

  def _run_locked(self, data: DataHooks,
                  export_fn: Callable[[Any], None] | None = None) -> dict[str, Any]:
    c = self.config
    check_resume_compatible(self.workdir, c)
    if is_main_process():
      save_config(c, os.path.join(self.workdir, "config.yaml"))
    if c.train.print_sharding and is_main_process():
      self.log(sharding.describe(self.boxed.params, self.mesh))
    n_params = tasks.param_count(self.boxed.params)
    self.log(f"model {c.model.family}: {n_params / 1e6:.2f}M parameters; mesh "
             f"{dict(self.mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} "
             "devices")

    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(self.workdir),
                                      keep=c.checkpoint.keep, async_save=c.checkpoint.async_save)
    writer = MetricsWriter(self.mirror)
    try:
      with step_lib.mesh_context(self.mesh), PreemptionWatch(c.train.log_every) as watch:
        state = self.init_or_restore(ckpt, data.train)
        result = self._loop(state, data, ckpt, writer, watch)
        if result["preempted"]:  # an unfinished run: its checkpoint is what matters
          result.pop("state")
        elif export_fn is not None and is_main_process():
          export_fn(result.pop("state").params)
        else:
          result.pop("state")
    finally:
      ckpt.wait()
      ckpt.close()
      writer.close()
      self.sync_up()
    return result

  def _loop(self, state: step_lib.TrainState, data: DataHooks,
            ckpt: checkpointing.Checkpointer, writer: MetricsWriter,
            watch: PreemptionWatch | None = None) -> dict[str, Any]:
    c = self.config
    features = self.task.features
    train_step = step_lib.jit_train_step(
        step_lib.make_train_step(self.task, self.tx, self.schedule, c.train.seed,
                                 c.optim.grad_accum_steps),
        self.state_sh, self.batch_sh, self.mesh)
    eval_step = step_lib.jit_eval_step(step_lib.make_eval_step(self.task), self.state_sh.params,
                                       self.batch_sh, self.mesh, self.state_sh.mems)
    flops_per_step = flops.train_flops_per_step(c)
    peak = flops.measured_matmul_peak(c.model.dtype)
    if jax.devices()[0].platform != "cpu":  # fake CPU devices share one host's cores
      peak *= jax.device_count()
    tokens_per_step = c.train.batch_size * c.data.seq_len

    start_step = int(jax.device_get(state.step))
    bar = tqdm.tqdm(total=c.train.steps, initial=start_step, disable=not is_main_process(),
                    dynamic_ncols=True, mininterval=1.0, file=sys.stderr, desc="train")
    window: list[dict[str, jax.Array]] = []
    window_start: float | None = None  # None until the first (compiling) step is done
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    preempted = False
    pending: list[tuple[int, jax.Array, jax.Array]] = []  # steps whose finiteness is unread
    skipped = 0

    def check_finite() -> None:
      """Reads the non-finite flags of the steps since the last check (a host sync, done at
      log steps and before saves); stops or counts as train.on_nonfinite says."""
      nonlocal pending, skipped
      if not pending:
        return
      flags = jax.device_get([(flag, loss) for _, flag, loss in pending])
      bad = [(s, float(loss)) for (s, _, _), (flag, loss) in zip(pending, flags) if flag]
      pending = []
      if not bad:
        return
      if c.train.on_nonfinite == "skip":
        skipped += len(bad)
        self.log(f"warning: {len(bad)} step(s) with a non-finite loss or gradient were skipped "
                 f"(first: step {bad[0][0]}, loss {bad[0][1]}); {skipped} in this run")
        return
      bar.close()  # the error is the last line
      latest = ckpt.latest_step()
      last_good = (f"the last good checkpoint is {ckpt.directory}/{latest}" if latest is not None
                   else "no checkpoint was saved")
      raise NonFiniteLossError(
          f"non-finite loss or gradient at step {bad[0][0]} (loss {bad[0][1]}); the update was "
          f"not applied and nothing after it was saved; {last_good}. Lower "
          f"optim.learning_rate (or raise optim.warmup_steps), or set train.on_nonfinite=skip")

    step = start_step
    try:
      while step < c.train.steps:
        batch = _to_global(next(data.train), self.batch_sh, features)
        state, metrics = train_step(state, batch)
        step += 1
        pending.append((step, metrics["nonfinite"], metrics["loss"]))
        window.append(metrics)
        if window_start is None:  # the first step includes compilation: time from after it
          jax.block_until_ready(metrics)
          window = []
        bar.update(1)
        if step % c.train.log_every == 0 or step == c.train.steps:
          check_finite()
          last_train = self._log_window(window, window_start, tokens_per_step, flops_per_step,
                                        peak, step, writer, bar)
          window = []
        if data.make_eval is not None and c.train.eval_steps and (
            step % c.train.eval_every == 0 or step == c.train.steps):
          last_eval = evaluate(eval_step, state.params, data.make_eval(), self.batch_sh,
                               features, c.train.eval_steps, data.baseline_token,
                               self.zero_mems())
          writer.write(step, "eval", last_eval)
          self.log(f"eval step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in
                                                      last_eval.items()))
        stop = watch is not None and step < c.train.steps and watch.should_stop(step)
        if step % c.checkpoint.every == 0 or step == c.train.steps or stop:
          check_finite()  # never save after a step that "stop" would end the run at
          ckpt.save(step, state, data.train.get_state(), force=step == c.train.steps or stop)
          self.sync_up()
        if stop:
          ckpt.wait()
          preempted = True
          self.log(f"SIGTERM: saved checkpoint {ckpt.directory}/{step} and stopped; run the same "
                   "command again to continue")
          break
        if not window:  # a new timing window starts after logging, eval and saving
          window_start = time.perf_counter()
    except BaseException:
      bar.close()  # an error is then the last line on stderr
      raise
    bar.close()
    ckpt.wait()
    check_finite()
    return {"step": step, "train": last_train, "eval": last_eval, "state": state,
            "preempted": preempted, "skipped_steps": skipped}

  def _log_window(self, window: list[dict[str, jax.Array]], start: float | None,
                  tokens_per_step: int, flops_per_step: float, peak: float, step: int,
                  writer: MetricsWriter, bar: tqdm.tqdm) -> dict[str, float]:
    if not window:
      return {}
    host = jax.device_get(window)
    finite = [m for m in host if not m["nonfinite"]] or host  # skipped steps: not averaged in
    values = {k: float(np.mean([m[k] for m in finite])) for k in host[-1]}
    values["nonfinite"] = float(sum(m["nonfinite"] for m in host))
    values["learning_rate"] = float(host[-1]["learning_rate"])
    if start is not None:
      seconds = (time.perf_counter() - start) / len(window)
      values["step_time_s"] = seconds
      values["tokens_per_s"] = tokens_per_step / seconds
      values["mfu"] = flops_per_step / seconds / peak
    writer.write(step, "train", values)
    postfix = {"loss": f"{values['loss']:.3f}", "acc": f"{values['accuracy']:.3f}"}
    if "tokens_per_s" in values:
      postfix["tok/s"] = f"{values['tokens_per_s']:.0f}"
      postfix["MFU"] = f"{100 * values['mfu']:.1f}%"
    bar.set_postfix(postfix, refresh=False)
    return values


def train(config: Config, workdir: str, data: DataHooks,
          export_fn: Callable[[Any], None] | None = None) -> dict[str, Any]:
  """Runs (or resumes) training in `workdir`; returns the last train/eval metrics."""
  return Trainer(config, workdir).run(data, export_fn)


__all__ = ["DataHooks", "Trainer", "check_resume_compatible", "evaluate", "train"]

