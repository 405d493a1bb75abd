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

from data_pipelines import packing, pipeline, prepare, storage
from data_pipelines import vocab as vocab_lib
from data_pipelines.objectives import denoising, mlm, permutation_lm, span_corruption
from data_pipelines.tokenizer import AnyTokenizer as Tokenizer
from data_pipelines.tokenizer import load_tokenizer
from t5x_like.config import Config, ConfigError, max_predictions, replace
from t5x_like.training.loop import DataHooks


def cache_root(config: Config) -> str:
  """The local cache directory (for a gs:// data.cache_dir, its local mirror)."""
  if config.data.cache_dir:
    return storage.local_mirror(config.data.cache_dir, "data")
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "t5x_like", "data")


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


def span_params(config: Config) -> span_corruption.SpanCorruptionParams:
  o = config.objective
  return span_corruption.SpanCorruptionParams(noise_density=o.noise_density,
                                              mean_noise_span_length=o.mean_noise_span_length,
                                              random_roll=o.random_roll)


def denoising_params(config: Config) -> denoising.DenoisingParams:
  o = config.objective
  return denoising.DenoisingParams(
      text_infilling=o.text_infilling, token_masking=o.token_masking,
      token_deletion=o.token_deletion, permute_sentences=o.permute_sentences, rotate=o.rotate,
      insert=o.insert, random_ratio=o.random_ratio, poisson_lambda=o.poisson_lambda)


def permutation_params(config: Config) -> permutation_lm.PermutationLMParams:
  o = config.objective
  return permutation_lm.PermutationLMParams(
      num_predict=o.num_predict, perm_size=o.perm_size, max_span=o.max_span,
      mask_alpha=o.mask_alpha, mask_beta=o.mask_beta, reuse_len=config.model.reuse_len)


def _denoising_block(config: Config) -> int:
  """Raw tokens per block for BART: the most whose noised source (<s> block </s> plus the
  insertion noise) always fits in data.seq_len."""
  p = denoising_params(config)
  raw = config.data.seq_len - 2
  while raw > 0 and denoising.max_source_length(raw + 2, p) > config.data.seq_len:
    raw -= 1
  if raw < denoising.min_block_length(p):
    raise ConfigError(f"data.seq_len ({config.data.seq_len}) is too short for the denoising "
                      f"noise: it leaves {raw} raw tokens per block, the noise needs >= "
                      f"{denoising.min_block_length(p)}")
  return raw


def _span_helper(config: Config) -> tuple[int, int]:
  """(raw block tokens, targets) for span corruption with encoder inputs of data.seq_len: T5's
  random_spans_helper blocks, with exact targets (span_corruption.block_lengths)."""
  p = span_params(config)
  raw, targets = span_corruption.block_lengths(config.data.seq_len, p)
  inputs = span_corruption.output_lengths(raw, p)[0]
  # Concatenated blocks make rows of exactly seq_len inputs (there is no encoder padding).
  if not config.data.pack_documents and inputs != config.data.seq_len:
    raise ConfigError(f"no block length corrupts to exactly data.seq_len "
                      f"({config.data.seq_len}) inputs at objective.noise_density "
                      f"{p.noise_density}, mean_noise_span_length {p.mean_noise_span_length} "
                      f"(the nearest gives {inputs}); change data.seq_len or set "
                      f"data.pack_documents=true")
  return raw, targets


def block_length(config: Config) -> int:
  """Raw tokens per block for the objective: MLM adds [CLS] and [SEP]; span corruption
  cuts the expanded length that corrupts to exactly data.seq_len inputs (512 -> 568);
  denoising adds <s> and </s> (and leaves room for inserted tokens)."""
  if config.objective.name == "mlm":
    return config.data.seq_len - 2
  if config.objective.name == "span_corruption":
    return _span_helper(config)[0]
  if config.objective.name == "denoising":
    return _denoising_block(config)
  if config.objective.name == "permutation_lm":
    # A <sep> B <sep> <cls>; with memory, rows are read from consecutive reuse_len blocks
    return config.model.reuse_len or config.data.seq_len - 3
  raise ConfigError(f"objective.name {config.objective.name!r} has no data pipeline")


