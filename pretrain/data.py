"""Glue between `data_pipelines` (NumPy + grain) and the training loop (JAX).

Resolves the tokenizer and vocabulary size, prepares (or reuses) the block cache for the
objective's block length, and builds the resumable train iterator and the eval factory.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable

import jax
import numpy as np

from data_pipelines import icp, packing, pipeline, prepare, storage
from data_pipelines import prepare_workers as prepare_workers_lib
from data_pipelines import vocab as vocab_lib
from data_pipelines.tokenizer import AnyTokenizer as Tokenizer
from data_pipelines.tokenizer import load_tokenizer
from t5x_like import objectives
from t5x_like.config import Config, ConfigError, replace
from t5x_like.training.loop import DataHooks


def cache_root(config: Config) -> str:
  """The local cache directory (for a gs:// data.cache_dir, its local mirror)."""
  if config.data.cache_dir:
    return storage.local_mirror(config.data.cache_dir, "data")
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "t5x_like", "data")


def prepare_workers(config: Config) -> int:
  """data.prepare_workers, 0 meaning one per core."""
  return config.data.prepare_workers or prepare_workers_lib.default_workers()


def resolve_vocab(config: Config, tokenizer: Tokenizer) -> Config:
  """Fills model.vocab_size from the tokenizer, or refuses a mismatch.

  A checkpoint's own (HF) tokenizer may have fewer ids than the model's embedding (T5 pads
  32100 ids to 32128 rows); ids beyond it are never produced."""
  size = tokenizer.vocab_size
  if config.model.vocab_size == 0:
    return replace(config, model={"vocab_size": size})
  if tokenizer.kind == "hf" and config.model.vocab_size > size:
    return config
  if config.model.vocab_size != size:
    raise ConfigError(f"model.vocab_size is {config.model.vocab_size} but tokenizer "
                      f"{tokenizer.model_path} has {size} ids (sentinels included); set "
                      f"model.vocab_size={size} or 0 to take the tokenizer's")
  return config


def _objective(config: Config) -> objectives.Objective:
  return objectives.get(config.objective.name)


def block_length(config: Config) -> int:
  """Raw tokens per prepared block for the objective (e.g. MLM: seq_len - 2 for [CLS] and
  [SEP]; span corruption: the length that corrupts to exactly seq_len inputs, 512 -> 568)."""
  return _objective(config).block_length(config)


def resolve_lengths(config: Config) -> Config:
  """Fills data.target_len from the objective, or refuses one too short for it."""
  objective = _objective(config)
  if objective.target_length is None:
    if config.data.target_len:
      raise ConfigError(f"data.target_len ({config.data.target_len}) applies only to "
                        f"encoder-decoder objectives; objective.name is {objective.name}")
    return config
  targets = objective.target_length(config)
  if config.data.target_len == 0:
    return replace(config, data={"target_len": targets})
  if config.data.target_len < targets:
    raise ConfigError(f"data.target_len ({config.data.target_len}) is shorter than the "
                      f"{targets} targets {objective.name} makes from inputs of "
                      f"{config.data.seq_len}; set it to 0 (derive) or >= {targets}")
  return config


def pack_spec(config: Config) -> packing.PackSpec | None:
  """How documents are packed into rows at prepare time (None: concatenated blocks)."""
  if not config.data.pack_documents:
    return None
  objective = _objective(config)
  if objective.pack_spec is None:
    raise ConfigError(f"data.pack_documents is not supported for objective.name "
                      f"{objective.name}: {objective.packing_refused}")
  return objective.pack_spec(config)


def order_spec(config: Config, tokenizer: Tokenizer) -> icp.OrderSpec | None:
  """The In-Context Pretraining order of data.order=icp (None: corpus order).

  data.icp_embedding names a run directory or checkpoint of ours to embed documents with its
  mean-pooled final hidden states; anything but `tfidf` that is not one is refused here,
  before any data work."""
  d = config.data
  if d.order != "icp":
    return None
  spec = icp.OrderSpec(k=d.icp_k, dedup=d.icp_dedup, embedding="tfidf", dim=d.icp_dim,
                       seed=d.icp_seed)
  if d.icp_embedding == "tfidf":
    return spec
  from pretrain import icp_embedding  # JAX model code, only when a checkpoint is named

  name, embed = icp_embedding.checkpoint_embedder(d.icp_embedding, tokenizer)
  return dataclasses.replace(spec, embedding=name, embed=embed)


def make_objective(config: Config, tokenizer: Tokenizer, reverse: bool = False,
                   ) -> Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]:
  """(raw block, generator) -> one example; fixed-shape rows unless documents are packed.

  reverse: XLNet's reversed-text rows (bi_data's second half of the batch).
  """
  return _objective(config).make_example(config, tokenizer.vocab_info(), reverse)


def make_pack_row(config: Config, vocab: vocab_lib.VocabInfo | None = None,
                  ) -> Callable[[list[dict[str, np.ndarray]]], dict[str, np.ndarray]] | None:
  """The examples of one prepared row -> the row's fixed-shape features: packed documents,
  and every row of an objective that always packs its rows (BART: one block still makes a
  one-segment row, its source length is random).

  vocab: the tokenizer's ids for padding and the decoder start (None: the fixed ids of
  data_pipelines.vocab).
  """
  objective = _objective(config)
  if (not config.data.pack_documents and not objective.always_packs_rows) or (
      objective.pack_row is None):
    return None
  if vocab is None:
    vocab = vocab_lib.VocabInfo(0, np.zeros(0, bool), np.zeros(0, bool), np.zeros(0, np.int32))
  return objective.pack_row(config, vocab)


