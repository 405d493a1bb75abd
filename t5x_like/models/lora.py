"""LoRA (Hu et al. 2021) for every family: low-rank adapters beside frozen `layers.Dense`
kernels, with peft's arithmetic, so a trained adapter exports as a `peft` folder.

For a targeted Dense layer y = x W + b, LoRA adds s * (dropout(x) A) B with A [in, r] (peft's
kaiming-uniform, or N(0, 1/r^2) as peft's "gaussian"), B [r, out] zeros, and s = alpha / r
(rsLoRA: alpha / sqrt(r)): at initialisation the model computes exactly what the base does.
A and B are parameters `lora_a` [*in_dims, r] and `lora_b` [r, *out_dims] of the Dense module
itself, so they carry the kernel's logical axes (and shard like it) and a scanned stack gives
them a leading layer axis like every other parameter.

The switch is a context (`active`), not a field of each family's module: a family builds its
Dense layers as always and LoRA wraps all of them from outside (the training task enters the
context around init and apply). A Dense layer holding adapters outside the context refuses
to run rather than silently ignoring them; everything after training (export, evaluation by
`load_pretrained`, generation) works on `merge`d weights.

Which layers: `lora.targets`, patterns over our module paths (slash-separated, as in the
param tree: `encoder/layer_0/attention/query`). A pattern matches a path that ends with it
(`query`, `attention/query`) or that it matches as a glob (`encoder/*/query`), the way peft's
`target_modules` names match module names; each family's default is peft's default for the
transformers class it exports (`Family.lora_targets`).

Training differentiates only the trainable subtree (`trainable`: the adapters, plus the token
embedding tables with `lora.train_embeddings`): no gradient is formed for frozen weights and
the optimiser state exists only for the trainable ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import math
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from t5x_like.config_schema import ConfigError

ADAPTER_NAMES = ("lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """The resolved `lora` section of a run (targets defaulted from the family)."""
  rank: int
  alpha: float
  dropout: float
  targets: tuple[str, ...]
  init: str = "kaiming_uniform"
  use_rslora: bool = False
  train_embeddings: bool = False
  modules_to_save: tuple[str, ...] = ()  # module patterns trained whole
  vocab_size: int = 0  # the token embedding tables are the [vocab_size, ...] `embedding`s

  @property
  def scale(self) -> float:
    """peft's `scaling`: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

  def targets_path(self, path: str) -> bool:
    return any(matches(path, p) for p in self.targets)


def matches(path: str, pattern: str) -> bool:
  """`pattern` names the module at `path` (slash-separated): `path` ends with it, or it
  matches `path` as a glob."""
  return (path == pattern or path.endswith("/" + pattern) or fnmatch.fnmatchcase(path, pattern)
          or fnmatch.fnmatchcase(path, "*/" + pattern))


def spec_of(config: Any) -> LoraSpec | None:
  """The run's LoRA spec, or None when `lora.rank` is 0 (off)."""
  lora = config.lora
  if lora.rank == 0:
    return None
  from t5x_like import families
  targets = tuple(lora.targets) or families.get(config.model.family).lora_targets
  if not targets:
    raise ConfigError(f"lora.targets: the {config.model.family} family has no default LoRA "
                      "targets; name the layers to adapt")
  return LoraSpec(rank=lora.rank, alpha=float(lora.alpha), dropout=lora.dropout,
                  targets=targets, init=lora.init, use_rslora=lora.use_rslora,
                  train_embeddings=lora.train_embeddings,
                  modules_to_save=tuple(lora.modules_to_save),
                  vocab_size=config.model.vocab_size)


# ----------------------------------------------------------------------------- the context

_STATE = threading.local()


@contextlib.contextmanager
def active(spec: LoraSpec | None, deterministic: bool = True) -> Iterator[None]:
  """Dense layers inside create (at init) and apply their adapters; `deterministic=False`
  applies `lora.dropout` to their input (with the apply's "dropout" rng)."""
  previous = getattr(_STATE, "value", None)
  _STATE.value = None if spec is None else (spec, deterministic)
  try:
    yield
  finally:
    _STATE.value = previous


def current() -> tuple[LoraSpec, bool] | None:
  """(spec, deterministic) of the innermost `active` context, or None."""
  return getattr(_STATE, "value", None)


# ----------------------------------------------------------------------------- param trees


