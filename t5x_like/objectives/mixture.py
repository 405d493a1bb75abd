"""A mixture of objectives in one run (seqio mixtures; UL2's mixture of denoisers) as a
registered objective.

  objective:
    name: mixture
    paradigm_tokens: true
    mixture:
      - {name: span_corruption, label: R1, paradigm: "[NLU]", rate: 1, mean_noise_span_length: 3}
      - {name: seq2seq_prefix_lm, label: S, paradigm: "[S2S]", rate: 1}

Each member is a registered objective with its own keys, plus `rate` (a positive weight),
`label` (its name in the metrics; default `<index>_<name>`) and `paradigm` (a token the
tokenizer reserves, prepended to the member's inputs while `paradigm_tokens` is on). Every row
is made by one member drawn by rate from the row's generator (`data_pipelines.objectives.
mixture`), as a one-segment packed row, so members of different lengths share one row shape;
`mixture_member` [B] says which member made each row (evaluation reports each member).

Members must train the run's family with one task (e.g. span corruption and the seq2seq
prefix LM on T5). A member sees the run config with its own section as `objective`, data.seq_len
less one when it gets a paradigm token, and data.pack_documents on (its raw, unpadded example).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from data_pipelines.objectives import mixture as mixture_lib
from data_pipelines.objectives import ul2
from t5x_like import objectives
from t5x_like.config import ConfigError
from t5x_like.config_schema import ObjectiveConfig, Polymorphic
from t5x_like.config_validation import require

NAME = "mixture"
MEMBER_FEATURE = "mixture_member"
# Member keys that mean something only for the whole run.
_RUN_KEYS = ("z_loss", "loss_normalizing_factor")


@functools.cache
def member_class(name: str) -> type:
  """The record of a member named `name`: the objective's own section plus rate, label and
  paradigm (one class per objective, so configs compare equal)."""
  base = objectives.get(name).config
  return dataclasses.make_dataclass(
      f"Mixture{base.__name__}",
      [("rate", float, dataclasses.field(default=1.0)),
       ("label", str, dataclasses.field(default="")),
       ("paradigm", str, dataclasses.field(default=""))],
      bases=(base,), frozen=True)


def _member_table() -> dict[str, type]:
  return {n: member_class(n) for n in objectives.names() if n != NAME}


@dataclasses.dataclass(frozen=True)
class MixtureConfig(ObjectiveConfig):
  """A list of member objectives with rates; see the module docstring."""
  mixture: tuple[ObjectiveConfig, ...] = dataclasses.field(
      default=(), metadata={"polymorphic": Polymorphic("name", table=_member_table)})
  # Prepend each member's paradigm token to its inputs (UL2's mode switching); off: none.
  paradigm_tokens: bool = True

  def check(self, config: Any) -> None:
    require(len(self.mixture) > 0, "objective.mixture is empty: list at least one member, "
            "e.g. objective.mixture=[{name: span_corruption, rate: 1}]")
    labels = set()
    for k, m in enumerate(self.mixture):
      where = f"objective.mixture.{k}"
      require(np.isfinite(m.rate) and m.rate > 0,
              f"{where}.rate must be positive, got {m.rate}")
      record = objectives.get(m.name)
      require(config.model.family in record.families,
              f"{where}: objective {m.name!r} does not train model.family "
              f"{config.model.family!r} (it trains {', '.join(record.families)})")
      require(record.pack_row is not None and not record.reversed_second_half
              and not record.streams,
              f"{where}: objective {m.name!r} cannot be a mixture member (it builds no "
              f"one-segment rows)")
      for key in _RUN_KEYS:
        require(getattr(m, key) == getattr(ObjectiveConfig, key),
                f"{where}.{key}: set objective.{key} for the whole mixture instead")
      require(not m.paradigm or m.paradigm.strip() == m.paradigm,
              f"{where}.paradigm {m.paradigm!r} has surrounding spaces")
      label = label_of(self, k)
      require(label not in labels, f"{where}.label {label!r} is used twice")
      labels.add(label)
      m.check(member_config(config, k))


def label_of(section: MixtureConfig, k: int) -> str:
  m = section.mixture[k]
  return m.label or f"{k}_{m.name}"


def labels(config: Any) -> tuple[str, ...]:
  return tuple(label_of(config.objective, k) for k in range(len(config.objective.mixture)))


def _has_token(config: Any, k: int) -> bool:
  return bool(config.objective.paradigm_tokens and config.objective.mixture[k].paradigm)


def member_config(config: Any, k: int) -> Any:
  """The run config as member k sees it (module docstring)."""
  d = config.data
  data = dataclasses.replace(d, seq_len=d.seq_len - int(_has_token(config, k)),
                             pack_documents=True)
  return dataclasses.replace(config, objective=config.objective.mixture[k], data=data)


def _rows_config(config: Any) -> Any:
  return dataclasses.replace(config, data=dataclasses.replace(config.data, pack_documents=True))


def _record(config: Any, k: int) -> objectives.Objective:
  return objectives.get(config.objective.mixture[k].name)


def _raw_length(config: Any, k: int) -> int:
  return _record(config, k).block_length(member_config(config, k))


def _target_length(config: Any, k: int) -> int:
  record = _record(config, k)
  return 0 if record.target_length is None else record.target_length(member_config(config, k))


def block_length(config: Any) -> int:
  """The longest raw length of any member: the cache holds blocks of it once."""
  return max(_raw_length(config, k) for k in range(len(config.objective.mixture)))


def target_length(config: Any) -> int:
  """The longest target any member makes (0 for single-stream members); a configured
  data.target_len shorter than a member's is refused naming that member."""
  longest = 0
  for k in range(len(config.objective.mixture)):
    need = _target_length(config, k)
    if config.data.target_len and config.data.target_len < need:
      m = config.objective.mixture[k]
      raise ConfigError(f"data.target_len ({config.data.target_len}) is too short for "
                        f"objective.mixture.{k} ({label_of(config.objective, k)}: {m.name}): "
                        f"it makes targets of up to {need} tokens from inputs of "
                        f"{member_config(config, k).data.seq_len}; set data.target_len=0 "
                        f"(derive) or >= {need}")
    longest = max(longest, need)
  return longest


