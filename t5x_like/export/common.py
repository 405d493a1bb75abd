"""Pieces every HF exporter shares: array conversion, the marker file, the atomic write.

Each export folder holds a small marker file naming the format (`t5x_like.export.<family>`),
so a later export (of any family) may replace it but never an unrelated directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import safetensors.numpy

from t5x_like.export import tokenizer as tokenizer_lib

MARKER_FILE = "t5x_like_export.json"
_FORMAT_PREFIX = "t5x_like.export."


def marker_format(family: str) -> str:
  """The marker's `format` value for one family, e.g. `t5x_like.families.bert.export`."""
  return _FORMAT_PREFIX + family


def write_marker(out_dir: str, family: str, **fields: Any) -> None:
  with open(os.path.join(out_dir, MARKER_FILE), "w", encoding="utf-8") as f:
    json.dump({"format": marker_format(family), "version": 1, **fields}, f, indent=2)


def _f32(x: Any) -> np.ndarray:
  # np.asarray gathers a (fully addressable) jax.Array; bf16 params are widened here.
  return np.ascontiguousarray(np.asarray(x).astype(np.float32))


def _unbox(params: Mapping[str, Any]) -> Mapping[str, Any]:
  """Accepts {'params': tree} and flax-boxed (nn.Partitioned) leaves as well."""
  import flax.core.meta  # local: keeps importing this module cheap for tokenizer-only users
  if set(params) == {"params"}:
    params = params["params"]
  return flax.core.meta.unbox(params)


def put_checked(out: dict[str, np.ndarray], name: str, tree: Mapping[str, Any], path: str,
                shape: tuple[int, ...], transform: Any = None) -> None:
  """out[name] = transform(tree[path]) as float32, after checking the path and the shape.

  `path` is slash-separated keys into our (unboxed) param tree; `shape` is what the config
  implies for our layout, before `transform` turns it into HF's.

  Raises:
    ValueError: the path is missing or the shape differs, naming the HF tensor.
  """
  value = tree
  for key in path.split("/"):
    if not isinstance(value, Mapping) or key not in value:
      raise ValueError(f"{name}: our params have no {path!r} (config/params mismatch?)")
    value = value[key]
  value = _f32(value)
  if value.shape != shape:
    raise ValueError(f"{name}: got shape {value.shape}, config implies {shape}")
  out[name] = np.ascontiguousarray(value if transform is None else transform(value))


def _is_previous_export(path: str) -> bool:
  try:
    with open(os.path.join(path, MARKER_FILE), encoding="utf-8") as f:
      fmt = json.load(f).get("format")
  except (OSError, ValueError, AttributeError):
    return False
  return isinstance(fmt, str) and fmt.startswith(_FORMAT_PREFIX)


def check_target(out_dir: str) -> None:
  """Raises FileExistsError unless out_dir is absent, empty, or one of our exports."""
  if not os.path.exists(out_dir):
    return
  if not os.path.isdir(out_dir):
    raise FileExistsError(f"export target {out_dir!r} exists and is not a directory")
  if os.listdir(out_dir) and not _is_previous_export(out_dir):
    raise FileExistsError(
        f"export target {out_dir!r} is not empty and is not a previous export (no "
        f"{MARKER_FILE}); refusing to overwrite it. Pick a new or empty directory.")


def _replace_dir(new: str, target: str) -> None:
  """Moves `new` to `target`, replacing a previous export or an empty directory."""
  if not os.path.exists(target):
    os.rename(new, target)
    return
  check_target(target)  # re-check: it may have changed while we were writing
  old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-",
                         dir=os.path.dirname(target))
  os.rmdir(old)  # only the unique name is wanted; rename needs it absent
  os.rename(target, old)
  try:
    os.rename(new, target)
  except BaseException:
    os.rename(old, target)  # put the previous export back
    raise
  shutil.rmtree(old, ignore_errors=True)


def _config_ids(hf_config_dict: Any, special_ids: Mapping[str, int] | None) -> dict[str, int]:
  """The entries of `special_ids` that the family's `hf_config_dict` takes as arguments."""
  if not special_ids:
    return {}
  import inspect  # pylint: disable=g-import-not-at-top
  params = inspect.signature(hf_config_dict).parameters
  return {k: int(v) for k, v in special_ids.items() if k in params and v is not None}


