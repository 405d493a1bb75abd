"""Reading a local HuggingFace model folder: `config.json` and the weights, as numpy.

`load_weights` reads `model.safetensors` or its sharded form (`model.safetensors.index.json`);
bf16 tensors, which numpy lacks, through ml_dtypes. `pytorch_model.bin` (or its index) is a
pickle, which can run code when loaded: it is read only with `allow_pickle=True`, and then
through `torch.load(weights_only=True)`. Every failure is an `HFImportError` saying what
would work.

Its own module because reading files is independent of what the tensors mean: the import
(`t5x_like.hf_import`) maps them onto our params, this module only gets them off disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from t5x_like.hf_config import HFImportError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"


def read_hf_config(folder: str) -> dict[str, Any]:
  if not os.path.isdir(folder):
    raise HFImportError(f"{folder} is not a directory (expected a HuggingFace model folder)")
  path = os.path.join(folder, "config.json")
  if not os.path.exists(path):
    raise HFImportError(f"{folder} has no config.json: not a HuggingFace model folder")
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise HFImportError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(config, dict):
    raise HFImportError(f"{path} must hold a JSON object")
  return config


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of one file as float32 (numpy API; bf16, which numpy lacks, via ml_dtypes)."""
  import safetensors

  out: dict[str, np.ndarray] = {}
  try:
    with safetensors.safe_open(path, framework="numpy") as f:
      for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
        if f.get_slice(name).get_dtype() == "BF16":
          out[name] = _read_bf16(path, name)
        else:
          out[name] = f.get_tensor(name)
  except (OSError, ValueError, TypeError) as e:
    raise HFImportError(f"{path} could not be read as safetensors: {e}") from None
  except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError
    raise HFImportError(f"{path} could not be read as safetensors: {e}") from None
  return out


def _read_bf16(path: str, name: str) -> np.ndarray:
  import ml_dtypes  # ships with jax

  with open(path, "rb") as f:
    header_len = int.from_bytes(f.read(8), "little")
    entry = json.loads(f.read(header_len))[name]
    start, end = entry["data_offsets"]
    f.seek(8 + header_len + start)
    raw = f.read(end - start)
  return np.frombuffer(raw, dtype=ml_dtypes.bfloat16).reshape(entry["shape"])


def _read_pickle(path: str) -> dict[str, np.ndarray]:
  import torch

  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - torch raises many types for unsafe / bad files
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise HFImportError(f"{path} could not be loaded with torch.load(weights_only=True): "
                        f"{first[:300]}") from None
  if not isinstance(state, Mapping):
    raise HFImportError(f"{path} does not hold a state dict (got {type(state).__name__})")
  return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
          for k, v in state.items()}


def _shards(folder: str, index_name: str) -> list[str]:
  path = os.path.join(folder, index_name)
  try:
    with open(path, encoding="utf-8") as f:
      weight_map = json.load(f)["weight_map"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise HFImportError(f"{path} is not a valid weight index: {e}") from None
  files = sorted(set(weight_map.values()))
  missing = [f for f in files if not os.path.exists(os.path.join(folder, f))]
  if missing:
    raise HFImportError(f"{path} names shards that are missing: {', '.join(missing)}")
  return [os.path.join(folder, f) for f in files]


def load_weights(folder: str, allow_pickle: bool = False
                 ) -> tuple[dict[str, np.ndarray], str]:
  """(HF tensor name -> array, the file(s) read). Safetensors first; pickles only opted in."""
  exists = lambda name: os.path.exists(os.path.join(folder, name))
  if exists(SAFETENSORS):
    return _read_safetensors(os.path.join(folder, SAFETENSORS)), SAFETENSORS
  if exists(SAFETENSORS_INDEX):
    out: dict[str, np.ndarray] = {}
    for shard in _shards(folder, SAFETENSORS_INDEX):
      out.update(_read_safetensors(shard))
    return out, SAFETENSORS_INDEX
  pickles = [n for n in (PICKLE, PICKLE_INDEX) if exists(n)]
  if pickles and not allow_pickle:
    raise HFImportError(
        f"{folder} has weights only as {pickles[0]} (a pickle, which can run code when "
        f"loaded) and no {SAFETENSORS}; pass --allow-pickle (allow_pickle=True) to load it "
        f"with torch.load(weights_only=True), or convert it to {SAFETENSORS} first")
  if exists(PICKLE):
    return _read_pickle(os.path.join(folder, PICKLE)), PICKLE
  if exists(PICKLE_INDEX):
    out = {}
    for shard in _shards(folder, PICKLE_INDEX):
      out.update(_read_pickle(shard))
    return out, PICKLE_INDEX
  others = [n for n in ("tf_model.h5", "flax_model.msgpack", "model.ckpt.index")
            if exists(n)]
  extra = f" (only {', '.join(others)}, which we do not read)" if others else ""
  raise HFImportError(f"{folder} has no weights file{extra}: expected {SAFETENSORS}, "
                      f"{SAFETENSORS_INDEX} or, with --allow-pickle, {PICKLE}")


__all__ = ["PICKLE", "PICKLE_INDEX", "SAFETENSORS", "SAFETENSORS_INDEX", "load_weights",
           "read_hf_config"]
