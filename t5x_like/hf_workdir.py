"""`pretrain import`'s run directory: an imported checkpoint becomes a run to resume.

`prepare_run` + `write_workdir` turn an import (`t5x_like.hf_import.ImportedCheckpoint`) into
a run directory: `config.yaml` and an orbax checkpoint at step 0 holding the imported params
with a fresh optimiser state and no data-iterator state, so `pretrain train --workdir` resumes
from it. The step restarts at 0, the optimiser state and the learning-rate schedule start
anew. When the folder has a tokenizer (`tokenizer.json` or a WordPiece `vocab.txt`), its
files are copied to `<workdir>/tokenizer/` and `data.tokenizer` points there, so the data is
prepared with the checkpoint's own ids (`data_pipelines.hf_tokenizer.HFTokenizer`).

Its own module because this is about our training runs (config presets, the trainer, orbax
checkpoints), not about reading HuggingFace: `import_hf` works without any of it (e.g. for
`full_params` in tests and notebooks).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from t5x_like.config import ConfigError
from t5x_like.hf_config import HFImportError
from t5x_like.hf_import import ImportedCheckpoint
from t5x_like.hf_layouts import flatten_params, stack_layers

# The checkpoint's tokenizer files are copied here, under the run directory.
TOKENIZER_SUBDIR = "tokenizer"
# The import's summary (source, ignored, newly initialised, ...), written beside config.yaml.
IMPORT_RECORD = "hf_import.json"


def check_workdir(workdir: str) -> None:
  """Refuses a workdir that already holds checkpoints (an import starts a run at step 0)."""
  from t5x_like import checkpointing
  ckpt = checkpointing.checkpoint_dir(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise FileExistsError(f"--workdir {workdir} exists and is not a directory")
  if os.path.isdir(ckpt) and os.listdir(ckpt):
    raise FileExistsError(f"--workdir {workdir} already has checkpoints ({ckpt}); import "
                          "into a new or empty --workdir")


def tokenizer_folder(folder: str) -> str | None:
  """`folder` (absolute) if it holds a tokenizer we can use (`tokenizer.json` or
  `vocab.txt`), else None."""
  from data_pipelines.hf_tokenizer import is_hf_tokenizer_dir
  folder = os.path.abspath(folder)
  return folder if is_hf_tokenizer_dir(folder) else None


def prepare_run(imported: ImportedCheckpoint, base: str | None = None,
                overrides: list[str] | tuple[str, ...] = (),
                tokenizer: str | None = None) -> Any:
  """The run `Config`: the model section from the checkpoint, the rest from `base`.

  tokenizer: `data.tokenizer` for the run (the copy of the checkpoint's own tokenizer), set
  before the overrides, so `data.tokenizer=...` among them still wins; None keeps base's.

  base: a preset name or YAML path; default the family's tiny preset (e.g. bert_tiny). Its
  model keys tagged `run` (dtype, remat, scan_layers, XLNet memory, ...) are kept (run
  choices); every other model key comes from the checkpoint (or the family's default).
  `overrides` apply last, but may not change a key the checkpoint's tensors fix (those tagged
  `shape`).
  """
  from t5x_like import config as config_lib

  base_config = config_lib.load_config(base or f"{imported.family}_tiny")
  tree = config_lib.to_dict(base_config)
  section = config_lib.model_section(imported.family)
  model = config_lib.to_dict(section)
  model.update({k: tree["model"][k] for k in config_lib.tagged(section, "run")
                if k in tree["model"]})
  model.update(imported.model_fields)
  tree["model"] = model
  if tokenizer is not None:
    tree["data"]["tokenizer"] = tokenizer
  tree = config_lib.apply_overrides(tree, list(overrides))
  config = config_lib.from_dict(tree)
  changed = [f"model.{k}" for k in config_lib.tagged(section, "shape")
             if k in imported.model_fields and
             getattr(config.model, k) != imported.model_fields[k]]
  if changed:
    values = ", ".join(f"{k}={imported.model_fields[k[6:]]}" for k in changed)
    raise ConfigError(f"{values}: the checkpoint's tensors fix these model keys; they cannot "
                      "be overridden")
  return config


def write_workdir(imported: ImportedCheckpoint, config: Any, workdir: str,
                  tokenizer_from: str | None = None,
                  adapter: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Writes `config.yaml` and a step-0 checkpoint (imported params, fresh optimiser state,
  empty data state) so `pretrain train --workdir` resumes from it; returns a summary.

  tokenizer_from: a HF tokenizer folder whose files are copied to
  `<workdir>/tokenizer/` (what `prepare_run(tokenizer=...)` points data.tokenizer at).

  adapter: a peft LoRA adapter's tensors (config.lora set from its adapter_config), put
  into the run's LoRA params.

  Raises FileExistsError if `workdir` already has checkpoints.
  """
  from t5x_like import checkpointing
  from t5x_like.config import save_config
  from t5x_like.training import loop
  from t5x_like.training import step as step_lib

  workdir = os.path.abspath(workdir)
  check_workdir(workdir)
  trainer = loop.Trainer(config, workdir)
  ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir),
                                    keep=config.checkpoint.keep, async_save=False)
  try:
    with step_lib.mesh_context(trainer.mesh):
      # No checkpoint yet (check_workdir), so this is the run's own fresh initialisation
      # (step_lib.init_state): step 0, and whatever else the train state carries.
      state = trainer.init_or_restore(ckpt, None, save_base=False)
      state = _with_params(state, imported, trainer)
      if adapter is not None:
        state = _with_adapter(state, adapter, config, trainer)
      os.makedirs(workdir, exist_ok=True)
      if tokenizer_from is not None:
        copy_tokenizer(tokenizer_from, os.path.join(workdir, TOKENIZER_SUBDIR))
      save_config(config, os.path.join(workdir, "config.yaml"))
      ckpt.save(0, state, {}, force=True)
      ckpt.wait()
  finally:
    ckpt.close()
  summary = {"workdir": workdir, "step": 0,
             "checkpoint": os.path.join(checkpointing.checkpoint_dir(workdir), "0"),
             **imported.summary()}
  with open(os.path.join(workdir, IMPORT_RECORD), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  return summary


def copy_tokenizer(folder: str, target: str) -> list[str]:
  """Copies the tokenizer files of a HF folder (HF_TOKENIZER_FILES present) into `target`."""
  import shutil

  from data_pipelines.hf_tokenizer import HF_TOKENIZER_FILES
  os.makedirs(target, exist_ok=True)
  copied = []
  for name in HF_TOKENIZER_FILES:
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      shutil.copyfile(path, os.path.join(target, name))
      copied.append(name)
  return copied


def _with_params(state: Any, imported: ImportedCheckpoint, trainer: Any) -> Any:
  """`state` with the imported params placed on their shardings and a fresh optimiser state
  for them; params the checkpoint lacks keep their fresh initialisation."""
  import jax

  fresh = flatten_params(state.params)
  ours = flatten_params(stack_layers(imported.params, state.params))
  extra = sorted(set(ours) - set(fresh))
  if extra:
    raise HFImportError(f"imported params {extra[:5]} have no place in the run's model")
  placed = {}
  for path, leaf in fresh.items():
    if path not in ours:
      placed[path] = leaf
      continue
    value = ours[path]
    if tuple(value.shape) != tuple(leaf.shape):
      raise HFImportError(f"imported {path} has shape {tuple(value.shape)}, the run's "
                          f"model expects {tuple(leaf.shape)}")
    placed[path] = jax.device_put(np.asarray(value, dtype=leaf.dtype), leaf.sharding)
  params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state.params),
                                        [placed[p] for p in _flatten_order(state.params)])
  from t5x_like.training import step as step_lib
  opt_state = jax.jit(trainer.tx.init, out_shardings=trainer.state_sh.opt_state)(
      step_lib.trainable_params(trainer.task, params))
  return state.replace(params=params, opt_state=opt_state)