def export_folder(family: str, to_hf: Callable[[Any, Any], dict[str, np.ndarray]],
                  hf_config_dict: Callable[..., dict[str, Any]], params: Mapping[str, Any],
                  config: Any, out_dir: str, tokenizer_model: str | None, num_sentinels: int,
                  special_ids: Mapping[str, int] | None, model_max_length: int) -> str:
  """Writes a family's HuggingFace folder, atomically: the body every family's export shares.

  Args:
    family: the registered family name (the export marker's format).
    to_hf: (params, config) -> HF state dict (the family's tensor map).
    hf_config_dict: (config, pad/bos/eos ids) -> config.json contents.
    params: our param tree.
    config: the family's module config.
    out_dir: target directory: absent, empty, or a previous export (which is replaced).
    tokenizer_model: SentencePiece model to export alongside, a HuggingFace tokenizer folder
      (a checkpoint's own, copied as it is), or None for weights only.
    num_sentinels: ids above the sp pieces; sp pieces + num_sentinels must equal
      config.vocab_size, since the embedding rows are indexed by these ids.
    special_ids: `pad_token_id` / `bos_token_id` / `eos_token_id` for config.json (those
      the family's config has), e.g. a checkpoint's own tokenizer's; None: the fixed ids.
    model_max_length: the exported tokenizer's model_max_length.

  Returns:
    The absolute path of the export.

  Raises:
    FileExistsError: out_dir is a non-empty directory that is not our export, or a file.
    ValueError: params/config/tokenizer do not agree.
  """
  out_dir = os.path.abspath(out_dir)
  check_target(out_dir)
  # Everything that can fail on bad input runs before touching the filesystem.
  state = to_hf(params, config)
  hf_config = hf_config_dict(config, **_config_ids(hf_config_dict, special_ids))
  return write_export(out_dir, family, state, hf_config, config.vocab_size, tokenizer_model,
                      num_sentinels, model_max_length=model_max_length)


def write_export(out_dir: str, family: str, state: Mapping[str, np.ndarray],
                 hf_config: Mapping[str, Any], vocab_size: int, tokenizer_model: str | None,
                 num_sentinels: int, model_max_length: int) -> str:
  """Writes `config.json`, `model.safetensors`, tokenizer files and the marker, atomically.

  Callers convert the weights and config first (everything that can fail on bad input runs
  before this touches the filesystem). The folder is built in a temporary sibling directory
  renamed into place only once complete, so a failed export leaves `out_dir` as it was.

  `tokenizer_model` is a SentencePiece `.model` (exported as a fast tokenizer, sentinels
  on top), a HuggingFace tokenizer folder (a checkpoint's own: its files are copied as they
  are), or None (weights only).

  Raises:
    ValueError: the tokenizer's pieces + num_sentinels differ from vocab_size.
    FileExistsError: out_dir became a non-empty directory that is not our export.
  """
  hf_tokenizer = tokenizer_model is not None and os.path.isdir(tokenizer_model)
  if tokenizer_model is not None and not hf_tokenizer:
    import sentencepiece as spm
    sp_size = spm.SentencePieceProcessor(model_file=tokenizer_model).get_piece_size()
    # UL2's paradigm tokens, if the sidecar reserves any, sit between pieces and sentinels.
    sp_size += len(tokenizer_lib.paradigm_tokens(tokenizer_model))
    if sp_size + num_sentinels != vocab_size:
      raise ValueError(f"tokenizer has {sp_size} pieces (paradigm tokens included) + "
                       f"{num_sentinels} sentinels = {sp_size + num_sentinels} ids, but "
                       f"config.vocab_size is {vocab_size}")

  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  # Same parent -> same filesystem, so the final renames are atomic.
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
  try:
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
      json.dump(hf_config, f, indent=2)
    safetensors.numpy.save_file(dict(state), os.path.join(tmp, "model.safetensors"),
                                metadata={"format": "pt"})  # HF expects this metadata
    if hf_tokenizer:
      tokenizer_lib.copy_hf_tokenizer(tokenizer_model, tmp, vocab_size)
    elif tokenizer_model is not None:
      tokenizer_lib.export_sentencepiece_tokenizer(
          tokenizer_model, num_sentinels, tmp, family=family,
          model_max_length=model_max_length)
    write_marker(tmp, family, num_sentinels=num_sentinels,
                 has_tokenizer=tokenizer_model is not None)
    _replace_dir(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def layer_trees(stack: Mapping[str, Any], num_layers: int, name: str
                 ) -> list[Mapping[str, Any]]:
  """One param tree per layer, whether the stack was scanned (`layers`) or a loop."""
  if "layers" in stack:
    import jax  # local: keeps importing this module cheap
    stacked = stack["layers"]
    depth = {np.shape(x)[0] for x in jax.tree_util.tree_leaves(stacked)}
    if depth != {num_layers}:
      raise ValueError(f"scanned {name} has leading (layers) axis {sorted(depth)}, config "
                       f"says {num_layers} layers")
    return [jax.tree_util.tree_map(lambda x, i=i: x[i], stacked) for i in range(num_layers)]
  names = sorted(k for k in stack if k.startswith("layer_"))
  want = sorted(f"layer_{i}" for i in range(num_layers))
  if names != want:
    raise ValueError(f"{name} has layers {names}, config says {num_layers} layers")
  return [stack[f"layer_{i}"] for i in range(num_layers)]
