"""`load_pretrained`: a trained run's config and parameters, with a `.logits(batch)` method."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from data_pipelines import storage
from t5x_like import checkpointing, families, models, sharding
from t5x_like.config import Config, ConfigError, MeshConfig, read_config, replace
from t5x_like.models import lora
from t5x_like.training import optimizer, tasks
from t5x_like.training import step as step_lib


@dataclasses.dataclass
class Pretrained:
  """A restored model. `params` is a host (numpy) pytree; `step` the checkpoint's step.

  A LoRA run's `params` have the adapters merged into the kernels (a plain model of the
  family); `lora_params` keeps them apart (the frozen base plus `lora_a`/`lora_b`), None for
  a run without LoRA."""
  config: Config
  params: Any
  step: int
  lora_params: Any = None

  def __post_init__(self):
    if lora.has_adapters(self.params):
      self.lora_params = self.params
      self.params = lora.merge(self.params, lora.spec_of(self.config).scale)
    self.family = families.get(self.config.model.family)
    self.model = models.build(self.config.model)
    self._names = self.family.logits_features
    self._apply = jax.jit(lambda p, b: self.family.logits(self.model, p, b))

  def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
    """Full logits (float32) for HF-named features: [B, L, V] for an encoder from
    `input_ids` (...); [B, T, V] for an encoder-decoder from `input_ids` and
    `decoder_input_ids` (teacher forcing); XLNet [B, P, V] from the query stream with
    `perm_mask` and `target_mapping`, else [B, L, V] from the content stream."""
    missing = [k for k in self.family.required if k not in batch]
    if missing:
      raise ValueError(f"batch needs {', '.join(missing)}; got {sorted(batch)}")
    floats = self.family.float_features
    feed = {k: np.asarray(v, np.float32 if k in floats else np.int32)
            for k, v in batch.items() if k in self._names}
    return np.asarray(self._apply(self.params, feed))


def _locate(path: str) -> tuple[str, int | None]:
  """Accepts a workdir, its checkpoints/ folder, or one step folder inside it."""
  path = storage.absolute(path).rstrip("/")  # a gs:// run directory too
  if storage.exists(os.path.join(path, "config.yaml")):
    return path, None
  parent = os.path.dirname(path)
  if os.path.basename(path) == "checkpoints" and storage.exists(
      os.path.join(parent, "config.yaml")):
    return parent, None
  grand = os.path.dirname(parent)
  if os.path.basename(parent) == "checkpoints" and os.path.basename(path).isdigit():
    return grand, int(os.path.basename(path))
  raise ConfigError(f"{path} is not a run directory (no config.yaml) nor a checkpoint in one")


def restore_params(config: Config, workdir: str, step: int | None = None) -> tuple[Any, int]:
  """Restores the parameters of `step` (latest if None) onto this process's first device.

  A LoRA run's: its frozen base (lora_base/) with the step's adapters, unmerged."""
  single = replace(config, mesh=dataclasses.asdict(MeshConfig(data=1, fsdp=1, tensor=1)))
  task = tasks.make_task(single)
  mesh = sharding.make_mesh(single.mesh, jax.local_devices()[:1])
  tx = optimizer.make_optimizer(single.optim, single.train.steps)
  _, abstract, _ = step_lib.state_shardings(task, tx, mesh, single.train.batch_size)
  ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), read_only=True)
  try:
    # Params only: the optimiser state (which config.yaml may no longer describe after a
    # step-0 import was trained with other optim settings) is not needed.
    spec = step_lib.lora_spec(task)
    if spec is None:
      params, _, restored_step = ckpt.restore_params(step, abstract.params)
    else:
      params, restored_step = restore_lora_params(ckpt, step, abstract.params, spec, workdir)
  finally:
    ckpt.close()
  return jax.device_get(params), restored_step


def restore_lora_params(ckpt: checkpointing.Checkpointer, step: int | None, abstract: Any,
                        spec: lora.LoraSpec, workdir: str) -> tuple[Any, int]:
  """A LoRA run's params at `step` (latest if None), unmerged, onto `abstract`'s shardings:
  the import's whole step 0, or a step's trainable subtree over the base in lora_base/."""
  step = ckpt.latest_step() if step is None else step
  if step is not None and not checkpointing.holds_optimizer_history(step):
    # An import's step 0 holds whole params (with adapters after `import --adapter`).
    if not lora.has_adapters(ckpt.saved_params(step)):
      abstract = lora.without_adapters(abstract)
    params, _, step = ckpt.restore_params(step, abstract)
    return params, step
  adapters, _, step = ckpt.restore_params(step, lora.trainable(abstract, spec))
  base = checkpointing.restore_lora_base(workdir, lora.frozen(abstract, spec))
  return lora.overlay(base, adapters), step


def run_config(workdir_or_checkpoint: str) -> Config:
  """The run's config (cheap: no parameters are read)."""
  workdir, _ = _locate(workdir_or_checkpoint)
  return read_config(os.path.join(workdir, "config.yaml"))


def load_pretrained(workdir_or_checkpoint: str, step: int | None = None) -> Pretrained:
  workdir, located_step = _locate(workdir_or_checkpoint)
  config = read_config(os.path.join(workdir, "config.yaml"))
  params, restored = restore_params(config, workdir, step if step is not None else located_step)
  return Pretrained(config=config, params=params, step=restored)
