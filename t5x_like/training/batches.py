"""Host-local numpy batches to global `jax.Array`s (training and evaluation alike)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from t5x_like.config import ConfigError


def to_global(batch: dict[str, np.ndarray], shardings: dict[str, Any],
              features: tuple[str, ...]) -> dict[str, jax.Array]:
  missing = [f for f in features if f not in batch]
  if missing:
    raise ConfigError(f"the data pipeline does not produce features {missing} that the model "
                      f"needs (it produced {sorted(batch)})")
  return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(batch[k]))
          for k in features}


__all__ = ["to_global"]