def resolve_lengths(config: Config) -> Config:
  """Fills data.target_len from the objective, or refuses one too short for it."""
  if config.objective.name in ("mlm", "permutation_lm"):
    if config.data.target_len:
      raise ConfigError(f"data.target_len ({config.data.target_len}) applies only to "
                        f"encoder-decoder objectives; objective.name is "
                        f"{config.objective.name}")
    return config
  if config.objective.name == "denoising":
    targets, what = _denoising_block(config) + 2, "clean <s> block </s> targets denoising"
  else:
    targets, what = _span_helper(config)[1], "targets span corruption"
  if config.data.target_len == 0:
    return replace(config, data={"target_len": targets})
  if config.data.target_len < targets:
    raise ConfigError(f"data.target_len ({config.data.target_len}) is shorter than the "
                      f"{targets} {what} makes from inputs of "
                      f"{config.data.seq_len}; set it to 0 (derive) or >= {targets}")
  return config


def pack_spec(config: Config) -> packing.PackSpec | None:
  """How documents are packed into rows at prepare time (None: concatenated blocks)."""
  if not config.data.pack_documents:
    return None
  d = config.data
  if config.objective.name == "mlm":
    return packing.PackSpec(key="mlm", lengths=lambda r: (r + 2,), capacity=(d.seq_len,))
  if config.objective.name == "denoising":
    p = denoising_params(config)
    # Sources have random lengths: a chunk is budgeted at its largest possible source.
    return packing.PackSpec(
        key=f"denoising({p.insert!r})",
        lengths=lambda r: (denoising.max_source_length(r + 2, p), r + 2),
        capacity=(d.seq_len, d.target_len), min_length=max(2, denoising.min_block_length(p)))
  p = span_params(config)
  return packing.PackSpec(
      key=f"span_corruption({p.noise_density!r},{p.mean_noise_span_length!r})",
      lengths=lambda r: span_corruption.output_lengths(r, p),
      capacity=(d.seq_len, d.target_len))