def _flat(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
  for key, value in tree.items():
    if isinstance(value, Mapping):
      yield from _flat(value, f"{prefix}{key}/")
    else:
      yield f"{prefix}{key}", value


def dense_paths(params: Mapping[str, Any]) -> list[str]:
  """Module paths of the Dense layers (those holding a `kernel`) in a param tree."""
  return sorted({path.rsplit("/", 1)[0] for path, _ in _flat(params)
                 if path.rsplit("/", 1)[-1] == "kernel"})


def module_names(params: Mapping[str, Any]) -> list[str]:
  """The Dense modules' names with layer indices folded (`encoder/layer_*/attention/query`),
  for error messages."""
  import re
  return sorted({re.sub(r"(^|/)(layer_\d+|layers)(?=/|$)", r"\1layer_*", p)
                 for p in dense_paths(params)})


def check_targets(spec: LoraSpec, params: Mapping[str, Any]) -> list[str]:
  """The targeted Dense module paths; a pattern that matches none is a ConfigError naming the
  available modules."""
  modules = sorted({path.rsplit("/", i)[0] for path, _ in _flat(params)
                    for i in range(1, path.count("/") + 1)})
  unsaved = [p for p in spec.modules_to_save if not any(matches(m, p) for m in modules)]
  if unsaved:
    import re
    tops = sorted({re.sub(r"(^|/)(layer_\d+|layers)(?=/|$)", r"\1layer_*", m) for m in modules
                   if m.count("/") <= 1})
    raise ConfigError(f"lora.modules_to_save: {', '.join(map(repr, unsaved))} matches no module "
                      f"of this model; its modules include: {', '.join(tops)}")
  paths = dense_paths(params)
  unmatched = [p for p in spec.targets if not any(matches(path, p) for path in paths)]
  if unmatched:
    raise ConfigError(
        f"lora.targets: {', '.join(map(repr, unmatched))} matches no layer of this model; its "
        f"adaptable (Dense) layers are: {', '.join(module_names(params))}")
  return [p for p in paths if spec.targets_path(p)]


def is_trainable(path: str, leaf: Any, spec: LoraSpec) -> bool:
  """An adapter, a parameter of a module in lora.modules_to_save, or (lora.train_embeddings)
  a token embedding table."""
  name = path.rsplit("/", 1)[-1]
  if name in ADAPTER_NAMES:
    return True
  parts = path.split("/")
  if any(matches("/".join(parts[:i]), p) for p in spec.modules_to_save
         for i in range(1, len(parts))):
    return True
  shape = np.shape(getattr(leaf, "value", leaf))
  return (spec.train_embeddings and name == "embedding" and len(shape) >= 2
          and spec.vocab_size > 0 and spec.vocab_size in shape[-2:-1])


def trainable(params: Mapping[str, Any], spec: LoraSpec) -> dict[str, Any]:
  """The trainable subtree (same nesting, only the trainable leaves)."""
  return _prune(params, spec, "")


def _prune(tree: Mapping[str, Any], spec: LoraSpec, prefix: str) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      sub = _prune(value, spec, path)
      if sub:
        out[key] = sub
    elif is_trainable(path, value, spec):
      out[key] = value
  return out


def overlay(params: Mapping[str, Any], sub: Mapping[str, Any]) -> dict[str, Any]:
  """`params` with the leaves of `sub` (a subtree of the same nesting) put in."""
  out = dict(params)
  for key, value in sub.items():
    out[key] = (overlay(params[key], value) if isinstance(value, Mapping) and key in params
                else value)
  return out


def frozen(params: Mapping[str, Any], spec: LoraSpec) -> dict[str, Any]:
  """The complement of `trainable` (the frozen base, what `lora_base/` holds)."""
  out: dict[str, Any] = {}
  for path, value in _flat(params):
    if not is_trainable(path, value, spec):
      node = out
      *parents, leaf = path.split("/")
      for k in parents:
        node = node.setdefault(k, {})
      node[leaf] = value
  return out


def without_adapters(params: Mapping[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in params.items():
    if isinstance(value, Mapping):
      out[key] = without_adapters(value)
    elif key not in ADAPTER_NAMES:
      out[key] = value
  return out


def has_adapters(params: Mapping[str, Any]) -> bool:
  return any(path.rsplit("/", 1)[-1] in ADAPTER_NAMES for path, _ in _flat(params))


def delta(kernel_shape: tuple[int, ...], a: np.ndarray, b: np.ndarray, scale: float
          ) -> np.ndarray:
  """s * A B in the kernel's shape (float32): a [*lead, *in, r], b [*lead, r, *out]."""
  n_out = len(kernel_shape) - (a.ndim - 1)
  n_lead = b.ndim - 1 - n_out
  lead = kernel_shape[:n_lead]
  a2 = np.asarray(a, np.float32).reshape(lead + (-1, a.shape[-1]))
  b2 = np.asarray(b, np.float32).reshape(lead + (b.shape[n_lead], -1))
  return (scale * np.matmul(a2, b2)).reshape(kernel_shape)


def merge(params: Mapping[str, Any], scale: float) -> dict[str, Any]:
  """The base tree with every adapted kernel replaced by W + s A B (computed in float32, then
  cast to the kernel's dtype) and the adapters dropped: a plain model of the family."""
  out: dict[str, Any] = {}
  for key, value in params.items():
    if not isinstance(value, Mapping):
      out[key] = value
      continue
    if "lora_a" in value:
      kernel = np.asarray(value["kernel"])
      merged = np.asarray(kernel, np.float32) + delta(kernel.shape, np.asarray(value["lora_a"]),
                                                      np.asarray(value["lora_b"]), scale)
      out[key] = {k: v for k, v in value.items() if k not in ADAPTER_NAMES}
      out[key]["kernel"] = merged.astype(kernel.dtype)
    else:
      out[key] = merge(value, scale)
  return out


__all__ = ["ADAPTER_NAMES", "LoraSpec", "active", "check_targets", "current", "delta",
           "dense_paths", "frozen", "has_adapters", "is_trainable", "matches", "merge",
           "module_names", "overlay", "spec_of", "trainable",
           "without_adapters"]
