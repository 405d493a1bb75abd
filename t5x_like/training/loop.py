"""The training loop: the only place with side effects (logging, eval, checkpoints, export).

The loop sees data only as host-local numpy batches from an iterator that can report and
restore its position (`get_state` / `set_state`), so it never imports `data_pipelines`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import jax
import numpy as np
import tqdm

from t5x_like import checkpointing, flops, sharding
from t5x_like.config import Config, ConfigError, read_config, save_config, to_dict
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


def is_main_process() -> bool:
  return jax.process_index() == 0


def check_resume_compatible(workdir: str, config: Config) -> None:
  """A workdir keeps its model: resuming with another shape is an error, not a silent reinit."""
  path = os.path.join(workdir, "config.yaml")
  if not os.path.exists(path):
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


class MetricsWriter:
  """metrics.jsonl + TensorBoard event files, written by process 0 only."""

  def __init__(self, workdir: str):
    self.enabled = is_main_process()
    self._jsonl = None
    self._tb = None
    if self.enabled:
      # Kept open for the run's lifetime and closed in close().
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")  # noqa: SIM115
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

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
             max_batches: int, baseline_token: int | None = None) -> dict[str, float]:
  """Loss, accuracy and perplexity over predicted tokens of up to `max_batches` batches."""
  totals = {"loss_sum": 0.0, "count": 0.0, "correct": 0.0}
  baseline_hits = 0
  for i, batch in enumerate(batches):
    if max_batches and i >= max_batches:
      break
    out = jax.device_get(eval_fn(params, _to_global(batch, shardings, features)))
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


@dataclasses.dataclass
class Trainer:
  """Builds everything a run needs once; `run` executes or resumes it."""
  config: Config
  workdir: str
  log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)

  def __post_init__(self):
    c = self.config
    self.task = tasks.make_task(c)
    self.mesh = sharding.make_mesh(c.mesh)
    sharding.check_batch_divisible(c.train.batch_size, self.mesh)
    self.schedule = optimizer.make_schedule(c.optim, c.train.steps)
    self.tx = optimizer.make_optimizer(c.optim, c.train.steps)
    self.boxed, self.abstract, self.state_sh = step_lib.state_shardings(self.task, self.tx,
                                                                        self.mesh)
    self.batch_sh = step_lib.batch_shardings(self.task.features, self.mesh)

  def init_or_restore(self, ckpt: checkpointing.Checkpointer,
                      data: DataIterator | None) -> step_lib.TrainState:
    latest = ckpt.latest_step()
    if latest is None:
      return step_lib.init_state(self.task, self.tx, self.mesh, self.config.train.seed,
                                 self.state_sh)
    state, data_state, step = ckpt.restore(latest, self.abstract)
    if data is not None and data_state:
      data.set_state(data_state)
    self.log(f"resumed from {ckpt.directory}/{step}")
    return state

  def run(self, data: DataHooks,
          export_fn: Callable[[Any], None] | None = None) -> dict[str, Any]:
    c = self.config
    os.makedirs(self.workdir, exist_ok=True)
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
    writer = MetricsWriter(self.workdir)
    try:
      with step_lib.mesh_context(self.mesh):
        state = self.init_or_restore(ckpt, data.train)
        result = self._loop(state, data, ckpt, writer)
        if export_fn is not None and is_main_process():
          export_fn(result.pop("state").params)
        else:
          result.pop("state")
    finally:
      ckpt.wait()
      ckpt.close()
      writer.close()
    return result

  def _loop(self, state: step_lib.TrainState, data: DataHooks,
            ckpt: checkpointing.Checkpointer, writer: MetricsWriter) -> dict[str, Any]:
    c = self.config
    features = self.task.features
    train_step = step_lib.jit_train_step(
        step_lib.make_train_step(self.task, self.tx, self.schedule, c.train.seed,
                                 c.optim.grad_accum_steps),
        self.state_sh, self.batch_sh, self.mesh)
    eval_step = step_lib.jit_eval_step(step_lib.make_eval_step(self.task), self.state_sh.params,
                                       self.batch_sh, self.mesh)
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
    step = start_step
    while step < c.train.steps:
      batch = _to_global(next(data.train), self.batch_sh, features)
      state, metrics = train_step(state, batch)
      step += 1
      window.append(metrics)
      if window_start is None:  # the first step includes compilation: time from after it
        jax.block_until_ready(metrics)
        window = []
      bar.update(1)
      if step % c.train.log_every == 0 or step == c.train.steps:
        last_train = self._log_window(window, window_start, tokens_per_step, flops_per_step,
                                      peak, step, writer, bar)
        window = []
      if data.make_eval is not None and c.train.eval_steps and (
          step % c.train.eval_every == 0 or step == c.train.steps):
        last_eval = evaluate(eval_step, state.params, data.make_eval(), self.batch_sh,
                             features, c.train.eval_steps, data.baseline_token)
        writer.write(step, "eval", last_eval)
        self.log(f"eval step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in
                                                    last_eval.items()))
      if step % c.checkpoint.every == 0 or step == c.train.steps:
        ckpt.save(step, state, data.train.get_state(), force=step == c.train.steps)
      if not window:  # a new timing window starts after logging, eval and saving
        window_start = time.perf_counter()
    bar.close()
    ckpt.wait()
    return {"step": step, "train": last_train, "eval": last_eval, "state": state}

  def _log_window(self, window: list[dict[str, jax.Array]], start: float | None,
                  tokens_per_step: int, flops_per_step: float, peak: float, step: int,
                  writer: MetricsWriter, bar: tqdm.tqdm) -> dict[str, float]:
    if not window:
      return {}
    host = jax.device_get(window)
    values = {k: float(np.mean([m[k] for m in host])) for k in host[-1]}
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

