"""Glue between `data_pipelines` (NumPy + grain) and the training loop (JAX).

Resolves the tokenizer and vocabulary size, prepares (or reuses) the block cache for the
objective's block length, and builds the resumable train iterator and the eval factory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax
import numpy as np

from data_pipelines import pipeline, prepare
from data_pipelines.objectives import mlm
from data_pipelines.tokenizer import Tokenizer, load_tokenizer
from t5x_like.config import Config, ConfigError, max_predictions, replace
from t5x_like.training.loop import DataHooks


def cache_root(config: Config) -> str:
  if config.data.cache_dir:
    return os.path.abspath(os.path.expanduser(config.data.cache_dir))
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "t5x_like", "data")


def resolve_vocab(config: Config, tokenizer: Tokenizer) -> Config:
  """Fills model.vocab_size from the tokenizer, or refuses a mismatch."""
  size = tokenizer.vocab_size
  if config.model.vocab_size == 0:
    return replace(config, model={"vocab_size": size})
  if config.model.vocab_size != size:
    raise ConfigError(f"model.vocab_size is {config.model.vocab_size} but tokenizer "
                      f"{tokenizer.model_path} has {size} ids (sentinels included); set "
                      f"model.vocab_size={size} or 0 to take the tokenizer's")
  return config


def block_length(config: Config) -> int:
  """Raw tokens per record for the objective (MLM adds [CLS] and [SEP])."""
  if config.objective.name == "mlm":
    return config.data.seq_len - 2
  raise ConfigError(f"objective.name {config.objective.name!r} has no data pipeline yet")


def make_objective(config: Config, tokenizer: Tokenizer,
                   ) -> Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]:
  o = config.objective
  params = mlm.MLMParams(max_predictions=max_predictions(config), mask_prob=o.mask_prob,
                         mask_token_frac=o.mask_token_frac,
                         random_token_frac=o.random_token_frac, whole_word=o.whole_word)
  vocab = tokenizer.vocab_info()
  return lambda block, rng: mlm.make_example(block, rng, params, vocab)


def most_frequent_token(manifest: prepare.Manifest, tokenizer: Tokenizer,
                        max_blocks: int = 2000) -> int:
  """The most frequent non-special id of the training split (from up to `max_blocks` blocks
  spread evenly): the unigram baseline predicts it at every masked position."""
  n = pipeline.num_records(manifest.directory, "train")
  picks = np.unique(np.linspace(0, n - 1, min(n, max_blocks)).astype(np.int64))
  counts = np.zeros(tokenizer.vocab_size, np.int64)
  for i in picks:
    counts += np.bincount(pipeline.read_block(manifest.directory, "train", int(i)),
                          minlength=tokenizer.vocab_size)
  counts[tokenizer.vocab_info().is_special] = 0
  return int(np.argmax(counts))


@dataclasses.dataclass
class RunData:
  config: Config  # with model.vocab_size resolved
  tokenizer: Tokenizer
  manifest: prepare.Manifest
  hooks: DataHooks


def prepare_for(config: Config, tokenizer: Tokenizer | None = None,
                ) -> tuple[Config, Tokenizer, prepare.Manifest]:
  """Resolves the vocabulary and prepares (or reuses) the block cache."""
  if tokenizer is None:
    tokenizer = load_tokenizer(config.data.tokenizer)
  config = resolve_vocab(config, tokenizer)
  manifest = prepare.ensure_prepared(
      cache_root(config), config.data.corpus, tokenizer, block_length(config),
      validation_fraction=config.data.validation_fraction, text_field=config.data.text_field)
  return config, tokenizer, manifest


def build(config: Config, tokenizer: Tokenizer | None = None) -> RunData:
  """Everything the loop needs from the data side, for this process's rows."""
  config, tokenizer, manifest = prepare_for(config, tokenizer)
  objective = make_objective(config, tokenizer)
  common = {"objective": objective, "global_batch_size": config.train.batch_size,
            "seed": config.train.seed, "process_index": jax.process_index(),
            "process_count": jax.process_count(),
            "worker_threads": config.data.worker_threads, "prefetch": config.data.prefetch}
  train = pipeline.make_iterator(manifest.directory, "train", shuffle=True, **common)

  def make_eval():
    return pipeline.make_iterator(manifest.directory, "validation", shuffle=False, num_epochs=1,
                                  **common)

  baseline = most_frequent_token(manifest, tokenizer)
  return RunData(config, tokenizer, manifest,
                 DataHooks(train=train, make_eval=make_eval, baseline_token=baseline))
