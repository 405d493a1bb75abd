"""Reading a HuggingFace `config.json`: typed field access with one clear error each.

Shared by the families' importers (`t5x_like/families/<name>/hf_config.py`) and the import
modules (`t5x_like.hf_import`, `hf_weights`, `hf_workdir`), whose errors are `HFImportError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from t5x_like.config import ConfigError


class HFImportError(ConfigError):
  """A HuggingFace folder cannot be imported; the message says why and what would work."""


def get(hf: Mapping[str, Any], key: str, default: Any) -> Any:
  """`hf[key]`, with `default` for a missing key or an explicit null."""
  value = hf.get(key, default)
  return default if value is None else value


def integer(hf: Mapping[str, Any], key: str, default: int) -> int:
  value = get(hf, key, default)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
    raise HFImportError(f"config.json: {key} must be an integer, got {value!r}")
  return int(value)


def activation(name: str, value: Any, allowed: tuple[str, ...]) -> str:
  if value not in allowed:
    raise HFImportError(f"config.json: {name} {value!r} is not supported (our models have "
                        f"{', '.join(allowed)})")
  return value
