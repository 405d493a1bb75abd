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
import logging
import math
import os
import reprlib
import typing
from typing import Any

import yaml

from data_pipelines import storage
from t5x_like.config_schema import (
  CheckpointConfig,
  Config,
  ConfigError,
  DataConfig,
  LoraConfig,
  MeshConfig,
  ModelConfig,
  ObjectiveConfig,
  OptimConfig,
  Polymorphic,
  TrainConfig,
  registry_names,
  tagged,
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


def remove_preset_dir(path: str) -> None:
  """Undoes `add_preset_dir` (a family registered from outside is unregistered)."""
  path = os.path.abspath(path)
  if path in _EXTRA_PRESET_DIRS:
    _EXTRA_PRESET_DIRS.remove(path)


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


def _coerce(path: str, value: Any, typ: Any, field: dataclasses.Field,
            saved: bool = False) -> Any:
  """Checks (and where lossless, converts) a YAML value to the field's declared type."""
  if typing.get_origin(typ) is tuple:  # a list of records (or of scalars)
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {_show(value)}")
    item = typing.get_args(typ)[0]
    return tuple(_coerce(f"{path}.{i}", v, item, field, saved) for i, v in enumerate(value))
  if dataclasses.is_dataclass(typ):
    if not isinstance(value, dict):
      raise ConfigError(f"{path}: expected a mapping of {typ.__name__} keys, got "
                        f"{type(value).__name__} {_show(value)}")
    spec = field.metadata.get("polymorphic")
    if spec is None:
      return _build(typ, value, path + ".", saved=saved)
    return _build_polymorphic(spec, value, path, saved)
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


def _build_polymorphic(spec: Polymorphic, values: dict[str, Any], path: str,
                       saved: bool) -> Any:
  """A section (or record) whose class its name key chooses: `model` by `model.family`,
  `objective` by `objective.name`, a record of a list by its own name key."""
  name = values.get(spec.key, spec.default)
  if not isinstance(name, str) or not name:
    raise ConfigError(f"{path}.{spec.key}: expected a name, got {_show(name)}")
  cls = spec.resolve(name)
  ours = {f.name for f in dataclasses.fields(cls)}
  kept = {}
  for key, value in values.items():
    if key in ours:
      kept[key] = value
    elif not _foreign_at_default(spec, cls, name, key, value, path, saved):
      kept[key] = value  # not another unit's key either: _build names it as unknown
  return _build(cls, kept, path + ".", saved=saved)


def _foreign_at_default(spec: Polymorphic, cls: type, name: str, key: str, value: Any,
                        path: str, saved: bool) -> bool:
  """True (drop it) if `key` belongs to another registered unit's section and `value` is that
  section's default: a key that would do nothing here, as every earlier config.yaml (one flat
  section for all families) holds. A non-default value is refused, naming whose key it is
  (silently ignoring it would train something else than asked); a saved run's config.yaml
  (`saved`) only warns, since the run it describes already ignored it."""
  owners = {other: next(f for f in dataclasses.fields(c) if f.name == key)
            for other, c in spec.classes().items()
            if other != name and any(f.name == key for f in dataclasses.fields(c))}
  if not owners:
    return False
  for other, field in owners.items():
    default = (field.default if field.default is not dataclasses.MISSING
               else field.default_factory())  # type: ignore[misc]
    try:
      if _coerce(f"{path}.{key}", value, typing.get_type_hints(spec.classes()[other])[key],
                 field) == default:
        return True
    except ConfigError:
      pass
  message = (f"{path}.{_key_name(key)} applies to {', '.join(sorted(owners))} only; "
             f"{path}.{spec.key} is {name!r}")
  if saved:
    logging.getLogger(__name__).warning("%s: ignored, as the run did", message)
    return True
  raise ConfigError(message)


def _build(cls: type, values: dict[str, Any], prefix: str = "", saved: bool = False) -> Any:
  fields = {f.name: f for f in dataclasses.fields(cls)}
  types_ = _field_types(cls)
  kwargs = {}
  for key, value in values.items():
    if key not in fields:
      close = difflib.get_close_matches(str(key), fields, n=1)
      hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
      raise ConfigError(f"unknown config key {_key_name(f'{prefix}{key}')}{hint}; valid keys "
                        f"in {prefix.rstrip('.') or 'the top level'}: {', '.join(fields)}")
    kwargs[key] = _coerce(prefix + key, value, types_[key], fields[key], saved)
  for key, field in fields.items():  # an absent polymorphic section: its default unit's
    if key not in kwargs and "polymorphic" in field.metadata:
      kwargs[key] = _coerce(prefix + key, {}, types_[key], field, saved)
  return cls(**kwargs)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any], path: str = ""
                ) -> dict[str, Any]:
  out = dict(base)
  for key, value in extra.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      out[key] = _deep_merge(out[key], value, f"{path}{key}.")
    elif isinstance(value, dict) and isinstance(out.get(key), list):
      out[key] = _merge_into_list(out[key], value, f"{path}{key}")
    else:
      out[key] = value
  return out


