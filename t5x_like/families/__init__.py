"""Model families as registered units.

A `Family` is everything family-specific that core code needs — the typed model config, the
Flax module, the batch features it consumes, how `load_pretrained` calls it, its FLOPs per
training step, its HuggingFace export and import, and the tokenizer post-processing of its
exports — in one record, registered once under `model.family`. Core code (`models.build`,
the tasks, the loop, `flops`, `pretrain export`, `pretrain import`, `load_pretrained`) looks
the record up and never branches on a family's name; an unknown name is one error listing the
registered families (levanter registers `LmConfig` subclasses the same way).

The built-in families register themselves in `t5x_like/families/<name>/__init__.py`; a new
family is one such folder plus its tests (docs/adding_a_family.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from t5x_like import config
from t5x_like.config_schema import ModelConfig
from t5x_like.registry import Registry


@dataclasses.dataclass(frozen=True)
class HFSpec:
  """How a family maps to and from a HuggingFace checkpoint (`pretrain import`).

  The tensor names and layouts come from the exporter (`to_hf`), run on a probe model.
  """
  model_type: str  # config.json's model_type
  architectures: tuple[str, ...]  # whose weights we can hold
  config_from_hf: Callable[[Mapping[str, Any], list[str]], Any]  # -> the module config
  to_hf: Callable[[Any, Any], dict[str, Any]]  # (params, module config) -> HF state dict
  probe: Mapping[str, int]  # small sizes for the name/layout probe (layer counts kept)
  # Tied copies HF may save: copy -> source (checked equal, then ignored).
  tied: Mapping[str, str] = dataclasses.field(default_factory=dict)
  # HF name prefixes we drop on purpose -> why.
  ignored: Mapping[str, str] = dataclasses.field(default_factory=dict)
  # Names of the exporter's table that may be absent (our params stay freshly initialised).
  optional: Mapping[str, str] = dataclasses.field(default_factory=dict)
  # HF name -> older name that holds the same tensor.
  aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
  # Renames applied to a checkpoint's tensor names before matching (e.g. BERT's old gamma/beta).
  normalise_names: Callable[[dict[str, Any]], dict[str, Any]] | None = None


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
  """The special-token template and roles of an exported fast tokenizer (as the family's HF
  tokenizer class: BertTokenizer, T5Tokenizer, BartTokenizer, XLNetTokenizer)."""
  single: str  # TemplateProcessing for one sequence, e.g. "<s> $A:0 <sep>:0"
  pair: str
  specials: tuple[str, ...]  # the special tokens the templates use
  roles: Mapping[str, str] = dataclasses.field(default_factory=dict)  # e.g. cls_token -> <s>
  token_type_ids: bool = False  # model_input_names include token_type_ids
  padding_side: str = "right"


@dataclasses.dataclass(frozen=True)
class Family:
  """One registered model family. See the module docstring."""
  name: str
  # The run config's `model` section -> the module-level config (e.g. `BertConfig`).
  module_config: Callable[[Any], Any]
  build: Callable[[Any], Any]  # module config -> Flax module
  features: tuple[str, ...]  # batch features the training task feeds it
  # Added when documents are packed (segment ids / positions).
  packed_features: tuple[str, ...] = ()
  always_packed: bool = False  # rows always carry segment ids (BART: random source lengths)
  encoder_decoder: bool = False
  # A decoder-only LM: its module takes (input_ids, segment_ids_BL=, positions_BL=,
  # prefix_BL=, decode=) and keeps a KV cache in the "cache" collection (`pretrain generate`).
  decoder_only: bool = False
  # run model section -> the longest sequence it may read (a rotary model's
  # max_position_embeddings); None (or no function): no limit (ALiBi).
  context_length: Callable[[Any], int | None] | None = None
  # The typed `model` section (the keys every family has plus its own, with its checks).
  config: type = ModelConfig
  init_args: int = 1  # leading int [1, L] arguments of the module's init
  # (module, params, feed) -> float logits, for `load_pretrained(...).logits`; the feed holds
  # the batch's features named in `logits_features`, `required` ones always present.
  logits: Callable[[Any, Any, dict[str, Any]], Any] | None = None
  logits_features: tuple[str, ...] = ()
  required: tuple[str, ...] = ("input_ids",)
  float_features: tuple[str, ...] = ()  # fed as float32 (masks such as XLNet's perm_mask)
  flops: Callable[[Any], float] | None = None  # run config -> training FLOPs per step
  # (params, module config, out_dir, sentencepiece model, num_sentinels, **kw) -> out_dir
  export: Callable[..., str] | None = None
  hf: HFSpec | None = None
  tokenizer: TokenizerSpec | None = None
  # Default `lora.targets`: peft's default target_modules for the exported class, as patterns
  # over our module paths (`t5x_like.models.lora`).
  lora_targets: tuple[str, ...] = ()
  # A folder of `*.yaml` presets loadable by name; the built-in families' are found in
  # `t5x_like/families/<name>/presets/` without it.
  presets: str | None = None


FAMILIES: Registry[Family] = Registry("model family", "model.family")


def register(family: Family, replace: bool = False) -> Family:
  if family.presets is not None:
    config.add_preset_dir(family.presets)
  return FAMILIES.register(family, replace=replace)


def unregister(name: str) -> None:
  """Removes a family and its preset folder (tests register toy families)."""
  family = FAMILIES.get(name) if name in FAMILIES else None
  if family is not None and family.presets is not None:
    config.remove_preset_dir(family.presets)
  FAMILIES.unregister(name)


def get(name: str) -> Family:
  return FAMILIES.get(name)


def names() -> tuple[str, ...]:
  return FAMILIES.names()


def by_model_type(model_type: Any) -> Family | None:
  """The family whose HF export/import uses config.json's `model_type`."""
  return next((f for f in FAMILIES if f.hf is not None and f.hf.model_type == model_type), None)


# The built-in families (each registers itself on import).
from t5x_like.families import albert, bart, bert, electra, llama, mpt, t5, xlnet  # noqa: F401  pylint: disable=wrong-import-position