def make_objective(config: Config, tokenizer: Tokenizer, reverse: bool = False,
                   ) -> Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]:
  """(raw block, generator) -> one example; fixed-shape rows unless documents are packed.

  reverse: XLNet's reversed-text rows (bi_data's second half of the batch).
  """
  o, d = config.objective, config.data
  vocab = tokenizer.vocab_info()
  if o.name == "mlm":
    params = mlm.MLMParams(max_predictions=max_predictions(config), mask_prob=o.mask_prob,
                           mask_token_frac=o.mask_token_frac,
                           random_token_frac=o.random_token_frac, whole_word=o.whole_word)
    return lambda block, rng: mlm.make_example(block, rng, params, vocab)
  if o.name == "permutation_lm":
    xl_params = permutation_params(config)
    if not config.model.reuse_len:
      return lambda block, rng: permutation_lm.make_example(block, rng, xl_params, vocab,
                                                            reverse=reverse)
    # Memory: the stream pipeline gives two consecutive reuse_len-token blocks; a row holds
    # the text from the first (reversed rows: from the end of the second) onwards.
    text = d.seq_len - 3
    cut = (lambda two: two[-text:]) if reverse else (lambda two: two[:text])
    return lambda two, rng: permutation_lm.make_example(cut(two), rng, xl_params, vocab,
                                                        reverse=reverse)
  if o.name == "denoising":
    bart_params = denoising_params(config)
    make = lambda block, rng: denoising.make_example(block, rng, bart_params, vocab)
    if d.pack_documents:
      return make
    # One block per row, still a (one-segment) packed row: the source length is random.
    pack_row = make_pack_row(config, vocab)
    return lambda block, rng: pack_row([make(block, rng)])
  params = span_params(config)
  if d.pack_documents:
    return lambda block, rng: span_corruption.make_example(block, rng, params, vocab)

  def full_block(block: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ex = span_corruption.make_example(block, rng, params, vocab)
    # A full block corrupts to exactly seq_len inputs (block_lengths); targets may be
    # padded up to a longer configured data.target_len.
    if len(ex["input_ids"]) != d.seq_len or len(ex["labels"]) > d.target_len:
      raise ValueError(f"span corruption of a {len(block)}-token block gave "
                       f"{len(ex['input_ids'])} inputs / {len(ex['labels'])} targets, "
                       f"expected {d.seq_len} / <= {d.target_len}")
    labels = np.full(d.target_len, mlm.IGNORE_INDEX, np.int32)
    labels[: len(ex["labels"])] = ex["labels"]
    # One segment; the target padding (if any) gets decoder input 0 and is not scored.
    real = labels != mlm.IGNORE_INDEX
    decoder_input_ids = packing.shift_right_per_segment(np.where(real, labels, vocab.pad_id),
                                                        real.astype(np.int32), vocab.pad_id)
    return {"input_ids": ex["input_ids"], "decoder_input_ids": decoder_input_ids,
            "labels": labels}
  return full_block


def make_pack_row(config: Config, vocab: vocab_lib.VocabInfo | None = None,
                  ) -> Callable[[list[dict[str, np.ndarray]]], dict[str, np.ndarray]] | None:
  """The examples of one prepared row -> the row's fixed-shape features: packed documents,
  and every BART row (one block still makes a one-segment row: its source length is random).

  vocab: the tokenizer's ids for padding and the decoder start (None: the fixed ids of
  data_pipelines.vocab).
  """
  if not config.data.pack_documents and config.objective.name != "denoising":
    return None
  if vocab is None:
    vocab = vocab_lib.VocabInfo(0, np.zeros(0, bool), np.zeros(0, bool), np.zeros(0, np.int32))
  d = config.data
  if config.objective.name == "mlm":
    lengths = dict.fromkeys(("input_ids", "attention_mask", "token_type_ids", "labels"),
                            d.seq_len)
    pad = {"input_ids": vocab.pad_id}

    def mlm_row(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
      row = packing.pack_one(examples, lengths, pad_values=pad)
      row["dropped_by_objective"] = np.int32(sum(int(ex["dropped_by_objective"])
                                                 for ex in examples))
      return row
    return mlm_row

  def seq2seq_row(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    row = packing.pack_one(examples, {"input_ids": d.seq_len, "labels": d.target_len},
                           groups={"input_ids": "", "labels": "decoder_"},
                           pad_values={"input_ids": vocab.pad_id})
    targets = np.where(row["labels"] == mlm.IGNORE_INDEX, vocab.pad_id, row["labels"])
    row["decoder_input_ids"] = packing.shift_right_per_segment(targets,
                                                               row["decoder_segment_ids"],
                                                               start_id)
    return row
  # fairseq / HF BART start the decoder with </s>; T5 with pad.
  start_id = vocab.eos_id if config.objective.name == "denoising" else vocab.pad_id
  return seq2seq_row


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


def check_sentinels(config: Config, tokenizer: Tokenizer) -> None:
  """Span corruption needs one sentinel id per noise span of a block."""
  if config.objective.name != "span_corruption":
    return
  raw = block_length(config)
  _, spans = span_corruption.span_counts(raw, span_params(config))
  if tokenizer.num_sentinels < spans:
    raise ConfigError(f"vocab without room for the sentinels: span corruption of {raw}-token "
                      f"blocks makes {spans} noise spans, but tokenizer {tokenizer.model_path} "
                      f"has {tokenizer.num_sentinels} sentinel ids (train one with more: "
                      f"pretrain tokenizer train --num-sentinels {spans})")


# Special tokens each objective writes into its rows (cls/bos and sep/eos stand in for each
# other: BERT has no <s>, T5 no [SEP]).
_OBJECTIVE_ROLES = {"mlm": ("cls", "sep", "mask"), "denoising": ("bos", "eos", "mask"),
                    "permutation_lm": ("cls", "sep"), "span_corruption": ("eos",)}


def check_special_tokens(config: Config, tokenizer: Tokenizer) -> None:
  """Refuses a tokenizer (a checkpoint's own) without a token the objective needs."""
  missing = tokenizer.missing_roles(_OBJECTIVE_ROLES.get(config.objective.name, ()))
  if missing:
    raise ConfigError(f"objective {config.objective.name} needs the special tokens "
                      f"{', '.join(missing)}, which tokenizer {tokenizer.model_path} does not "
                      f"have (named in its tokenizer_config.json / special_tokens_map.json as "
                      f"<role>_token, or [CLS]/<cls>, [SEP]/<sep>, [MASK]/<mask>, <s>, </s>)")


def sentence_boundary_report(config: Config, tokenizer: Tokenizer, manifest: prepare.Manifest,
                             max_blocks: int = 500) -> str | None:
  """A warning when sentence permutation is on but most blocks hold a single sentence.

  Sentence ends come from the tokenizer (pieces ending in . ! ? 。 ？ ！, and </s>); a corpus
  without them (e.g. one document per line without punctuation) trains, but permutation then
  leaves those blocks unchanged. Returns None when there is nothing to say.
  """
  if config.objective.name != "denoising" or config.objective.permute_sentences == 0:
    return None
  vocab = tokenizer.vocab_info()
  n = pipeline.num_records(manifest.directory, "train")
  picks = np.unique(np.linspace(0, n - 1, min(n, max_blocks)).astype(np.int64))
  counts = [denoising.count_sentences(segment, vocab)
            for i in picks for segment in pipeline.read_segments(manifest.directory, "train",
                                                                 int(i))]
  single = sum(c < 2 for c in counts)
  if single * 2 <= len(counts):
    return None
  return (f"warning: objective.permute_sentences={config.objective.permute_sentences} but "
          f"{single} of {len(counts)} sampled blocks hold fewer than 2 sentences (no sentence "
          f"end among the tokenizer's pieces ending in . ! ? 。 ？ ！); those blocks are not "
          f"permuted. Set objective.permute_sentences=0 to silence this.")


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
  config = resolve_lengths(resolve_vocab(config, tokenizer))
  check_sentinels(config, tokenizer)
  check_special_tokens(config, tokenizer)
  manifest = prepare.ensure_prepared(
      cache_root(config), config.data.corpus, tokenizer, block_length(config),
      validation_fraction=config.data.validation_fraction, text_field=config.data.text_field,
      pack=pack_spec(config),
      remote_root=config.data.cache_dir if storage.is_remote(config.data.cache_dir) else None,
      # T5 concatenates documents with nothing between them (reduce_concat_tokens): a separator
      # EOS inside a block would be noised into the targets like any token.
      separated=config.objective.name != "span_corruption")
  return config, tokenizer, manifest


def build(config: Config, tokenizer: Tokenizer | None = None) -> RunData:
  """Everything the loop needs from the data side, for this process's rows."""
  config, tokenizer, manifest = prepare_for(config, tokenizer)
  warning = sentence_boundary_report(config, tokenizer, manifest)
  if warning and jax.process_index() == 0:
    print(warning, file=sys.stderr)
  objective = make_objective(config, tokenizer)
  # Blocks mode: the objective builds whole rows itself (BART's wraps make_pack_row).
  pack_row = (make_pack_row(config, tokenizer.vocab_info()) if config.data.pack_documents
              else None)
  second_half = make_objective(config, tokenizer, reverse=True) if config.model.bi_data else None
  common = {"objective": objective, "pack_row": pack_row,
            "second_half_objective": second_half, "streams": config.model.mem_len > 0,
            "global_batch_size": config.train.batch_size,
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
