"""A mixture of objectives over one prepared block cache, as pure NumPy (docs/objectives.md,
"Mixtures of objectives and UL2's mixture of denoisers").

Each record is made by exactly one member, drawn by rate from the record's own generator
(seeded from (seed, epoch, index) by the pipeline), so a record gets the same member and the
same noise on any host count, before or after a restart, and (usually) another member in the
next epoch.

The cache holds blocks of the longest raw length any member needs (UL2 at inputs 512: X4's
1006 tokens). A member that needs fewer tokens takes a window of its own length at a uniform
offset inside the block, drawn from the same generator after the member. A prefix would be
simpler, but then the tail of every block (tokens 908..1005 at 512) would only ever be read by
the one longest member; with a random window every token of the block can reach every member.
The tokens outside the window are not used by that record in that epoch (at UL2's uniform rates
30% of the cache per epoch): the price of one cache for all members instead of one per member.

Generator order per record: one uniform for the member, one integer for the window offset
(only when the member is shorter than the block), then whatever the member draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

# (window of raw tokens, generator) -> one example (a dict of int32 arrays).
MakeExample = Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Member:
  """One member: its rate (any positive weight; normalised over the mixture), the raw tokens
  it reads per record, and its example maker."""
  rate: float
  raw_length: int
  make_example: MakeExample


def probabilities(rates: Sequence[float]) -> np.ndarray:
  """The rates normalised to sum to one (each must be positive and finite)."""
  r = np.asarray(rates, np.float64)
  if r.ndim != 1 or r.size == 0:
    raise ValueError("a mixture needs at least one member")
  if not np.all(np.isfinite(r) & (r > 0)):
    raise ValueError(f"mixture rates must be positive and finite, got {r.tolist()}")
  return r / r.sum()


def draw_member(rng: np.random.Generator, cumulative: np.ndarray) -> int:
  """Member index for one record: the first whose cumulative probability exceeds a uniform.

  Args:
    rng: the record's generator (one float64 drawn).
    cumulative: float64[M], the running sum of `probabilities`, last entry ~1.
  """
  u = rng.random()
  return min(int(np.searchsorted(cumulative, u, side="right")), len(cumulative) - 1)


def window(block: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
  """`length` tokens of `block` at a uniform offset in [0, len(block) - length] (the whole
  block, with no draw, when it is not longer)."""
  if length >= len(block):
    return block
  start = int(rng.integers(len(block) - length + 1))
  return block[start:start + length]


def make_mixture(members: Sequence[Member]) -> Callable[[np.ndarray, np.random.Generator],
                                                         tuple[int, dict[str, np.ndarray]]]:
  """(block, generator) -> (member index, the member's example of its window of the block).

  The block must hold at least the longest member's raw length (`block_length`).
  """
  cumulative = np.cumsum(probabilities([m.rate for m in members]))
  members = tuple(members)

  def mixture_example(block: np.ndarray, rng: np.random.Generator
                      ) -> tuple[int, dict[str, np.ndarray]]:
    k = draw_member(rng, cumulative)
    member = members[k]
    return k, member.make_example(window(block, member.raw_length, rng), rng)
  return mixture_example


def block_length(members: Sequence[Member]) -> int:
  """Raw tokens per prepared block: the longest member's."""
  return max(m.raw_length for m in members)
