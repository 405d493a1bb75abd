"""`pretrain eval`: metrics of a saved checkpoint on the validation split."""

from __future__ import annotations

import os
from typing import Any

import jax

from pretrain import data as data_lib
from t5x_like import checkpointing
from t5x_like.config import ConfigError, read_config
from t5x_like.training import evaluation as evaluation_lib
from t5x_like.training import loop
from t5x_like.training import step as step_lib


def evaluate_workdir(workdir: str, step: int | None = None,
                     max_batches: int = 0) -> dict[str, Any]:
  path = os.path.join(workdir, "config.yaml")
  if not os.path.exists(path):
    raise ConfigError(f"{workdir} is not a run directory: {path} does not exist")
  run = data_lib.build(read_config(path))
  trainer = loop.Trainer(run.config, workdir)
  ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), read_only=True)
  try:
    params, _, restored = ckpt.restore_params(step, trainer.abstract.params)  # no optimiser
  finally:
    ckpt.close()
  eval_step = step_lib.jit_eval_step(step_lib.make_eval_step(trainer.task),
                                     trainer.state_sh.params, trainer.batch_sh, trainer.mesh,
                                     trainer.state_sh.mems)
  with step_lib.mesh_context(trainer.mesh):
    metrics = evaluation_lib.evaluate(eval_step, params, run.hooks.make_eval(),
                                      trainer.batch_sh, trainer.task.features, max_batches,
                                      run.hooks.baseline_token, trainer.zero_mems())
  return {"step": restored, "split": "validation", **metrics,
          "devices": jax.device_count()}
