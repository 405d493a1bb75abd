"""The run configuration's schema: typed, frozen, nested sections with their defaults.

Loading (YAML presets, overrides, type checks) is in `t5x_like.config`, cross-field checks in
`t5x_like.config_validation`; `t5x_like.config` is the public surface of all three.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any


class ConfigError(ValueError):
  """A configuration value or key is wrong; the message names it and what was expected."""


def choices(*values: str) -> dict[str, Any]:
  return {"choices": values}


def registered(kind: str) -> dict[str, Any]:
  """A name looked up in a registry (`t5x_like.families` or `t5x_like.objectives`)."""
  return {"registry": kind}


def registry_names(kind: str) -> tuple[str, ...]:
  """The names registered in `t5x_like.<kind>` (looked up at use: the registries import the
  config)."""
  return importlib.import_module(f"t5x_like.{kind}").names()


# What a config that names no family / objective gets (documented defaults, not dispatch).
DEFAULT_FAMILY = "bert"
DEFAULT_OBJECTIVE = "mlm"

# Field tags (metadata) that core code reads instead of lists of names:
# shape: the parameters' shapes depend on it (a resume may not change it; an imported
#   checkpoint's tensors fix it);
# run: a run choice, not the checkpoint's (`pretrain import` keeps the base config's value).
SHAPE = {"shape": True}
RUN = {"run": True}


def tagged(section: Any, tag: str) -> tuple[str, ...]:
  """The names of the fields of `section` (a dataclass or its class) tagged `tag`."""
  return tuple(f.name for f in dataclasses.fields(section) if f.metadata.get(tag))


@dataclasses.dataclass(frozen=True)
class Polymorphic:
  """A section, or each record of a list, whose class is chosen by its `key` field: among the
  units of the registry `t5x_like.<kind>` (each unit's `config` class), or in `table`.

  `model` is chosen by `model.family`, `objective` by `objective.name`: a family's or an
  objective's own keys are valid only beside its name, and its record validates them.
  """
  key: str
  kind: str = ""
  default: str = ""
  table: Callable[[], Mapping[str, type]] | None = None  # name -> class, instead of a registry

  def classes(self) -> Mapping[str, type]:
    """Every registered name -> its class."""
    if self.table is not None:
      return self.table()
    registry = importlib.import_module(f"t5x_like.{self.kind}")
    return {name: registry.get(name).config for name in registry.names()}

  def resolve(self, name: str) -> type:
    """The class for `name` (an unregistered name: ConfigError listing the registered)."""
    if self.table is None:
      return importlib.import_module(f"t5x_like.{self.kind}").get(name).config
    table = self.table()
    if name not in table:
      raise ConfigError(f"{self.key} {name!r} is not one of {', '.join(table)}")
    return table[name]


def _default_section(section: str) -> Any:
  field = next(f for f in dataclasses.fields(Config) if f.name == section)
  spec: Polymorphic = field.metadata["polymorphic"]
  return spec.resolve(spec.default)()


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The architecture keys every family reads; sizes follow the HF config names of the
  mirrored family. A family's `model` section subclasses it with its own keys
  (`t5x_like/families/<name>/config.py`) and checks them (`check`)."""
  family: str = dataclasses.field(default=DEFAULT_FAMILY,
                                  metadata={**registered("families"), **SHAPE})
  vocab_size: int = dataclasses.field(default=0, metadata=SHAPE)  # 0 = the tokenizer's size
  hidden_size: int = dataclasses.field(default=768, metadata=SHAPE)
  num_layers: int = dataclasses.field(default=12, metadata=SHAPE)
  num_heads: int = dataclasses.field(default=12, metadata=SHAPE)
  intermediate_size: int = dataclasses.field(default=3072, metadata=SHAPE)
  hidden_act: str = dataclasses.field(default="gelu", metadata=choices("gelu", "gelu_new",
                                                                        "relu"))
  layer_norm_eps: float = 1e-12
  dropout_rate: float = 0.1
  dtype: str = dataclasses.field(default="float32",
                                 metadata={**choices("float32", "bfloat16"), **RUN})
  param_dtype: str = dataclasses.field(default="float32",
                                       metadata={**choices("float32", "bfloat16"), **RUN})
  remat: str = dataclasses.field(default="none",
                                 metadata={**choices("none", "full", "dots"), **RUN})
  scan_layers: bool = dataclasses.field(default=False, metadata=RUN)
  # Attention kernel: "xla" (everywhere) or "splash" (the Pallas splash-attention kernel; on
  # TPU, elsewhere in Pallas interpret mode). A family that cannot use it says so in the log.
  attention_kernel: str = dataclasses.field(default="xla", metadata=choices("xla", "splash"))

  def check(self, config: Any) -> None:
    """The family's own cross-field checks (raise ConfigError); called by `validate`."""


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """The objective keys every objective reads; an objective's `objective` section subclasses
  it with its noise parameters (`t5x_like/objectives/<name>.py`, docs/objectives.md)."""
  name: str = dataclasses.field(default=DEFAULT_OBJECTIVE, metadata=registered("objectives"))
  # Loss options T5X users expect: z_loss * logsumexp(logits)^2 per target token, and the
  # normaliser of the summed loss: 0 = the number of target tokens in the global batch, > 0 a
  # constant (T5X's loss_normalizing_factor, e.g. 233472 = 2048 x 114).
  z_loss: float = 0.0
  loss_normalizing_factor: float = 0.0

  def check(self, config: Any) -> None:
    """The objective's own cross-field checks (raise ConfigError); called by `validate`."""


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
  # Processes that read and tokenize the corpus in `pretrain data prepare` (and in the
  # preparation `train` runs when the cache is missing); 0 = one per core. The prepared data
  # is the same for any number.
  prepare_workers: int = 0
  # Document order before blocks are cut. random: corpus order (the default). icp: In-Context
  # Pretraining (Shi et al. 2023; docs/objectives.md): near-duplicates dropped, related
  # documents next to each other, blocks shuffled. Needs pack_documents=false.
  order: str = dataclasses.field(default="random", metadata=choices("random", "icp"))
  icp_k: int = 10  # neighbours per document in the kNN graph
  icp_dedup: float = 0.9  # cosine at or above which documents are near-duplicates
  # tfidf (hashed token n-grams, no download) | a run directory or checkpoint of ours whose
  # mean-pooled final hidden states embed the documents (same tokenizer as data.tokenizer)
  icp_embedding: str = "tfidf"
  icp_dim: int = 256  # tfidf: dense dimensions
  icp_seed: int = 0  # shuffles the blocks of the ordered stream


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Optimiser and learning-rate schedule."""
  name: str = dataclasses.field(default="adamw", metadata=choices("adamw", "adafactor"))
  learning_rate: float = 1e-4
  schedule: str = dataclasses.field(default="linear",
                                    metadata=choices("linear", "cosine", "constant",
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
  on_nonfinite: str = dataclasses.field(default="stop", metadata=choices("stop", "skip"))


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """LoRA continued pretraining (`t5x_like.models.lora`): rank 0 = off (full training).

  The keys are peft's `LoraConfig` ones: r, lora_alpha, lora_dropout, target_modules,
  use_rslora, init_lora_weights; `train_embeddings` also trains the token embedding tables
  (peft's modules_to_save). The adapters' shapes depend on rank and targets (a resume keeps
  them); alpha and dropout may change.
  """
  rank: int = 0
  alpha: float = 8.0  # scale = alpha / rank (alpha / sqrt(rank) with use_rslora)
  dropout: float = 0.0  # on the adapter's input, as peft's lora_dropout
  # Patterns over our module paths (e.g. query, attention/value, encoder/*/q); empty = the
  # family's default (peft's default target_modules for the exported transformers class).
  targets: tuple[str, ...] = ()
  train_embeddings: bool = False
  # Patterns over our module paths whose parameters are trained whole (peft's modules_to_save),
  # e.g. mlm_head for a checkpoint imported without its MLM head.
  modules_to_save: tuple[str, ...] = ()
  use_rslora: bool = False
  init: str = dataclasses.field(default="kaiming_uniform",
                                metadata=choices("kaiming_uniform", "gaussian"))


@dataclasses.dataclass(frozen=True)
class Config:
  model: ModelConfig = dataclasses.field(
      default_factory=lambda: _default_section("model"),
      metadata={"polymorphic": Polymorphic("family", "families", DEFAULT_FAMILY)})
  objective: ObjectiveConfig = dataclasses.field(
      default_factory=lambda: _default_section("objective"),
      metadata={"polymorphic": Polymorphic("name", "objectives", DEFAULT_OBJECTIVE)})
  data: DataConfig = DataConfig()
  optim: OptimConfig = OptimConfig()
  mesh: MeshConfig = MeshConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  train: TrainConfig = TrainConfig()
  lora: LoraConfig = LoraConfig()
