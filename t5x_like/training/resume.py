"""Whether a workdir's earlier run can be resumed with this config: the model shape and the
optimiser state's structure must stay; anything else may change."""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax

from data_pipelines import storage
from t5x_like import checkpointing
from t5x_like.config import Config, ConfigError, OptimConfig, read_config, tagged, to_dict
from t5x_like.training import optimizer, tasks
from t5x_like.training import step as step_lib


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
  # The parameters' shapes (and the scanned stack's layout) must stay.
  keys = ("family",) if old["family"] != new["family"] else (
      tagged(config.model, "shape") + ("scan_layers",))
  diffs = [f"model.{k} {old[k]} -> {new[k]}" for k in keys if old[k] != new[k]]
  if diffs:
    raise ConfigError(f"workdir {workdir} holds a run with a different model shape "
                      f"({'; '.join(diffs)}); use a new --workdir or the original settings")
  _check_lora_compatible(workdir, saved, config)
  _check_optimizer_compatible(workdir, saved, config)


# The lora keys that shape the adapters or decide what the checkpoints hold.
_LORA_SHAPE = ("rank", "targets", "modules_to_save", "train_embeddings")


def _latest_with_history(workdir: str) -> int | None:
  ckpt_dir = checkpointing.checkpoint_dir(workdir)
  if not storage.exists(ckpt_dir):
    return None
  ckpt = checkpointing.Checkpointer(ckpt_dir, read_only=True)
  try:
    step = ckpt.latest_step()
  finally:
    ckpt.close()
  return step if step is not None and checkpointing.holds_optimizer_history(step) else None


def _check_lora_compatible(workdir: str, saved: Config, config: Config) -> None:
  """A resume keeps the LoRA layout (adapter shapes, what is trained); a step-0 import may
  take any. alpha and dropout may change."""
  old, new = to_dict(saved.lora), to_dict(config.lora)
  changed = [k for k in _LORA_SHAPE if old[k] != new[k]]
  if not changed:
    return
  step = _latest_with_history(workdir)
  if step is None:
    return
  diffs = "; ".join(f"lora.{k} {old[k]} -> {new[k]}" for k in changed)
  raise ConfigError(
      f"workdir {workdir}: checkpoint {step} was trained with other LoRA settings ({diffs}); "
      "resume with the original lora settings, or `pretrain export` the run and `pretrain "
      "import` the export into a new --workdir with the new ones")


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
  params = step_lib.trainable_params(task, params)  # LoRA: the optimiser sees the adapters

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


__all__ = ["check_resume_compatible"]
