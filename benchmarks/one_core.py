"""One-core setup and timing shared by the objective benchmarks.

Importing this module sets the BLAS/OpenMP thread counts to 1: thread pools are sized when
numpy (or torch) is imported, so import it before them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "RAYON_NUM_THREADS"):
  os.environ[_var] = "1"

T = TypeVar("T")


def pin_to_one_core() -> None:
  """Restricts this process to its lowest-numbered allowed CPU (where the OS supports it)."""
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def time_runs(fn: Callable[[], T], repeats: int) -> tuple[list[float], T]:
  """Wall seconds of `fn` for each of `repeats` runs after one warm-up run, and its result."""
  result = fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - start)
  return times, result
