"""Import of HuggingFace `transformers` checkpoints (BERT, T5 v1.1, BART, XLNet).

`import_hf(folder)` reads a local HF folder (`config.json` plus `model.safetensors`, its
sharded form, or, only with `allow_pickle=True`, `pytorch_model.bin` through
`torch.load(weights_only=True)`; `t5x_like.hf_weights`) and returns our model config and our
Flax param tree:

* bert (`BertForMaskedLM`, `BertModel`, `BertForPreTraining`; with or without the `bert.`
  prefix). Without `cls.predictions.*` our MLM head is newly initialised (reported); the
  pooler and the next-sentence head are ignored (reported).
* t5 (`T5ForConditionalGeneration`, v1.1 / flan: gated FFN). The original T5
  (`feed_forward_proj` "relu", one `wi`) is refused: our T5 has only the gated FFN.
* bart (`BartForConditionalGeneration`) and xlnet (`XLNetLMHeadModel`).

The family is the registered one for config.json's `model_type` (`family_of`); its model
fields are the inverse of its exporter's `hf_config_dict`. The tensor names and layouts are
the exporter's own, read off a labelled probe (`t5x_like.hf_layouts`), so an import followed
by an export gives back the tensors HF saved. Every HF tensor is either consumed or listed in
`ImportedCheckpoint.ignored` with the reason (a tied copy, checked equal to its source; HF
buffers; heads we do not have), and every param of ours is either filled or listed in
`ImportedCheckpoint.new_params` (freshly initialised). Anything else is an `HFImportError` (a
`ConfigError`, so the CLI prints one `error:` line).

This module is the import proper: files in (`hf_weights`), layouts (`hf_layouts`), our
config and params out. Turning an import into a run directory for `pretrain import` is
`t5x_like.hf_workdir`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from t5x_like.hf_config import HFImportError
from t5x_like.hf_layouts import Layout, flatten_params, layouts, param_shapes, unflatten_params
from t5x_like.hf_weights import load_weights, read_hf_config

# Run settings that are ours to choose, not the checkpoint's, are the model section's fields
# tagged `run` (dtype, remat, scan_layers, a family's pretraining choices such as XLNet's
# memory): `pretrain import` takes them from the base config.


def family_of(hf_config: Mapping[str, Any]) -> tuple[Any, str | None]:
  """The registered family for config.json's model_type, after checking its architecture."""
  from t5x_like import families

  model_type = hf_config.get("model_type")
  archs = hf_config.get("architectures") or []
  if not isinstance(archs, list):
    raise HFImportError(f"config.json: architectures must be a list, got {archs!r}")
  family = families.by_model_type(model_type)
  if family is None:
    arch = f" ({', '.join(map(str, archs))})" if archs else ""
    supported = "; ".join(f"{f.hf.model_type} ({', '.join(f.hf.architectures)})"
                          for f in families.FAMILIES if f.hf is not None)
    raise HFImportError(f"model_type {model_type!r}{arch} is not supported; supported: "
                        f"{supported}")
  unsupported = [a for a in archs if a not in family.hf.architectures]
  if unsupported:
    raise HFImportError(f"architecture {', '.join(map(str, unsupported))} is not supported "
                        f"for model_type {model_type!r}; supported: "
                        f"{', '.join(family.hf.architectures)}")
  return family, (archs[0] if archs else None)


@dataclasses.dataclass
class ImportedCheckpoint:
  """An imported HF checkpoint, in our terms.

  params: our per-layer param tree (float32 numpy), without `new_params`.
  model_config: the family's config (`BertConfig`, ...); `model_fields` the run config's
    `model` keys it sets.
  ignored: HF tensor name -> why it was not used. new_params: our params the checkpoint
    lacks (left to a fresh initialisation) -> why. notes: other things worth saying.
  """
  source: str
  weights_file: str
  family: str
  architecture: str | None
  model_config: Any
  model_fields: dict[str, Any]
  params: dict[str, Any]
  ignored: dict[str, str]
  new_params: dict[str, str]
  notes: list[str]

  def report(self) -> list[str]:
    """Human-readable lines: what was ignored and what is newly initialised."""
    lines = [(f"imported {self.family} ({self.architecture or 'no architectures entry'}) "
              f"from {os.path.join(self.source, self.weights_file)}")]
    for what, items in (("ignored", self.ignored), ("newly initialised", self.new_params)):
      by_reason: dict[str, list[str]] = {}
      for name, reason in items.items():
        by_reason.setdefault(reason, []).append(name)
      for reason, names in by_reason.items():
        shown = ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4
                                        else "")
        lines.append(f"{what}: {shown}: {reason}")
    lines.extend(f"note: {n}" for n in self.notes)
    return lines

  def summary(self) -> dict[str, Any]:
    return {"source": self.source, "weights_file": self.weights_file, "family": self.family,
            "architecture": self.architecture, "model": self.model_fields,
            "ignored": self.ignored, "newly_initialized": self.new_params,
            "notes": self.notes}


