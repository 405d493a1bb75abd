"""The run configuration's schema: typed, frozen, nested sections with their defaults.

Loading (YAML presets, overrides, type checks) is in `t5x_like.config`, cross-field checks in
`t5x_like.config_validation`; `t5x_like.config` is the public surface of all three.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any


class ConfigError(ValueError):
  """A configuration value or key is wrong; the message names it and what was expected."""


def _choices(*values: str) -> dict[str, Any]:
  return {"choices": values}


def _registered(kind: str) -> dict[str, Any]:
  """A name looked up in a registry (`t5x_like.families` or `t5x_like.objectives`)."""
  return {"registry": kind}


def registry_names(kind: str) -> tuple[str, ...]:
  """The names registered in `t5x_like.<kind>` (looked up at use: the registries import the
  config)."""
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