def _make_example(config: Any, vocab: Any, reverse: bool = False) -> objectives.MakeExample:
  del reverse
  rows = _rows_config(config)
  members, builders = [], []
  for k, m in enumerate(config.objective.mixture):
    record, mc = _record(config, k), member_config(config, k)
    make = record.make_example(mc, vocab, False)
    if _has_token(config, k):
      token = ul2.paradigm_id(vocab, m.paradigm)
      make = functools.partial(_with_token, make, token)
    members.append(mixture_lib.Member(m.rate, record.block_length(mc), make))
    builders.append(record.pack_row(rows, vocab))
  draw = mixture_lib.make_mixture(members)

  def mixture_row(block: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    k, example = draw(block, rng)
    row = builders[k]([example])
    row[MEMBER_FEATURE] = np.int32(k)
    return row
  return mixture_row


def _with_token(make: objectives.MakeExample, token: int, block: np.ndarray,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
  return ul2.prepend(make(block, rng), token)


def _check(config: Any, tokenizer: Any) -> None:
  """Each member's own tokenizer check, and the paradigm tokens the tokenizer must reserve."""
  reserved = dict(tokenizer.vocab_info().paradigm_ids)
  first = _task_kind(config, 0)
  for k, m in enumerate(config.objective.mixture):
    where = f"objective.mixture.{k} ({label_of(config.objective, k)})"
    if _has_token(config, k) and m.paradigm not in reserved:
      raise ConfigError(f"{where}: paradigm token {m.paradigm} is not reserved by tokenizer "
                        f"{tokenizer.model_path} (it has {', '.join(reserved) or 'none'}); use "
                        f"data.tokenizer=bundled_ul2 or a tokenizer whose sidecar lists it, or "
                        f"set objective.paradigm_tokens=false")
    record = _record(config, k)
    if k and _task_kind(config, k) != first:
      raise ConfigError(f"{where}: objective {m.name!r} trains with another task than "
                        f"objective.mixture.0 ({config.objective.mixture[0].name!r}); a "
                        f"mixture's members share one task (one loss over one row layout)")
    missing = tokenizer.missing_roles(record.special_roles)
    if missing:
      raise ConfigError(f"{where}: objective {m.name} needs the special tokens "
                        f"{', '.join(missing)}, which tokenizer {tokenizer.model_path} lacks")
    if record.check is not None:
      try:
        record.check(member_config(config, k), tokenizer)
      except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _task_kind(config: Any, k: int) -> tuple[type, tuple[str, ...]]:
  """What must agree between members: the task class on packed rows and its features."""
  task = _record(config, k).task(_rows_config(dataclasses.replace(
      config, objective=config.objective.mixture[k])))
  return type(task), tuple(task.features)


class MixtureTask:
  """The members' task on packed rows, plus the `mixture_member` feature [B] that evaluation
  reads (`member_labels`); training ignores it."""

  def __init__(self, config: Any):
    self.inner = _record(config, 0).task(_rows_config(config))
    self.model = self.inner.model
    self.features = tuple(self.inner.features) + (MEMBER_FEATURE,)
    self.member_labels = labels(config)

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    return {**self.inner.dummy_batch(batch_size),
            MEMBER_FEATURE: np.zeros(batch_size, np.int32)}

  def init(self, rng: Any) -> Any:
    return self.inner.init(rng)

  def loss(self, params: Any, batch: dict[str, Any], rng: Any, deterministic: bool,
           **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    return self.inner.loss(params, batch, rng, deterministic, **kwargs)


def _families() -> tuple[str, ...]:
  """Every family some registered objective trains (the members' check narrows it)."""
  return tuple(sorted({f for o in objectives.OBJECTIVES if o.name != NAME for f in o.families}))


OBJECTIVE = objectives.register(objectives.Objective(
    name=NAME,
    config=MixtureConfig,
    families=_families(),
    task=MixtureTask,
    block_length=block_length,
    target_length=target_length,
    make_example=_make_example,
    packing_refused="a mixture row is one block made by one member (members cut their own "
                    "lengths from it)",
    # UL2 joins documents back to back (T5's reduce_concat_tokens) for every denoiser.
    separated_blocks=False,
    special_roles=("eos",),
    check=_check,
))