def _model_fields(family: Any, model_config: Any) -> dict[str, Any]:
  """The run config's model keys that the checkpoint fixes (all but the `run` ones)."""
  from t5x_like.config import tagged
  ours = {f.name for f in dataclasses.fields(family.config)} - set(tagged(family.config, "run"))
  fields = {f.name: getattr(model_config, f.name) for f in dataclasses.fields(model_config)
            if f.name in ours}
  return {"family": family.name, **fields}


def import_hf(folder: str, allow_pickle: bool = False) -> ImportedCheckpoint:
  """Reads a HuggingFace folder into our config and param tree (see the module docstring).

  Raises:
    HFImportError: unsupported model_type / architecture / options, no (allowed) weights
      file, tensors that disagree with config.json, or tensors our model cannot hold.
  """
  folder = os.path.abspath(folder)
  hf_config = read_hf_config(folder)
  fam, architecture = family_of(hf_config)
  notes: list[str] = []
  try:
    model_config = fam.hf.config_from_hf(hf_config, notes)
  except (ValueError, TypeError) as e:
    if isinstance(e, HFImportError):
      raise
    raise HFImportError(f"config.json: {e}") from None
  tensors, weights_file = load_weights(folder, allow_pickle)
  if fam.hf.normalise_names is not None:
    tensors = fam.hf.normalise_names(tensors)
  table = layouts(fam.name, model_config)
  shapes = param_shapes(fam.name, model_config)

  used: set[str] = set()
  mismatches: list[str] = []
  params: dict[str, np.ndarray] = {}
  new_params: dict[str, str] = {}
  for name, layout in table.items():
    source = name if name in tensors else fam.hf.aliases.get(name)
    if source in tensors and source != name:
      notes.append(f"{name} is not in {weights_file}: filled from {source} (HF ties them)")
    if source not in tensors:
      why = next((r for p, r in fam.hf.optional.items() if name.startswith(p)), None)
      if why is None:
        raise HFImportError(f"{weights_file} has no {name}, which our {fam.name} needs "
                            f"(for {layout.path})")
      new_params[layout.path] = why
      continue
    ours = shapes[layout.path][0]
    want = layout.hf_shape(ours)
    value = tensors[source]
    if tuple(value.shape) != want:
      mismatches.append(f"{source} has shape {tuple(value.shape)}, config.json implies {want}")
      continue
    params[layout.path] = layout.to_ours(np.asarray(value, np.float32), ours)
    used.add(source)
  if mismatches:
    more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
    raise HFImportError(f"config.json and {weights_file} disagree: {mismatches[0]}{more}")

  ignored: dict[str, str] = {}
  for copy, source in fam.hf.tied.items():
    if copy in tensors and copy not in used:
      if source not in tensors or not np.array_equal(tensors[copy], tensors[source]):
        raise HFImportError(f"{copy} differs from {source}; our {fam.name} ties them, so it "
                            "cannot hold this checkpoint")
      ignored[copy] = f"tied copy of {source} (checked equal)"
  for name in tensors:
    if name in used or name in ignored:
      continue
    why = next((r for p, r in fam.hf.ignored.items() if name.startswith(p)), None)
    if why is not None:
      ignored[name] = why
  unknown = sorted(set(tensors) - used - set(ignored))
  if unknown:
    shown = ", ".join(unknown[:5]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 5
                                      else "")
    raise HFImportError(f"{weights_file} has tensors our {fam.name} cannot hold: {shown}")
  return ImportedCheckpoint(
      source=folder, weights_file=weights_file, family=fam.name, architecture=architecture,
      model_config=model_config, model_fields=_model_fields(fam, model_config),
      params=unflatten_params(params), ignored=ignored, new_params=new_params, notes=notes)


def full_params(imported: ImportedCheckpoint, seed: int = 0) -> dict[str, Any]:
  """The imported params with `new_params` filled by the model's own initialiser."""
  import flax.core.meta
  import jax
  import jax.numpy as jnp

  if not imported.new_params:
    return imported.params
  from t5x_like import families

  fam = families.get(imported.family)
  ids = jnp.zeros((1, 4), jnp.int32)
  init = jax.jit(lambda rng: fam.build(imported.model_config).init(rng, *(ids,) *
                                                                    fam.init_args))
  fresh = flatten_params(
      jax.device_get(flax.core.meta.unbox(init(jax.random.key(seed)))["params"]))
  flat = flatten_params(imported.params)
  return unflatten_params({k: flat.get(k, np.asarray(v)) for k, v in fresh.items()})


__all__ = ["HFImportError", "ImportedCheckpoint", "Layout", "family_of",
           "full_params", "import_hf", "layouts", "load_weights", "param_shapes",
           "read_hf_config"]
