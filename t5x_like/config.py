"""Typed, frozen, nested run configuration: YAML presets plus dotted `key.path=value` overrides.

One schema for every run (`t5x_like.config_schema`). Presets live with their family
(`t5x_like/families/<name>/presets/*.yaml`) and only name the keys they change; every key is
checked against the schema's dataclasses (unknown keys are rejected with the valid ones
listed, values are type-checked, choices are enforced), cross-field rules run
(`t5x_like.config_validation`), and the resolved tree is written into the run directory as
`config.yaml`. This module is the public surface of all three.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import math
import os
import reprlib
import typing
from typing import Any

import yaml

from data_pipelines import storage
from data_pipelines.objectives import mlm
from t5x_like.config_schema import (
  CheckpointConfig,
  Config,
  ConfigError,
  DataConfig,
  MeshConfig,
  ModelConfig,
  ObjectiveConfig,
  OptimConfig,
  TrainConfig,
  registry_names,
)
from t5x_like.config_validation import validate

# Presets live with their family: t5x_like/families/<name>/presets/*.yaml. A family registered
# from elsewhere adds its folder with `add_preset_dir` (its Family record's `presets`).
_FAMILIES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "families")
_EXTRA_PRESET_DIRS: list[str] = []


def add_preset_dir(path: str) -> None:
  """Makes the `*.yaml` presets in `path` loadable by name."""
  path = os.path.abspath(path)
  if path not in _EXTRA_PRESET_DIRS:
    _EXTRA_PRESET_DIRS.append(path)


def _presets() -> dict[str, str]:
  """Preset name -> its YAML file (built-in families' folders, then added ones)."""
  dirs = sorted(glob.glob(os.path.join(_FAMILIES_DIR, "*", "presets"))) + _EXTRA_PRESET_DIRS
  out: dict[str, str] = {}
  for d in dirs:
    for f in sorted(os.listdir(d)) if os.path.isdir(d) else ():
      if f.endswith(".yaml"):
        out.setdefault(f[:-5], os.path.join(d, f))
  return out


# --------------------------------------------------------------------------- building


def _field_types(cls: type) -> dict[str, Any]:
  return typing.get_type_hints(cls)


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = 80, 80, 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_INT_LIMIT = 2**63  # every int in the schema is an int64 somewhere downstream


def _show(value: Any) -> str:
  """A short one-line repr for messages: long strings, deep or aliased ("billion laughs")
  structures and huge ints are cut."""
  if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _INT_LIMIT:
    return f"<an int of about {value.bit_length() * 0.30103:.0f} digits>"
  try:
    return _REPR.repr(value)
  except (ValueError, RecursionError):
    return f"<a {type(value).__name__} too large to show>"


def _key_name(name: str) -> str:
  return name if name.isprintable() else repr(name)


def _coerce(path: str, value: Any, typ: Any, field: dataclasses.Field) -> Any:
  """Checks (and where lossless, converts) a YAML value to the field's declared type."""
  if dataclasses.is_dataclass(typ):
    if not isinstance(value, dict):
      raise ConfigError(f"{path}: expected a mapping of {typ.__name__} keys, got "
                        f"{type(value).__name__} {_show(value)}")
    return _build(typ, value, path + ".")
  if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _INT_LIMIT:
    raise ConfigError(f"{path}: {_show(value)} is out of range (|value| < 2**63)")
  if typ is bool:
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
      return value.lower() == "true"
  elif typ is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
    if isinstance(value, str):
      try:
        as_float = float(value.replace("_", ""))
      except ValueError:
        as_float = math.nan
      if as_float.is_integer() and abs(as_float) < _INT_LIMIT:
        return int(as_float)
  elif typ is float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      number = float(value)
    elif isinstance(value, str):  # PyYAML reads `1e-4` (no dot) as a string
      try:
        number = float(value)
      except ValueError:
        pass
    if number is not None:
      if not math.isfinite(number):
        raise ConfigError(f"{path}: expected a finite number, got {_show(value)}")
      return number
  elif typ is str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
      value = str(value)
      choices = field.metadata.get("choices")
      if "registry" in field.metadata:
        choices = registry_names(field.metadata["registry"])
      if choices and value not in choices:
        raise ConfigError(f"{path}: {_show(value)} is not one of {', '.join(choices)}")
      return value
  else:  # pragma: no cover - schema uses only the types above
    raise TypeError(f"unsupported config type {typ} at {path}")
  raise ConfigError(f"{path}: expected {typ.__name__}, got {type(value).__name__} "
                    f"{_show(value)}")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
  fields = {f.name: f for f in dataclasses.fields(cls)}
  types_ = _field_types(cls)
  kwargs = {}
  for key, value in values.items():
    if key not in fields:
      close = difflib.get_close_matches(str(key), fields, n=1)
      hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
      raise ConfigError(f"unknown config key {_key_name(f'{prefix}{key}')}{hint}; valid keys "
                        f"in {prefix.rstrip('.') or 'the top level'}: {', '.join(fields)}")
    kwargs[key] = _coerce(prefix + key, value, types_[key], fields[key])
  return dataclasses.replace(cls(), **kwargs)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
  out = dict(base)
  for key, value in extra.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      out[key] = _deep_merge(out[key], value)
    else:
      out[key] = value
  return out


def list_presets() -> list[str]:
  return sorted(_presets())


def _read_yaml(path: str) -> dict[str, Any]:
  try:
    if storage.is_remote(path):  # a run directory on gs://
      data = yaml.safe_load(storage.read_text(path))
    else:
      with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
  except FileNotFoundError:
    raise ConfigError(f"config file {path} does not exist") from None
  except IsADirectoryError:
    raise ConfigError(f"config file {path} is a directory, not a YAML file") from None
  except OSError as e:
    raise ConfigError(f"config file {path} could not be read: {e.strerror or e}") from None
  except (yaml.YAMLError, UnicodeDecodeError) as e:
    first = (str(e).splitlines() or [type(e).__name__])[0]
    raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
  except RecursionError:
    raise ConfigError(f"config file {path} is nested too deeply to read") from None
  except ValueError as e:  # e.g. an int of more than 4300 digits
    raise ConfigError(f"config file {path} holds a value that cannot be read: "
                      f"{_show(str(e))}") from None
  if data is None:
    return {}
  if not isinstance(data, dict):
    raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
  return data


def _load_tree(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
  """Reads a preset (by name) or a YAML file, following `base:` inheritance."""
  if os.sep in name_or_path or name_or_path.endswith((".yaml", ".yml")):
    path = name_or_path
  else:
    path = _presets().get(name_or_path, "")
    if not path:
      raise ConfigError(f"unknown config preset {name_or_path!r}; presets: "
                        f"{', '.join(list_presets())} (or give a path to a .yaml file)")
  if path in seen:
    raise ConfigError(f"config {path}: `base:` inheritance loops through {' -> '.join(seen)}")
  tree = _read_yaml(path)
  base = tree.pop("base", None)
  if base is not None:
    if not isinstance(base, str):
      raise ConfigError(f"config {path}: base must be a preset name or path, got {base!r}")
    if not (os.sep in base or base.endswith((".yaml", ".yml"))) and base not in _presets():
      base = os.path.join(os.path.dirname(path), base)
    tree = _deep_merge(_load_tree(base, seen + (path,)), tree)
  return tree


def parse_override(text: str) -> tuple[list[str], Any]:
  """Splits `a.b.c=value` into (["a","b","c"], YAML-typed value)."""
  if "=" not in text:
    raise ConfigError(f"override {_show(text)} must look like key.path=value")
  key, raw = text.split("=", 1)
  parts = key.strip().split(".")
  if not all(parts):
    raise ConfigError(f"override {_show(text)}: empty key segment")
  try:
    value = yaml.safe_load(raw) if raw.strip() else ""
  except (yaml.YAMLError, RecursionError, ValueError):  # ValueError: ints over 4300 digits
    value = raw
  return parts, value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
  for text in overrides:
    parts, value = parse_override(text)
    nested: Any = value
    for part in reversed(parts):
      nested = {part: nested}
    tree = _deep_merge(tree, nested)
  return tree


def from_dict(tree: dict[str, Any]) -> Config:
  config = _build(Config, tree)
  validate(config)
  return config


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
  """Preset name or YAML path + dotted overrides -> validated `Config`."""
  return from_dict(apply_overrides(_load_tree(name_or_path), list(overrides)))


def to_dict(config: Any) -> dict[str, Any]:
  return dataclasses.asdict(config)


def save_config(config: Config, path: str) -> None:
  """Writes config.yaml whole (local: temporary file + rename; gs://: one object write)."""
  storage.write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def read_config(path: str) -> Config:
  return from_dict(_read_yaml(path))


def replace(config: Config, **sections: dict[str, Any]) -> Config:
  """Returns `config` with fields of sections replaced, e.g. replace(c, train={"steps": 5})."""
  tree = to_dict(config)
  for name, values in sections.items():
    tree[name] = {**tree[name], **values}
  return from_dict(tree)


def max_predictions(c: Config) -> int:
  """Static number of positions the MLM head scores per row: objective.max_predictions, or
  (0) the objective's own bound, `data_pipelines.objectives.mlm.default_max_predictions`."""
  if c.objective.max_predictions:
    return c.objective.max_predictions
  return mlm.default_max_predictions(c.data.seq_len, c.objective.mask_prob,
                                     whole_word=c.objective.whole_word,
                                     packed=c.data.pack_documents)


__all__ = [
  "CheckpointConfig",
  "Config",
  "ConfigError",
  "DataConfig",
  "MeshConfig",
  "ModelConfig",
  "ObjectiveConfig",
  "OptimConfig",
  "TrainConfig",
  "apply_overrides",
  "from_dict",
  "list_presets",
  "load_config",
  "max_predictions",
  "read_config",
  "replace",
  "save_config",
  "to_dict",
  "validate",
]