def most_frequent_token(manifest: prepare.Manifest, tokenizer: Tokenizer,
                        max_blocks: int = 2000) -> int:
  """The most frequent non-special id of the training split (from up to `max_blocks` blocks
  spread evenly): the unigram baseline predicts it at every masked position."""
  n = pipeline.num_records(manifest.directory, "train")
  picks = np.unique(np.linspace(0, n - 1, min(n, max_blocks)).astype(np.int64))
  counts = np.zeros(tokenizer.vocab_size, np.int64)
  for i in picks:
    for segment in pipeline.read_segments(manifest.directory, "train", int(i)):
      counts += np.bincount(segment, minlength=tokenizer.vocab_size)
  counts[tokenizer.vocab_info().is_special] = 0
  return int(np.argmax(counts))


def check_objective(config: Config, tokenizer: Tokenizer) -> None:
  """Refuses a tokenizer (a checkpoint's own) without a special token the objective writes,
  and whatever else the objective checks (span corruption: enough sentinel ids)."""
  objective = _objective(config)
  missing = tokenizer.missing_roles(objective.special_roles)
  if missing:
    raise ConfigError(f"objective {objective.name} needs the special tokens "
                      f"{', '.join(missing)}, which tokenizer {tokenizer.model_path} does not "
                      f"have (named in its tokenizer_config.json / special_tokens_map.json as "
                      f"<role>_token, or [CLS]/<cls>, [SEP]/<sep>, [MASK]/<mask>, <s>, </s>)")
  if objective.check is not None:
    objective.check(config, tokenizer)


def data_warning(config: Config, tokenizer: Tokenizer, manifest: prepare.Manifest
                 ) -> str | None:
  """The objective's warning about the prepared data (None: nothing to say)."""
  objective = _objective(config)
  if objective.data_warning is None:
    return None
  return objective.data_warning(config, tokenizer, manifest)


@dataclasses.dataclass
class RunData:
  config: Config  # with model.vocab_size resolved
  tokenizer: Tokenizer
  manifest: prepare.Manifest
  hooks: DataHooks


def prepare_for(config: Config, tokenizer: Tokenizer | None = None, runner: str = "local",
                beam_options: str = "") -> tuple[Config, Tokenizer, prepare.Manifest]:
  """Resolves the vocabulary and prepares (or reuses) the block cache, on this machine or
  (runner="beam") as an Apache Beam pipeline run with `beam_options`."""
  if tokenizer is None:
    tokenizer = load_tokenizer(config.data.tokenizer)
  config = resolve_lengths(resolve_vocab(config, tokenizer))
  check_objective(config, tokenizer)
  order = order_spec(config, tokenizer)
  manifest = prepare.ensure_prepared(
      cache_root(config), config.data.corpus, tokenizer, block_length(config),
      validation_fraction=config.data.validation_fraction, text_field=config.data.text_field,
      pack=pack_spec(config),
      remote_root=config.data.cache_dir if storage.is_remote(config.data.cache_dir) else None,
      separated=_objective(config).separated_blocks, order=order,
      workers=prepare_workers(config), runner=runner, beam_options=beam_options)
  return config, tokenizer, manifest


def build(config: Config, tokenizer: Tokenizer | None = None) -> RunData:
  """Everything the loop needs from the data side, for this process's rows."""
  config, tokenizer, manifest = prepare_for(config, tokenizer)
  warning = data_warning(config, tokenizer, manifest)
  if warning and jax.process_index() == 0:
    print(warning, file=sys.stderr)
  objective = make_objective(config, tokenizer)
  # Blocks mode: the objective builds whole rows itself (BART's wraps make_pack_row).
  pack_row = (make_pack_row(config, tokenizer.vocab_info()) if config.data.pack_documents
              else None)
  record = _objective(config)
  second_half = (make_objective(config, tokenizer, reverse=True)
                 if record.reversed_second_half and record.reversed_second_half(config) else None)
  common = {"objective": objective, "pack_row": pack_row, "second_half_objective": second_half,
            "streams": bool(record.streams and record.streams(config)),
            "global_batch_size": config.train.batch_size,
            "seed": config.train.seed, "process_index": jax.process_index(),
            "process_count": jax.process_count(),
            "worker_threads": config.data.worker_threads, "prefetch": config.data.prefetch}
  train = pipeline.make_iterator(manifest.directory, "train", shuffle=True, **common)

  def make_eval(split: str = "validation"):
    """One pass over `split` in order (`pretrain eval --split train` measures the gap)."""
    return pipeline.make_iterator(manifest.directory, split, shuffle=False, num_epochs=1,
                                  **common)

  baseline = most_frequent_token(manifest, tokenizer)
  return RunData(config, tokenizer, manifest,
                 DataHooks(train=train, make_eval=make_eval, baseline_token=baseline))
