"""Prefix language modelling on a decoder (T5's `prefix_lm`) as a registered objective: a
uniform random split per example, bidirectional attention over the prefix, loss on the rest."""

from __future__ import annotations

import dataclasses
import functools

from t5x_like import objectives
from t5x_like.objectives import causal_lm
from t5x_like.training import tasks


@dataclasses.dataclass(frozen=True)
class PrefixLMConfig(causal_lm.CausalLMConfig):
  """As causal_lm's section; the split point is drawn uniformly per example."""


OBJECTIVE = objectives.register(objectives.Objective(
    name="prefix_lm",
    config=PrefixLMConfig,
    families=("llama", "mpt"),
    task=functools.partial(tasks.DecoderLMTask, prefix=True),
    block_length=causal_lm.block_length,
    make_example=functools.partial(causal_lm.make_example, prefix=True),
    pack_spec=functools.partial(causal_lm.pack_spec, key="prefix_lm"),
    pack_row=functools.partial(causal_lm.pack_row, prefix=True),
    separated_blocks=True,
    special_roles=("eos",),
    check=causal_lm.check_bos,
))
