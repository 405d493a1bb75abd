"""Stopping at a step boundary when the VM is being taken away (SIGTERM)."""

from __future__ import annotations

import signal
import threading
import typing
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionWatch:
  """Stop at a step boundary when the VM is being taken away (SIGTERM on a spot / preemptible
  VM, ~30 s before it goes).

  One process: a SIGTERM handler sets a flag the loop reads after each step. Several
  processes: every host must stop at the same step, so the loop asks JAX's preemption sync
  point (`multihost_utils.reached_preemption_sync_point`, which catches SIGTERM itself on
  TPU pods); where that service is unavailable the hosts' flags are combined at log steps.
  """

  def __init__(self, log_every: int):
    self.requested = False
    self._log_every = log_every
    self._previous: Any = None
    self._multi = jax.process_count() > 1
    self._sync_point = self._multi

  def __enter__(self) -> typing.Self:
    # Python signal handlers can only be set from the main thread; with several processes
    # JAX's preemption notifier owns SIGTERM.
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc: object) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _handle(self, signum: int, frame: object) -> None:
    del signum, frame
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if not self._multi:
      return self.requested
    if self._sync_point:
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # no preemption service (e.g. CPU): combine the flags
        self._sync_point = False
    if step % self._log_every:
      return False
    flags = multihost_utils.process_allgather(np.array(self.requested))
    return bool(np.any(flags))


__all__ = ["PreemptionWatch"]
