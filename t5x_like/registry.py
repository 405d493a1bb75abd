"""A named registry: the one place a kind of unit (model family, objective) is looked up.

Core code never names a family or an objective; it asks the registry. An unknown name is one
`ConfigError` that lists what is registered (and the closest match), never a silent default.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from t5x_like.config import ConfigError


class _Named(Protocol):
  name: str


T = TypeVar("T", bound=_Named)


class Registry(Generic[T]):
  """Name -> unit. `key` is the config key that names a unit (used in error messages)."""

  def __init__(self, kind: str, key: str):
    self.kind = kind
    self.key = key
    self._units: dict[str, T] = {}

  def register(self, unit: T, replace: bool = False) -> T:
    """Adds `unit` under `unit.name`; a second unit of the same name is refused unless
    `replace` (tests re-register a toy unit)."""
    if not isinstance(unit.name, str) or not unit.name:
      raise ValueError(f"a {self.kind} needs a non-empty string name, got {unit.name!r}")
    if unit.name in self._units and not replace:
      raise ValueError(f"{self.kind} {unit.name!r} is already registered")
    self._units[unit.name] = unit
    return unit

  def unregister(self, name: str) -> None:
    self._units.pop(name, None)

  def get(self, name: str) -> T:
    unit = self._units.get(name)
    if unit is None:
      close = difflib.get_close_matches(str(name), self._units, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ConfigError(f"{self.key} {name!r} is not a registered {self.kind}{hint}; "
                        f"registered: {', '.join(self.names())}")
    return unit

  def names(self) -> tuple[str, ...]:
    return tuple(sorted(self._units))

  def __contains__(self, name: object) -> bool:
    return name in self._units

  def __iter__(self) -> Iterator[T]:
    return iter([self._units[n] for n in self.names()])