def _merge_into_list(items: list[Any], extra: dict[Any, Any], path: str) -> list[Any]:
  """`a.b.1.c=v` on a list of records: record 1's key c (records count from 0)."""
  out = list(items)
  for index, value in extra.items():
    i = int(index) if str(index).isdigit() else -1
    if not 0 <= i < len(out):
      raise ConfigError(f"{path}.{_key_name(str(index))}: {path} is a list of {len(out)} "
                        f"records, numbered 0..{len(out) - 1}")
    if isinstance(value, dict) and isinstance(out[i], dict):
      out[i] = _deep_merge(out[i], value, f"{path}.{i}.")
    else:
      out[i] = value
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


def from_dict(tree: dict[str, Any], saved: bool = False) -> Config:
  """A validated `Config` from a (YAML) tree. saved: the tree is a run's own config.yaml,
  written by an earlier version maybe (see `_foreign_at_default`)."""
  config = _build(Config, tree, saved=saved)
  validate(config)
  return config


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
  """Preset name or YAML path + dotted overrides -> validated `Config`."""
  return from_dict(apply_overrides(_load_tree(name_or_path), list(overrides)))


def to_dict(config: Any) -> dict[str, Any]:
  """The config as plain YAML-able data (lists of records as lists of mappings)."""
  def plain(value: Any) -> Any:
    if isinstance(value, dict):
      return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      return [plain(v) for v in value]
    return value
  return plain(dataclasses.asdict(config))


def save_config(config: Config, path: str) -> None:
  """Writes config.yaml whole (local: temporary file + rename; gs://: one object write)."""
  storage.write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def read_config(path: str) -> Config:
  """A run's saved config.yaml."""
  return from_dict(_read_yaml(path), saved=True)


def model_section(family: str, **values: Any) -> Any:
  """The typed `model` section of `family` with `values` (checked as a config file's)."""
  field = next(f for f in dataclasses.fields(Config) if f.name == "model")
  return _coerce("model", {"family": family, **values}, ModelConfig, field)


def replace(config: Config, **sections: dict[str, Any]) -> Config:
  """Returns `config` with fields of sections replaced, e.g. replace(c, train={"steps": 5})."""
  tree = to_dict(config)
  for name, values in sections.items():
    tree[name] = {**tree[name], **values}
  return from_dict(tree)


__all__ = [
  "CheckpointConfig",
  "Config",
  "ConfigError",
  "DataConfig",
  "LoraConfig",
  "MeshConfig",
  "ModelConfig",
  "ObjectiveConfig",
  "OptimConfig",
  "TrainConfig",
  "apply_overrides",
  "from_dict",
  "list_presets",
  "load_config",
  "model_section",
  "read_config",
  "replace",
  "save_config",
  "tagged",
  "to_dict",
  "validate",
]
