"""The training loop: the only place with side effects (logging, eval, checkpoints, export).

Its parts, one concern a module beside it: lock.py (one run per workdir), preemption.py
(SIGTERM), metrics_writer.py, evaluation.py, resume.py (what a resume may change).

The loop sees data only as host-local numpy batches from an iterator that can report and
restore its position (`get_state` / `set_state`), so it never imports `data_pipelines`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import jax
import numpy as np
import tqdm

from data_pipelines import storage
from t5x_like import checkpointing, flops, sharding
from t5x_like.config import Config, save_config
from t5x_like.distributed import is_main_process
from t5x_like.models import lora
from t5x_like.training import evaluation, optimizer, tasks
from t5x_like.training import step as step_lib
from t5x_like.training.batches import to_global
from t5x_like.training.lock import WorkdirLock
from t5x_like.training.metrics_writer import MetricsWriter
from t5x_like.training.preemption import PreemptionWatch
from t5x_like.training.resume import check_resume_compatible


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


class NonFiniteLossError(RuntimeError):
  """A step had a NaN/Inf loss or gradient and train.on_nonfinite is "stop"."""


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
    self.lora = step_lib.lora_spec(self.task)
    # What a step checkpoint holds: the whole state, or with LoRA the state without the
    # frozen base (saved once in lora_base/).
    self.saved_abstract = self.abstract if self.lora is None else self.abstract.replace(
        params=lora.trainable(self.abstract.params, self.lora))

  def zero_mems(self) -> Any:
    """The task's initial memory (None without one): each evaluation pass starts from it."""
    return step_lib.zero_mems(self.task, self.config.train.batch_size, self.mesh,
                              self.state_sh.mems)

  def init_or_restore(self, ckpt: checkpointing.Checkpointer,
                      data: DataIterator | None, save_base: bool = True) -> step_lib.TrainState:
    """The state to start from: fresh, the import's step 0, or the latest checkpoint. A LoRA
    run starting (fresh or from step 0) saves its frozen base once (`save_base`)."""
    latest = ckpt.latest_step()
    if latest is None:
      state = step_lib.init_state(self.task, self.tx, self.mesh, self.config.train.seed,
                                  self.state_sh, self.config.train.batch_size)
      if self.lora is not None and save_base:
        self._save_lora_base(state.params)
      return state
    if checkpointing.holds_optimizer_history(latest):
      state, data_state, step = ckpt.restore(latest, self.saved_abstract)
      if self.lora is not None:
        state = state.replace(params=lora.overlay(self._restore_lora_base(), state.params))
    else:
      # The import's step 0: its weights, and the fresh optimiser state (and memory) of this
      # run's settings, whatever optimiser the import was configured with.
      params, data_state, step = self._restore_step0(ckpt, latest)
      state = self._fresh_state(params)
      if self.lora is not None and save_base:
        self._save_lora_base(params)
    if data is not None and data_state:
      data.set_state(data_state)
    self.log(f"resumed from {ckpt.directory}/{step}")
    return state

  def _restore_step0(self, ckpt: checkpointing.Checkpointer, step: int
                     ) -> tuple[Any, dict[str, Any], int]:
    """An import's params. A LoRA run over an import without adapters (a plain `pretrain
    import`) gets this run's fresh adapters (B = 0: the model computes what the import does)."""
    if self.lora is None or lora.has_adapters(ckpt.saved_params(step)):
      return ckpt.restore_params(step, self.abstract.params)
    base, data_state, step = ckpt.restore_params(step,
                                                 lora.without_adapters(self.abstract.params))
    fresh = step_lib.init_state(self.task, self.tx, self.mesh, self.config.train.seed,
                                self.state_sh, self.config.train.batch_size).params
    adapters = lora.trainable(fresh, dataclasses.replace(self.lora, train_embeddings=False))
    return lora.overlay(base, adapters), data_state, step

  def _lora_base_ckpt(self, read_only: bool = False) -> checkpointing.Checkpointer:
    return checkpointing.Checkpointer(checkpointing.lora_base_dir(self.workdir), keep=1,
                                      async_save=False, read_only=read_only)

  def _save_lora_base(self, params: Any) -> None:
    """Saves the frozen base under a new number in lora_base/ (orbax then drops the older
    one, so a crash leaves the old or the new base, never a half-written one)."""
    base = self._lora_base_ckpt()
    try:
      latest = base.latest_step()
      base.save(0 if latest is None else latest + 1,
                {"params": lora.frozen(params, self.lora)}, {}, force=True)
      base.wait()
    finally:
      base.close()

  def _restore_lora_base(self) -> Any:
    return checkpointing.restore_lora_base(self.workdir,
                                           lora.frozen(self.abstract.params, self.lora))

  def saved_state(self, state: step_lib.TrainState) -> step_lib.TrainState:
    """What a step checkpoint holds (`saved_abstract`)."""
    if self.lora is None:
      return state
    return state.replace(params=lora.trainable(state.params, self.lora))

  def _fresh_state(self, params: Any) -> step_lib.TrainState:
    """Step 0 with `params` and a new optimiser state and memory, as `init_state` makes them."""
    train = step_lib.trainable_params(self.task, params)
    opt_state = jax.jit(self.tx.init, out_shardings=self.state_sh.opt_state)(train)
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
    if self.lora is not None:
      n_train = tasks.param_count(lora.trainable(self.boxed.params, self.lora))
      self.log(f"LoRA rank {self.lora.rank} on {', '.join(self.lora.targets)}: "
               f"{n_train / 1e6:.3f}M trainable parameters ({100 * n_train / n_params:.2f}%); "
               "the rest is frozen")
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
                                 c.optim.grad_accum_steps, c.objective.loss_normalizing_factor),
        self.state_sh, self.batch_sh, self.mesh)
    eval_step = step_lib.jit_eval_step(evaluation.make_eval_step(self.task), self.state_sh.params,
                                       self.batch_sh, self.mesh, self.state_sh.mems)
    flops_per_step = flops.train_flops_per_step(c)
    self._peak_scale = 1 if jax.devices()[0].platform == "cpu" else jax.device_count()
    peak = flops.measured_matmul_peak(c.model.dtype) * self._peak_scale  # fake CPU devices
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
        batch = to_global(next(data.train), self.batch_sh, features)
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
          last_train, peak = self._log_window(window, window_start, tokens_per_step,
                                              flops_per_step, peak, step, writer, bar)
          window = []
        if data.make_eval is not None and c.train.eval_steps and (
            step % c.train.eval_every == 0 or step == c.train.steps):
          last_eval = evaluation.evaluate(eval_step, state.params, data.make_eval(),
                                          self.batch_sh, features, c.train.eval_steps,
                                          data.baseline_token, self.zero_mems())
          writer.write(step, "eval", last_eval)
          self.log(f"eval step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in
                                                      last_eval.items()))
        stop = watch is not None and step < c.train.steps and watch.should_stop(step)
        if step % c.checkpoint.every == 0 or step == c.train.steps or stop:
          check_finite()  # never save after a step that "stop" would end the run at
          ckpt.save(step, self.saved_state(state), data.train.get_state(),
                    force=step == c.train.steps or stop)
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
                  writer: MetricsWriter, bar: tqdm.tqdm) -> tuple[dict[str, float], float]:
    """Writes the window's mean metrics; returns them and the (possibly re-measured) peak."""
    if not window:
      return {}, peak
    host = jax.device_get(window)
    finite = [m for m in host if not m["nonfinite"]] or host  # skipped steps: not averaged in
    values = {k: float(np.mean([m[k] for m in finite])) for k in host[-1]}
    values["nonfinite"] = float(sum(m["nonfinite"] for m in host))
    values["learning_rate"] = float(host[-1]["learning_rate"])
    if start is not None:
      seconds = (time.perf_counter() - start) / len(window)
      values["step_time_s"] = seconds
      values["tokens_per_s"] = tokens_per_step / seconds
      if flops_per_step / seconds > peak:
        # The peak was measured in a slow moment (a shared machine under load): measure it
        # again now, and keep the higher figure.
        again = flops.measured_matmul_peak.__wrapped__(self.config.model.dtype)
        peak = max(peak, again * self._peak_scale)
      values["mfu"] = flops_per_step / seconds / peak
    writer.write(step, "train", values)
    postfix = {"loss": f"{values['loss']:.3f}", "acc": f"{values['accuracy']:.3f}"}
    if "tokens_per_s" in values:
      postfix["tok/s"] = f"{values['tokens_per_s']:.0f}"
      postfix["MFU"] = f"{100 * values['mfu']:.1f}%"
    bar.set_postfix(postfix, refresh=False)
    return values, peak


def train(config: Config, workdir: str, data: DataHooks,
          export_fn: Callable[[Any], None] | None = None) -> dict[str, Any]:
  """Runs (or resumes) training in `workdir`; returns the last train/eval metrics."""
  return Trainer(config, workdir).run(data, export_fn)


__all__ = ["DataHooks", "DataIterator", "NonFiniteLossError", "Trainer", "train"]

