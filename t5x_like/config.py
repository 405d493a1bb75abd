"""Typed, frozen, nested run configuration: YAML presets plus dotted `key.path=value` overrides.

One schema for every run. Presets live in `pretrain/configs/*.yaml` and only name the keys
they change; every key is checked against the dataclasses below (unknown keys are rejected
with the valid ones listed, values are type-checked, choices are enforced), and the resolved
tree is written into the run directory as `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import reprlib
import typing
from typing import Any

import yaml

from data_pipelines import storage
from data_pipelines.objectives import mlm

PRESET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "pretrain", "configs")


class ConfigError(ValueError):
  """A configuration value or key is wrong; the message names it and what was expected."""


def _choices(*values: str) -> dict[str, Any]:
  return {"choices": values}


def _registered(kind: str) -> dict[str, Any]:
  """A name looked up in a registry (`t5x_like.families` or `t5x_like.objectives`)."""
  return {"registry": kind}


def _registry_names(kind: str) -> tuple[str, ...]:
  import importlib  # the registries import this module: look them up at use

  return importlib.import_module(f"t5x_like.{kind}").names()


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture. Sizes follow the HF config names of the mirrored family."""
  family: str = dataclasses.field(default="bert", metadata=_registered("families"))
  vocab_size: int = 0  # 0 = the tokenizer's size (sentinels included)
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  hidden_act: str = dataclasses.field(default="gelu", metadata=_choices("gelu", "gelu_new",
                                                                        "relu"))
  layer_norm_eps: float = 1e-12
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  initializer_range: float = 0.02
  dtype: str = dataclasses.field(default="float32", metadata=_choices("float32", "bfloat16"))
  param_dtype: str = dataclasses.field(default="float32",
                                       metadata=_choices("float32", "bfloat16"))
  remat: str = dataclasses.field(default="none", metadata=_choices("none", "full", "dots"))
  scan_layers: bool = False
  # Attention kernel: "xla" (everywhere) or "splash" (the Pallas splash-attention kernel; on
  # TPU, elsewhere in Pallas interpret mode). BERT uses it for lengths that are multiples of
  # 128 without attention dropout; other calls and families use XLA and say why in the log.
  attention_kernel: str = dataclasses.field(default="xla", metadata=_choices("xla", "splash"))
  # Encoder-decoder (T5) fields; names follow transformers.T5Config where they differ.
  num_decoder_layers: int = 0  # 0 = num_layers
  head_dim: int = 0  # T5 d_kv; 0 = hidden_size // num_heads
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  initializer_factor: float = 1.0
  tie_word_embeddings: bool = False
  # BART: token embeddings scaled by sqrt(hidden_size) (transformers.BartConfig name).
  scale_embedding: bool = False
  # BART: the padding id whose embedding row starts at zero and gets no lookup gradient (HF's
  # padding_idx); 0 for this project's tokenizers, `pretrain import` sets a checkpoint's.
  pad_token_id: int = 0
  # XLNet: relative distances clipped to [-clamp_len, clamp_len] when > 0 (-1 = no clipping).
  clamp_len: int = -1
  # XLNet's bi_data: the second half of every global batch is reversed text, and the model
  # gives it negated relative distances (transformers.XLNetConfig name).
  bi_data: bool = False
  # XLNet memory (transformers.XLNetConfig names): mem_len cached states per layer carried from
  # one step to the next, from the first reuse_len tokens of each row; rows then come in
  # stream order (row i of step t+1 continues row i of step t). Both 0 (off) or both > 0.
  mem_len: int = 0
  reuse_len: int = 0


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """Self-supervised objective and its noise parameters (docs/objectives.md)."""
  name: str = dataclasses.field(default="mlm", metadata=_registered("objectives"))
  mask_prob: float = 0.15
  mask_token_frac: float = 0.8
  random_token_frac: float = 0.1
  whole_word: bool = False
  # Static number of positions the MLM head gathers per sequence; 0 derives it from seq_len.
  max_predictions: int = 0
  # T5 span corruption: data.seq_len is the encoder input length; the raw block and the
  # target length follow from random_spans_helper (512 -> 568 raw tokens, 114 targets).
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0
  # T5's random_roll: rotate each noise mask by a random offset (keeping spans whole), so a short
  # document's single span is not always its last tokens. Off by default, as in T5.
  random_roll: bool = False
  # BART denoising (fairseq semantics, applied in this order): sentence permutation, text
  # infilling (Poisson spans of whole words, one <mask> each), token masking, token deletion,
  # insertion, rotation. Each is a ratio in [0, 1]; 0 turns the noise off. data.seq_len is the
  # encoder (source) length; the target is the clean block with <s> and </s>. The default mix
  # is the BART paper's best: text infilling 0.3 (lambda 3) + sentence permutation 1.0.
  text_infilling: float = 0.3  # fraction of word starts masked (fairseq --mask)
  token_masking: float = 0.0  # fraction of tokens replaced by <mask>
  token_deletion: float = 0.0  # fraction of tokens deleted
  permute_sentences: float = 1.0  # fraction of sentences shuffled
  rotate: float = 0.0  # probability of rotating the document
  insert: float = 0.0  # inserted tokens, as a fraction of the source length
  random_ratio: float = 0.1  # masks / inserts that get a random token instead (--mask-random)
  poisson_lambda: float = 3.0  # mean span length of text infilling
  # XLNet permutation LM (original semantics): rows `A <sep> B <sep> <cls>` of data.seq_len
  # tokens; num_predict targets chosen as spans of 1..max_span tokens (p ~ 1/n) with a context
  # of n * mask_alpha / mask_beta; one factorisation order per perm_size block.
  num_predict: int = 0  # 0 = round(seq_len / 6), the paper's K = 6 (85 of 512)
  perm_size: int = 0  # 0 = seq_len; must divide seq_len
  max_span: int = 5
  mask_alpha: float = 6.0
  mask_beta: float = 1.0
  # Loss options T5X users expect: z_loss * logsumexp(logits)^2 per target token, and the
  # normaliser of the summed loss: 0 = the number of target tokens in the global batch, > 0 a
  # constant (T5X's loss_normalizing_factor, e.g. 233472 = 2048 x 114).
  z_loss: float = 0.0
  loss_normalizing_factor: float = 0.0


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where text comes from and how it is cut."""
  corpus: str = "bundled"  # bundled | bundled_ko | bundled_all | PATH | tfds:NAME[/CFG][:SPLIT]
  # bundled | PATH to a sentencepiece .model | a HuggingFace tokenizer folder
  tokenizer: str = "bundled"
  seq_len: int = 128  # encoder input length (MLM: with [CLS] and [SEP])
  # Decoder target length (encoder-decoder objectives); 0 = what the objective produces from a
  # full block (span corruption: random_spans_helper, 114 for inputs of 512).
  target_len: int = 0
  # False: documents are concatenated and cut into full blocks, so rows cross document
  # boundaries: with EOS between them (RoBERTa FULL-SENTENCES), or for span corruption with
  # nothing between them (T5's reduce_concat_tokens: a noised EOS would teach the decoder to
  # end mid-target). True: each document (cut into chunks of at most a block) is its own
  # example, several packed per row with segment ids and positions; attention never crosses
  # documents and no compute is spent on padding beyond each row's tail.
  pack_documents: bool = False
  text_field: str = "text"
  validation_fraction: float = 0.02
  cache_dir: str = ""  # "" = $XDG_CACHE_HOME/t5x_like/data
  worker_threads: int = 2
  prefetch: int = 4


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Optimiser and learning-rate schedule."""
  name: str = dataclasses.field(default="adamw", metadata=_choices("adamw", "adafactor"))
  learning_rate: float = 1e-4
  schedule: str = dataclasses.field(default="linear",
                                    metadata=_choices("linear", "cosine", "constant",
                                                      "rsqrt"))
  warmup_steps: int = 10_000
  end_learning_rate_ratio: float = 0.0
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-6
  grad_clip_norm: float = 1.0  # 0 disables clipping
  grad_accum_steps: int = 1
  # Adafactor (T5X defaults): factored second moments for matrices whose two largest dims are
  # >= min_dim_size_to_factor, decay rate 0.8, update clipping 1.0, update scaled by the
  # parameter's RMS; b1 > 0 adds momentum. weight_decay applies as decoupled decay.
  adafactor_decay_rate: float = 0.8
  adafactor_clipping_threshold: float = 1.0
  adafactor_multiply_by_parameter_scale: bool = True
  adafactor_min_dim_size_to_factor: int = 128


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh shape; -1 on one axis means "all remaining devices".

  data / fsdp / tensor are the axes within one slice (ICI); dcn_* multiply them across the
  slices of a multi-slice TPU job (the data-center network), e.g. dcn_data=2 for two slices
  doing data parallelism.
  """
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_tensor: int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every: int = 1000
  keep: int = 3
  async_save: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 1000
  batch_size: int = 32  # global, over all hosts
  seed: int = 0
  eval_every: int = 1000
  eval_steps: int = 20
  log_every: int = 10
  export_at_end: bool = False
  print_sharding: bool = False
  # A step whose loss or gradient is NaN/Inf is never applied; then "stop" ends the run
  # naming the step and the last good checkpoint, "skip" goes on (and counts them).
  on_nonfinite: str = dataclasses.field(default="stop", metadata=_choices("stop", "skip"))


@dataclasses.dataclass(frozen=True)
class Config:
  model: ModelConfig = ModelConfig()
  objective: ObjectiveConfig = ObjectiveConfig()
  data: DataConfig = DataConfig()
  optim: OptimConfig = OptimConfig()
  mesh: MeshConfig = MeshConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  train: TrainConfig = TrainConfig()


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
        choices = _registry_names(field.metadata["registry"])
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
  return sorted(f[:-5] for f in os.listdir(PRESET_DIR) if f.endswith(".yaml"))


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
    path = os.path.join(PRESET_DIR, name_or_path + ".yaml")
    if not os.path.exists(path):
      raise ConfigError(f"unknown config preset {name_or_path!r}; presets: "
                        f"{', '.join(list_presets())} (or give a path to a .yaml file)")
  if path in seen:
    raise ConfigError(f"config {path}: `base:` inheritance loops through {' -> '.join(seen)}")
  tree = _read_yaml(path)
  base = tree.pop("base", None)
  if base is not None:
    if not isinstance(base, str):
      raise ConfigError(f"config {path}: base must be a preset name or path, got {base!r}")
    if not (os.sep in base or base.endswith((".yaml", ".yml"))) and \
        not os.path.exists(os.path.join(PRESET_DIR, base + ".yaml")):
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


# --------------------------------------------------------------------------- validation


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def validate(c: Config) -> None:
  """Cross-field checks; each failure names the key and the expected range."""
  m, o, d, t, opt = c.model, c.objective, c.data, c.train, c.optim
  _require(m.vocab_size >= 0, f"model.vocab_size must be >= 0 (0 = the tokenizer's), got "
           f"{m.vocab_size}")
  for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size",
              "max_position_embeddings", "type_vocab_size", "relative_attention_num_buckets",
              "relative_attention_max_distance"):
    _require(getattr(m, key) >= 1, f"model.{key} must be >= 1, got {getattr(m, key)}")
  for key in ("num_decoder_layers", "head_dim"):
    _require(getattr(m, key) >= 0, f"model.{key} must be >= 0 (0 = default), got "
             f"{getattr(m, key)}")
  _require(m.head_dim > 0 or m.hidden_size % m.num_heads == 0,
           f"model.hidden_size ({m.hidden_size}) must be divisible by model.num_heads "
           f"({m.num_heads}) unless model.head_dim is set")
  _require(m.pad_token_id >= 0 and (m.vocab_size == 0 or m.pad_token_id < m.vocab_size),
           f"model.pad_token_id ({m.pad_token_id}) must be in [0, model.vocab_size)")
  _require(m.initializer_factor > 0,
           f"model.initializer_factor must be > 0, got {m.initializer_factor}")
  from t5x_like import families, objectives  # the registries import this module

  family, objective = families.get(m.family), objectives.get(o.name)
  _require(m.family in objective.families,
           f"objective.name {o.name!r} does not train model.family {m.family!r}; " +
           ", ".join(f"{f} takes {' or '.join(x.name for x in objectives.OBJECTIVES if f in x.families)}"
                     for f in families.names()))
  _check_owned(c, family, objective)
  for key in ("dropout_rate", "attention_dropout_rate"):
    _require(0.0 <= getattr(m, key) < 1.0, f"model.{key} must be in [0, 1), got "
             f"{getattr(m, key)}")
  _require(0.0 < o.mask_prob < 1.0, f"objective.mask_prob must be in (0, 1), got {o.mask_prob}")
  _require(o.mask_token_frac >= 0 and o.random_token_frac >= 0 and
           o.mask_token_frac + o.random_token_frac <= 1.0 + 1e-9,
           "objective.mask_token_frac and objective.random_token_frac must be >= 0 and sum to "
           f"<= 1, got {o.mask_token_frac} + {o.random_token_frac}")
  _require(o.max_predictions >= 0, f"objective.max_predictions must be >= 0 (0 = derive), got "
           f"{o.max_predictions}")
  _require(0.0 < o.noise_density < 1.0,
           f"objective.noise_density must be in (0, 1), got {o.noise_density}")
  _require(o.mean_noise_span_length >= 1.0,
           f"objective.mean_noise_span_length must be >= 1, got {o.mean_noise_span_length}")
  for key in ("text_infilling", "token_masking", "token_deletion", "permute_sentences",
              "rotate", "insert", "random_ratio"):
    value = getattr(o, key)
    _require(0.0 <= value <= 1.0, f"objective.{key} must be in [0, 1], got {value}")
  # >= 0.01, as denoising.DenoisingParams: below it nearly every span is empty and filling
  # the masking budget takes ~budget/lambda draws.
  _require(o.poisson_lambda >= 0.01 and math.isfinite(o.poisson_lambda),
           f"objective.poisson_lambda must be >= 0.01, got {o.poisson_lambda} (the mean "
           f"span length of text infilling)")
  _require(0 <= o.num_predict < d.seq_len - 3,
           f"objective.num_predict must be in [0, data.seq_len - 3) = [0, {d.seq_len - 3}) "
           f"(0 = seq_len / 6), got {o.num_predict}")
  reuse = m.reuse_len
  _require(m.mem_len >= 0 and reuse >= 0, f"model.mem_len ({m.mem_len}) and model.reuse_len "
           f"({reuse}) must be >= 0")
  _require((m.mem_len > 0) == (reuse > 0),
           f"model.mem_len ({m.mem_len}) and model.reuse_len ({reuse}) must both be 0 (no "
           f"memory) or both > 0: the memory caches the first reuse_len tokens of each row")
  # The rest of a row (A <sep> B <sep> <cls>) is cut from the next reuse_len-token block.
  _require(not reuse or (2 * reuse >= d.seq_len - 3 and reuse + 5 <= d.seq_len),
           f"model.reuse_len ({reuse}) must be in [ceil((data.seq_len - 3) / 2), "
           f"data.seq_len - 5] = [{(d.seq_len - 2) // 2}, {d.seq_len - 5}]: the rest of the row "
           f"comes from the next reuse_len-token block and needs A and B")
  if reuse:
    _require(o.perm_size >= 0 and (o.perm_size == 0 or (
        reuse % o.perm_size == 0 and (d.seq_len - reuse) % o.perm_size == 0)),
             f"objective.perm_size ({o.perm_size}) must divide model.reuse_len ({reuse}) and "
             f"data.seq_len - reuse_len ({d.seq_len - reuse}) (0 = each part one block)")
  else:
    _require(o.perm_size >= 0 and (o.perm_size == 0 or d.seq_len % o.perm_size == 0),
             f"objective.perm_size ({o.perm_size}) must divide data.seq_len ({d.seq_len}) "
             f"(0 = seq_len)")
  _require(o.max_span >= 1, f"objective.max_span must be >= 1, got {o.max_span}")
  _require(o.mask_alpha > 0 and o.mask_beta > 0 and o.mask_alpha >= o.mask_beta,
           f"objective.mask_alpha / mask_beta must be >= 1 with both > 0, got "
           f"{o.mask_alpha} / {o.mask_beta}")
  _require(not d.pack_documents or objective.pack_spec is not None,
           f"data.pack_documents is not supported for objective.name {o.name}: "
           f"{objective.packing_refused}; set data.pack_documents=false")
  _require(o.z_loss >= 0, f"objective.z_loss must be >= 0, got {o.z_loss}")
  _require(o.loss_normalizing_factor >= 0, "objective.loss_normalizing_factor must be >= 0 "
           f"(0 = number of target tokens), got {o.loss_normalizing_factor}")
  _require(d.seq_len >= 8, f"data.seq_len must be >= 8, got {d.seq_len}")
  _require(d.target_len >= 0, f"data.target_len must be >= 0 (0 = derived), got {d.target_len}")
  for key in ("seq_len", "target_len"):  # relative positions (T5, XLNet): no table to exceed
    _require(family.relative_positions or getattr(d, key) <= m.max_position_embeddings,
             f"data.{key} ({getattr(d, key)}) exceeds model.max_position_embeddings "
             f"({m.max_position_embeddings})")
  _require(0.0 <= d.validation_fraction < 1.0,
           f"data.validation_fraction must be in [0, 1), got {d.validation_fraction}")
  _require(d.worker_threads >= 0 and d.prefetch >= 0,
           "data.worker_threads and data.prefetch must be >= 0")
  _require(opt.learning_rate > 0, f"optim.learning_rate must be > 0, got {opt.learning_rate}")
  _require(opt.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {opt.warmup_steps}")
  _require(0.0 <= opt.end_learning_rate_ratio <= 1.0,
           f"optim.end_learning_rate_ratio must be in [0, 1], got {opt.end_learning_rate_ratio}")
  _require(0.0 <= opt.b1 < 1.0 and 0.0 <= opt.b2 < 1.0, "optim.b1 and optim.b2 must be in [0, 1)")
  _require(opt.eps > 0 and opt.weight_decay >= 0 and opt.grad_clip_norm >= 0,
           "optim.eps must be > 0; optim.weight_decay and optim.grad_clip_norm must be >= 0")
  _require(0.0 < opt.adafactor_decay_rate <= 1.0,
           f"optim.adafactor_decay_rate must be in (0, 1], got {opt.adafactor_decay_rate}")
  _require(opt.adafactor_clipping_threshold >= 0 and opt.adafactor_min_dim_size_to_factor >= 1,
           "optim.adafactor_clipping_threshold must be >= 0 (0 = off) and "
           "optim.adafactor_min_dim_size_to_factor >= 1")
  _require(opt.schedule != "rsqrt" or opt.warmup_steps >= 1,
           "optim.schedule rsqrt needs optim.warmup_steps >= 1 (the constant phase)")
  _require(opt.grad_accum_steps >= 1,
           f"optim.grad_accum_steps must be >= 1, got {opt.grad_accum_steps}")
  for key in ("data", "fsdp", "tensor"):
    value = getattr(c.mesh, key)
    _require(value == -1 or value >= 1, f"mesh.{key} must be -1 (the rest) or >= 1, got {value}")
  for key in ("dcn_data", "dcn_fsdp", "dcn_tensor"):
    _require(getattr(c.mesh, key) >= 1, f"mesh.{key} must be >= 1, got {getattr(c.mesh, key)}")
  _require([c.mesh.data, c.mesh.fsdp, c.mesh.tensor].count(-1) <= 1,
           "at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
  _require(c.checkpoint.every >= 1, f"checkpoint.every must be >= 1, got {c.checkpoint.every}")
  _require(c.checkpoint.keep >= 1, f"checkpoint.keep must be >= 1, got {c.checkpoint.keep}")
  _require(t.steps >= 1, f"train.steps must be >= 1, got {t.steps}")
  _require(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
  _require(t.batch_size % opt.grad_accum_steps == 0,
           f"train.batch_size ({t.batch_size}) must be divisible by optim.grad_accum_steps "
           f"({opt.grad_accum_steps})")
  # Micro-batch i takes rows i, i+k, ..: its halves are the global halves iff k | B/2.
  _require(not m.bi_data or (t.batch_size % 2 == 0 and
                             (t.batch_size // 2) % opt.grad_accum_steps == 0),
           f"model.bi_data needs train.batch_size ({t.batch_size}) even with half of it "
           f"divisible by optim.grad_accum_steps ({opt.grad_accum_steps}): the second half of "
           f"every (micro-)batch is the reversed text")
  _require(t.eval_every >= 1 and t.eval_steps >= 0 and t.log_every >= 1,
           "train.eval_every and train.log_every must be >= 1, train.eval_steps >= 0")


def _check_owned(c: Config, family: Any, objective: Any) -> None:
  """A `model.*` / `objective.*` key that only another family / objective reads must keep its
  default here: refused rather than silently ignored (e.g. XLNet's bi_data on BERT)."""
  from t5x_like import families, objectives

  for section, current, registry, what in (
      ("model", family, families.FAMILIES, "model.family"),
      ("objective", objective, objectives.OBJECTIVES, "objective.name")):
    values, defaults = getattr(c, section), type(getattr(c, section))()
    for other in registry:
      for key in other.owned_fields:
        if other is current or key in current.owned_fields:
          continue
        _require(getattr(values, key) == getattr(defaults, key),
                 f"{section}.{key} applies to {other.name} only; {what} is {current.name!r}")


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