def _with_adapter(state: Any, adapter: Mapping[str, Any], config: Any, trainer: Any) -> Any:
  """`state` with a peft adapter's tensors (`export.peft.read_adapter`) as its LoRA params."""
  import jax

  from t5x_like import families
  from t5x_like.export import peft
  from t5x_like.models import lora

  family = families.get(config.model.family)
  host = jax.device_get(state.params)
  ours = peft.adapter_params(adapter, host, trainer.lora, family,
                             family.module_config(config.model))
  placed = jax.tree_util.tree_map(
      lambda value, leaf: jax.device_put(np.asarray(value, leaf.dtype), leaf.sharding),
      ours, _subtree_like(state.params, ours))
  return state.replace(params=lora.overlay(state.params, placed))


def check_adapter(adapter: Mapping[str, Any], config: Any) -> None:
  """Refuses (AdapterError) a peft adapter that does not fit the run's model, on shapes only
  (the model is traced, not built), before anything is written."""
  import dataclasses

  import jax
  import jax.numpy as jnp
  from flax.core import meta

  from t5x_like import families
  from t5x_like.export import peft
  from t5x_like.models import lora

  family = families.get(config.model.family)
  module_config = dataclasses.replace(family.module_config(config.model), scan_layers=False,
                                      remat="none")
  spec = lora.spec_of(config)
  ids = jnp.zeros((1, 4), jnp.int32)

  def init(rng):
    with lora.active(spec):
      return family.build(module_config).init(rng, *(ids,) * family.init_args)

  abstract = meta.unbox(jax.eval_shape(init, jax.random.key(0)))["params"]
  peft.adapter_params(adapter, abstract, spec, family, family.module_config(config.model))


def _subtree_like(tree: Any, sub: Any) -> Any:
  return {k: _subtree_like(tree[k], v) if isinstance(v, Mapping) else tree[k]
          for k, v in sub.items()}


def _flatten_order(tree: Any) -> list[str]:
  """Slash paths of `tree`'s leaves in jax's flattening order."""
  import jax
  paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  return ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in paths]



__all__ = ["IMPORT_RECORD", "TOKENIZER_SUBDIR", "check_adapter", "check_workdir", "copy_tokenizer",
           "prepare_run", "tokenizer_folder", "write_workdir"]
