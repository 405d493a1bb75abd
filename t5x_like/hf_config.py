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


def require_absolute_positions(hf: Mapping[str, Any]) -> None:
  """Refuses relative position embeddings (BERT-shaped configs), which our encoders lack."""
  if get(hf, "position_embedding_type", "absolute") != "absolute":
    raise HFImportError(f"config.json: position_embedding_type "
                        f"{hf['position_embedding_type']!r} is not supported (ours: absolute)")


def encoder_fields(hf: Mapping[str, Any], activations: tuple[str, ...], *, vocab_size: int,
                   hidden_size: int, num_heads: int, intermediate_size: int, hidden_act: str,
                   dropout: float) -> dict[str, Any]:
  """Our encoder fields from a BERT-shaped config.json (BERT, ALBERT): the keys both
  transformers classes share, with each class's own defaults for those that differ."""
  return {
      "vocab_size": integer(hf, "vocab_size", vocab_size),
      "hidden_size": integer(hf, "hidden_size", hidden_size),
      "num_layers": integer(hf, "num_hidden_layers", 12),
      "num_heads": integer(hf, "num_attention_heads", num_heads),
      "intermediate_size": integer(hf, "intermediate_size", intermediate_size),
      "max_position_embeddings": integer(hf, "max_position_embeddings", 512),
      "type_vocab_size": integer(hf, "type_vocab_size", 2),
      "hidden_act": activation("hidden_act", get(hf, "hidden_act", hidden_act), activations),
      "layer_norm_eps": float(get(hf, "layer_norm_eps", 1e-12)),
      "dropout_rate": float(get(hf, "hidden_dropout_prob", dropout)),
      "attention_dropout_rate": float(get(hf, "attention_probs_dropout_prob", dropout)),
      "initializer_range": float(get(hf, "initializer_range", 0.02))}
