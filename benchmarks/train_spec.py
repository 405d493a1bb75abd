"""What a train benchmark says about its model family: a `TrainSpec`, and helpers for writing one.

The harness (`benchmarks.train_harness`) owns everything the train benchmarks share; a family's
benchmark module is one `TrainSpec` plus the few functions only it can know: which preset and
shape overrides, how its batches are made from its objective, which row fields describe a
shape, and how the HF peer model, its optimiser and its inputs are built. Torch and
transformers are imported lazily (inside the functions) so that importing a spec stays cheap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from t5x_like.config import Config, OptimConfig

Batch = dict[str, np.ndarray]
# (config, vocab, count, seed) -> `count` int batches for both sides.
MakeBatches = Callable[[Config, Any, int, int], list[Batch]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSpec:
  """One model family's train benchmark: ours vs its HF peer, on the same batches.

  Every field without a default must be given (a missing one is a `TypeError` naming it);
  `__post_init__` refuses a spec whose fields do not fit together.
  """
  family: str  # the console title's first word: the model family's name
  description: str  # the command line's --help line (the module docstring's first line)
  preset: str  # the config preset every shape starts from
  shapes: Mapping[str, tuple[str, ...]]  # shape name -> config overrides on the preset
  default_shapes: str  # comma-separated, the --shapes default
  overrides: tuple[str, ...]  # family settings on every shape (dropout 0, objective, optimiser)
  make_batches: MakeBatches
  # (config, batches) -> the report row's family fields after "shape" (and "dtype"), in order.
  row_fields: Callable[[Config, list[Batch]], dict[str, Any]]
  hf_model: Callable[[Config], Any]  # the peer `torch.nn.Module`, after torch.manual_seed(seed)
  hf_optimizer: Callable[[Any, Config], Any]  # (peer model, config) -> torch optimiser
  hf_inputs: Callable[[Batch], dict[str, Any]]  # one batch -> the peer's keyword arguments
  tokens_per_step: Callable[[Config], int] = lambda config: row_tokens(config)
  vocab_options: Mapping[str, int] = dataclasses.field(default_factory=dict)  # VocabInfo.synthetic
  # Offer --dtype bfloat16 (ours model.dtype=bfloat16, the peer under torch.autocast); the rows
  # then carry "dtype" and the config always sets model.dtype.
  dtypes: bool = False
  # torch.set_flush_denormal(True) before measuring, as XLA's CPU backend flushes float32
  # denormals; x86 handles them in microcode (~100x slower), which optimiser states of tiny
  # values reach (Adafactor's eps 1e-30, Adam's second moments).
  flush_denormals: bool = False
  resolve: Callable[[Config], Config] = lambda config: config  # derived lengths, after loading
  # Extra console columns after tokens/step: (header, row key, format spec).
  console_columns: tuple[tuple[str, str, str], ...] = ()

  def __post_init__(self) -> None:
    where = f"TrainSpec {self.family!r}"
    if not self.shapes:
      raise ValueError(f"{where}: no shapes")
    defaults = [s.strip() for s in self.default_shapes.split(",") if s.strip()]
    unknown = [s for s in defaults if s not in self.shapes]
    if not defaults or unknown:
      raise ValueError(f"{where}: default_shapes {self.default_shapes!r} must name shapes "
                       f"from {', '.join(self.shapes)}")
    bad = [o for o in (*self.overrides, *(o for s in self.shapes.values() for o in s))
           if "=" not in o]
    if bad:
      raise ValueError(f"{where}: overrides must be key=value, not {bad}")
    for name in ("make_batches", "row_fields", "hf_model", "hf_optimizer", "hf_inputs",
                 "tokens_per_step", "resolve"):
      if not callable(getattr(self, name)):
        raise TypeError(f"{where}: {name} must be callable, not "
                        f"{type(getattr(self, name)).__name__}")


def row_tokens(config: Config) -> int:
  """Tokens per step of a one-stream row model: B x L."""
  return config.train.batch_size * config.data.seq_len


def source_target_tokens(config: Config) -> int:
  """Tokens per step of an encoder-decoder: B x (source + target)."""
  return config.train.batch_size * (config.data.seq_len + config.data.target_len)


def encoder_row_fields(config: Config, batches: list[Batch], *model_fields: str,
                       **extra: Any) -> dict[str, Any]:
  """The report row of an encoder shape with MLM-style labels (BERT, ELECTRA, ALBERT): the
  shape, the named extra `model` fields, `extra`, and the predictions per batch."""
  m = config.model
  return {"batch_size": config.train.batch_size, "seq_len": config.data.seq_len,
          "hidden_size": m.hidden_size, "num_layers": m.num_layers, "num_heads": m.num_heads,
          "intermediate_size": m.intermediate_size,
          **{name: getattr(m, name) for name in model_fields}, "vocab_size": m.vocab_size,
          **extra,
          "predicted_per_batch": float(np.mean([np.sum(x["labels"] != -100) for x in batches])),
          "dropout": m.dropout_rate}


def stack_rows(rows: list[Batch]) -> Batch:
  """One batch from per-example dicts of equal-shape arrays."""
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def adamw(model: Any, optim: OptimConfig, no_decay: Callable[[str], bool]) -> Any:
  """`torch.optim.AdamW` with our lr, betas, eps and weight decay, none on the parameters whose
  names `no_decay` accepts (HF Trainer's convention and ours: biases and LayerNorm weights)."""
  import torch

  decay, undecayed = [], []
  for name, p in model.named_parameters():
    (undecayed if no_decay(name) else decay).append(p)
  return torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                            {"params": undecayed, "weight_decay": 0.0}],
                           lr=optim.learning_rate, betas=(optim.b1, optim.b2), eps=optim.eps)


def torch_inputs(batch: Batch, ints: tuple[str, ...] | None = None,
                 floats: tuple[str, ...] = ()) -> dict[str, Any]:
  """Torch tensors of `batch`: the `ints` keys (default: all but `floats`) as int64, as
  embedding lookups and HF's losses want, the `floats` keys as they are."""
  import torch

  ints = tuple(k for k in batch if k not in floats) if ints is None else ints
  return {**{k: torch.from_numpy(batch[k].astype(np.int64)) for k in ints},
          **{k: torch.from_numpy(batch[k]) for k in floats}}
