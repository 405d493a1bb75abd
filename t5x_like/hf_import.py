"""Import of HuggingFace `transformers` checkpoints (BERT, T5 v1.1, BART, XLNet).

`import_hf(folder)` reads a local HF folder (`config.json` plus `model.safetensors`, its
sharded form, or, only with `allow_pickle=True`, `pytorch_model.bin` through
`torch.load(weights_only=True)`) and returns our model config and our Flax param tree:

* bert (`BertForMaskedLM`, `BertModel`, `BertForPreTraining`; with or without the `bert.`
  prefix). Without `cls.predictions.*` our MLM head is newly initialised (reported); the
  pooler and the next-sentence head are ignored (reported).
* t5 (`T5ForConditionalGeneration`, v1.1 / flan: gated FFN). The original T5
  (`feed_forward_proj` "relu", one `wi`) is refused: our T5 has only the gated FFN.
* bart (`BartForConditionalGeneration`) and xlnet (`XLNetLMHeadModel`).

The model fields are the inverse of each exporter's `hf_config_dict`. The tensor names and
layouts are the exporters' own (`t5x_like.export.*_to_hf_state_dict`), not a second table:
a small probe model of the same structure, every element labelled with its index, is
exported once, which tells for every HF tensor which of our params it holds and how its
axes were transposed / merged (`Layout`). Importing inverts exactly that, so an import
followed by an export gives back the tensors HF saved. Every HF tensor is either consumed or
listed in `ImportedCheckpoint.ignored` with the reason (a tied copy, checked equal to its
source; HF buffers; heads we do not have), and every param of ours is either filled or
listed in `ImportedCheckpoint.new_params` (freshly initialised). Anything else is an
`HFImportError` (a `ConfigError`, so the CLI prints one `error:` line).

`pretrain import` (`prepare_run` + `write_workdir`) turns an import into a run directory:
`config.yaml` and an orbax checkpoint at step 0 holding the imported params with a fresh
optimiser state and no data-iterator state, so `pretrain train --workdir` resumes from it.
The step restarts at 0, the optimiser state and the learning-rate schedule start anew.
When the folder has a tokenizer (`tokenizer.json` or a WordPiece `vocab.txt`), its files are
copied to `<workdir>/tokenizer/` and `data.tokenizer` points there, so the data is prepared
with the checkpoint's own ids (`data_pipelines.tokenizer.HFTokenizer`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from t5x_like.config import ConfigError
from t5x_like.hf_config import HFImportError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# Run settings that are ours to choose, not the checkpoint's: taken from the base config
# (those the run config has). XLNet's memory and bi_data are pretraining choices too.
RUN_MODEL_KEYS = ("dtype", "param_dtype", "remat", "scan_layers", "mem_len", "reuse_len",
                  "bi_data")
# The checkpoint's tokenizer files are copied here, under the run directory.
TOKENIZER_SUBDIR = "tokenizer"
# Imported model keys an override may not change (the checkpoint's tensors fix them).
SHAPE_KEYS = ("family", "vocab_size", "hidden_size", "num_layers", "num_heads",
              "intermediate_size", "max_position_embeddings", "type_vocab_size",
              "num_decoder_layers", "head_dim", "relative_attention_num_buckets")
IMPORT_RECORD = "hf_import.json"


# --------------------------------------------------------------------------- reading


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


# --------------------------------------------------------------------------- families


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


# --------------------------------------------------------------------------- layouts


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one HF tensor holds one of our params.

  HF = ours transposed to the axis order `groups` flattens to, then reshaped so each HF
  axis is the product of one group of our axes (an empty group: an inserted axis of 1).
  E.g. BERT's query kernel [D, H, K] -> Linear weight [H*K, D] is groups ((1, 2), (0,)).
  """
  path: str  # slash-separated path in our per-layer param tree
  groups: tuple[tuple[int, ...], ...]

  def hf_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(np.prod([ours[a] for a in g], dtype=np.int64)) for g in self.groups)

  def to_ours(self, x: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    order = [a for g in self.groups for a in g]
    x = x.reshape([ours[a] for a in order])
    return np.ascontiguousarray(x.transpose(np.argsort(order)))

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    order = [a for g in self.groups for a in g]
    return x.transpose(order).reshape(self.hf_shape(x.shape))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return out


@functools.lru_cache(maxsize=32)
def param_shapes(family: str, config: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
  """Our per-layer param paths -> (shape, dtype), by tracing the module's init (no compute)."""
  import flax.core.meta
  import jax
  import jax.numpy as jnp

  from t5x_like import families

  fam = families.get(family)
  config = dataclasses.replace(config, scan_layers=False, remat="none")
  ids = jnp.zeros((1, 4), jnp.int32)
  abstract = jax.eval_shape(lambda rng: fam.build(config).init(rng, *(ids,) * fam.init_args),
                            jax.random.key(0))
  flat = _flatten(flax.core.meta.unbox(abstract)["params"])
  return {k: (tuple(v.shape), v.dtype) for k, v in flat.items()}


@functools.lru_cache(maxsize=32)
def layouts(family: str, config: Any) -> dict[str, Layout]:
  """HF tensor name -> Layout, read off the exporter run on a probe model.

  The probe keeps `config`'s layer counts and flags and shrinks every size; each element
  holds its own global index (exact in float32), so each exported tensor shows which of our
  params it came from and where every element went.
  """
  from t5x_like import families

  fam = families.get(family)
  probe = dataclasses.replace(config, **fam.hf.probe, dtype="float32", param_dtype="float32")
  shapes = param_shapes(family, probe)
  paths = sorted(shapes)
  sizes = [int(np.prod(shapes[p][0], dtype=np.int64)) for p in paths]
  starts = np.concatenate([[0], np.cumsum(sizes)])
  if starts[-1] >= 2 ** 24:
    raise RuntimeError(f"probe too large ({starts[-1]} elements) for exact float32 labels")
  flat = {p: np.arange(starts[i], starts[i + 1], dtype=np.float32).reshape(shapes[p][0])
          for i, p in enumerate(paths)}
  exported = fam.hf.to_hf(_unflatten(flat), probe)
  out: dict[str, Layout] = {}
  for name, tensor in exported.items():
    labels = np.asarray(tensor).astype(np.int64)
    i = int(np.searchsorted(starts, labels.min(), side="right")) - 1
    path, shape = paths[i], shapes[paths[i]][0]
    local = labels - starts[i]
    if labels.size != sizes[i] or local.min() < 0 or local.max() >= sizes[i]:
      raise RuntimeError(f"exporter tensor {name} is not exactly one of our params")
    coords = np.unravel_index(local, shape)  # per HF element: its index along each our axis
    groups = []
    for axis in range(labels.ndim):
      varying = tuple(a for a in range(len(shape))
                      if np.ptp(coords[a], axis=axis).max(initial=0) > 0)
      groups.append(varying)
    layout = Layout(path, tuple(groups))
    if sorted(a for g in groups for a in g) != list(range(len(shape))) or not np.array_equal(
        layout.to_hf(flat[path]).astype(np.int64), labels):
      raise RuntimeError(f"exporter tensor {name}: layout of {path} {shape} -> "
                         f"{labels.shape} is not a transpose + reshape")
    out[name] = layout
  used = {lay.path for lay in out.values()}
  if used != set(paths) or len(used) != len(out):
    raise RuntimeError(f"the {family} exporter does not map our params one to one "
                       f"(unmapped: {sorted(set(paths) - used)})")
  return out


# --------------------------------------------------------------------------- import


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


def _model_fields(family: str, model_config: Any) -> dict[str, Any]:
  from t5x_like.config import ModelConfig
  ours = {f.name for f in dataclasses.fields(ModelConfig)} - set(RUN_MODEL_KEYS)
  fields = {f.name: getattr(model_config, f.name) for f in dataclasses.fields(model_config)
            if f.name in ours}
  return {"family": family, **fields}


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
      model_config=model_config, model_fields=_model_fields(fam.name, model_config),
      params=_unflatten(params), ignored=ignored, new_params=new_params, notes=notes)


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
  fresh = _flatten(jax.device_get(flax.core.meta.unbox(init(jax.random.key(seed)))["params"]))
  flat = _flatten(imported.params)
  return _unflatten({k: flat.get(k, np.asarray(v)) for k, v in fresh.items()})


# --------------------------------------------------------------------------- run directory


def check_workdir(workdir: str) -> None:
  """Refuses a workdir that already holds checkpoints (an import starts a run at step 0)."""
  from t5x_like import checkpointing
  ckpt = checkpointing.checkpoint_dir(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise FileExistsError(f"--workdir {workdir} exists and is not a directory")
  if os.path.isdir(ckpt) and os.listdir(ckpt):
    raise FileExistsError(f"--workdir {workdir} already has checkpoints ({ckpt}); import "
                          "into a new or empty --workdir")


def tokenizer_folder(folder: str) -> str | None:
  """`folder` (absolute) if it holds a tokenizer we can use (`tokenizer.json` or
  `vocab.txt`), else None."""
  from data_pipelines.tokenizer import is_hf_tokenizer_dir
  folder = os.path.abspath(folder)
  return folder if is_hf_tokenizer_dir(folder) else None


def prepare_run(imported: ImportedCheckpoint, base: str | None = None,
                overrides: list[str] | tuple[str, ...] = (),
                tokenizer: str | None = None) -> Any:
  """The run `Config`: the model section from the checkpoint, the rest from `base`.

  tokenizer: `data.tokenizer` for the run (the copy of the checkpoint's own tokenizer), set
  before the overrides, so `data.tokenizer=...` among them still wins; None keeps base's.

  base: a preset name or YAML path; default the family's tiny preset (e.g. bert_tiny). Its
  RUN_MODEL_KEYS (dtype, remat, scan_layers, XLNet memory, ...) are kept (run choices);
  every other model key comes from the checkpoint (or ModelConfig's default). `overrides` apply last, but may not
  change a key the checkpoint's tensors fix (SHAPE_KEYS).
  """
  from t5x_like import config as config_lib

  base_config = config_lib.load_config(base or f"{imported.family}_tiny")
  tree = config_lib.to_dict(base_config)
  model = config_lib.to_dict(config_lib.ModelConfig())
  model.update({k: tree["model"][k] for k in RUN_MODEL_KEYS if k in tree["model"]})
  model.update(imported.model_fields)
  tree["model"] = model
  if tokenizer is not None:
    tree["data"]["tokenizer"] = tokenizer
  tree = config_lib.apply_overrides(tree, list(overrides))
  config = config_lib.from_dict(tree)
  changed = [f"model.{k}" for k in SHAPE_KEYS
             if k in imported.model_fields and
             getattr(config.model, k) != imported.model_fields[k]]
  if changed:
    values = ", ".join(f"{k}={imported.model_fields[k[6:]]}" for k in changed)
    raise ConfigError(f"{values}: the checkpoint's tensors fix these model keys; they cannot "
                      "be overridden")
  return config


def _stack_layers(tree: Any, target: Any) -> Any:
  """Our per-layer tree in the layout of `target` (a scanned `layers` stack where it has one)."""
  if not isinstance(target, Mapping):
    return tree
  if isinstance(tree, Mapping) and "layers" in target and "layer_0" in tree:
    import jax
    n = sum(1 for k in tree if k.startswith("layer_"))
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs),
                                     *[tree[f"layer_{i}"] for i in range(n)])
    tree = {**{k: v for k, v in tree.items() if not k.startswith("layer_")},
            "layers": stacked}
  return {k: _stack_layers(tree[k], target[k]) for k in target if k in tree}


