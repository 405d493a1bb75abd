"""`pretrain eval`: metrics of a saved checkpoint on the validation split."""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from data_pipelines import storage
from pretrain import data as data_lib
from t5x_like import checkpointing
from t5x_like.config import ConfigError, read_config, replace
from t5x_like.training import evaluation as evaluation_lib
from t5x_like.training import loop
from t5x_like.training import step as step_lib

# `pretrain eval --length-sweep` writes its table here (pretrain plot draws it).
LENGTH_SWEEP_FILE = "length_sweep.jsonl"


def evaluate_workdir(workdir: str, step: int | None = None, max_batches: int = 0,
                     seq_len: int | None = None) -> dict[str, Any]:
  """Metrics of a checkpoint on the validation split; `seq_len` evaluates at another row
  length than the run trained with (the validation data is prepared at that length; a family
  with a learned position table refuses lengths beyond it)."""
  path = os.path.join(workdir, "config.yaml")
  if not os.path.exists(path):
    raise ConfigError(f"{workdir} is not a run directory: {path} does not exist")
  config = read_config(path)
  if seq_len is not None:
    if seq_len < 8:
      raise ConfigError(f"--seq-len must be >= 8, got {seq_len}")
    config = replace(config, data={"seq_len": seq_len, "target_len": 0})
  run = data_lib.build(config)
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
  return {"step": restored, "split": "validation", "seq_len": run.config.data.seq_len,
          **metrics, "devices": jax.device_count()}


def parse_lengths(text: str) -> list[int]:
  try:
    lengths = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ConfigError(f"--length-sweep takes lengths separated by commas, e.g. "
                      f"128,256,512,1024; got {text!r}") from None
  if not lengths or min(lengths) < 8:
    raise ConfigError(f"--length-sweep needs lengths >= 8, got {text!r}")
  return lengths


def length_sweep(workdir: str, lengths: list[int], step: int | None = None,
                 max_batches: int = 0) -> list[dict[str, Any]]:
  """`evaluate_workdir` at each length; the rows are also written to
  WORKDIR/length_sweep.jsonl (replaced whole) for `pretrain plot`."""
  rows = [evaluate_workdir(workdir, step, max_batches, seq_len=n) for n in lengths]
  if jax.process_index() == 0:
    storage.write_text(os.path.join(workdir, LENGTH_SWEEP_FILE),
                       "".join(json.dumps(r) + "\n" for r in rows))
  return rows