def write_workdir(imported: ImportedCheckpoint, config: Any, workdir: str,
                  tokenizer_from: str | None = None) -> dict[str, Any]:
  """Writes `config.yaml` and a step-0 checkpoint (imported params, fresh optimiser state,
  empty data state) so `pretrain train --workdir` resumes from it; returns a summary.

  tokenizer_from: a HF tokenizer folder whose files are copied to
  `<workdir>/tokenizer/` (what `prepare_run(tokenizer=...)` points data.tokenizer at).

  Raises FileExistsError if `workdir` already has checkpoints.
  """
  from t5x_like import checkpointing
  from t5x_like.config import save_config
  from t5x_like.training import loop
  from t5x_like.training import step as step_lib

  workdir = os.path.abspath(workdir)
  check_workdir(workdir)
  trainer = loop.Trainer(config, workdir)
  ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir),
                                    keep=config.checkpoint.keep, async_save=False)
  try:
    with step_lib.mesh_context(trainer.mesh):
      # No checkpoint yet (check_workdir), so this is the run's own fresh initialisation
      # (step_lib.init_state): step 0, and whatever else the train state carries.
      state = trainer.init_or_restore(ckpt, None)
      state = _with_params(state, imported, trainer)
      os.makedirs(workdir, exist_ok=True)
      if tokenizer_from is not None:
        copy_tokenizer(tokenizer_from, os.path.join(workdir, TOKENIZER_SUBDIR))
      save_config(config, os.path.join(workdir, "config.yaml"))
      ckpt.save(0, state, {}, force=True)
      ckpt.wait()
  finally:
    ckpt.close()
  summary = {"workdir": workdir, "step": 0,
             "checkpoint": os.path.join(checkpointing.checkpoint_dir(workdir), "0"),
             **imported.summary()}
  with open(os.path.join(workdir, IMPORT_RECORD), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  return summary


def copy_tokenizer(folder: str, target: str) -> list[str]:
  """Copies the tokenizer files of a HF folder (HF_TOKENIZER_FILES present) into `target`."""
  import shutil

  from data_pipelines.tokenizer import HF_TOKENIZER_FILES
  os.makedirs(target, exist_ok=True)
  copied = []
  for name in HF_TOKENIZER_FILES:
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      shutil.copyfile(path, os.path.join(target, name))
      copied.append(name)
  return copied


def _with_params(state: Any, imported: ImportedCheckpoint, trainer: Any) -> Any:
  """`state` with the imported params placed on their shardings and a fresh optimiser state
  for them; params the checkpoint lacks keep their fresh initialisation."""
  import jax

  fresh = _flatten(state.params)
  ours = _flatten(_stack_layers(imported.params, state.params))
  extra = sorted(set(ours) - set(fresh))
  if extra:
    raise HFImportError(f"imported params {extra[:5]} have no place in the run's model")
  placed = {}
  for path, leaf in fresh.items():
    if path not in ours:
      placed[path] = leaf
      continue
    value = ours[path]
    if tuple(value.shape) != tuple(leaf.shape):
      raise HFImportError(f"imported {path} has shape {tuple(value.shape)}, the run's "
                          f"model expects {tuple(leaf.shape)}")
    placed[path] = jax.device_put(np.asarray(value, dtype=leaf.dtype), leaf.sharding)
  params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state.params),
                                        [placed[p] for p in _flatten_order(state.params)])
  opt_state = jax.jit(trainer.tx.init, out_shardings=trainer.state_sh.opt_state)(params)
  return state.replace(params=params, opt_state=opt_state)


def _flatten_order(tree: Any) -> list[str]:
  """Slash paths of `tree`'s leaves in jax's flattening order."""
  import jax
  paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  return ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in paths]


__all__ = ["HFImportError", "ImportedCheckpoint", "Layout",
           "check_workdir", "copy_tokenizer", "full_params", "import_hf", "layouts",
           "load_weights", "param_shapes", "prepare_run", "read_hf_config", "tokenizer_folder",
           "write_workdir"]
