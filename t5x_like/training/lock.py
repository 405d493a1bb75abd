"""One run per workdir: an exclusive flock on <workdir>/.lock."""

from __future__ import annotations

import fcntl
import os
import socket
import time
import typing
from typing import Any

from data_pipelines import storage
from t5x_like.config import ConfigError
from t5x_like.distributed import is_main_process


class WorkdirLock:
  """An exclusive lock on <workdir>/.lock for the run's lifetime, so two runs never write one
  workdir. flock: released by the OS when the process ends, even by SIGKILL (no stale lock).
  Process 0 takes it for the whole job (the hosts of one job share the workdir). Re-entrant
  within a process (the CLI takes it before data preparation, the Trainer again)."""

  _held: typing.ClassVar[dict[str, int]] = {}  # path -> nesting depth in this process

  def __init__(self, workdir: str, create: bool = True):
    # A gs:// workdir is locked in its local mirror: against a second run on this machine
    # only (an object store has no flock; docs/tpu.md).
    self.path = os.path.join(storage.local_mirror(workdir), ".lock")
    self._create = create  # False: a workdir that does not exist yet is not locked (no-op)
    self._file: Any = None
    self._nested = False

  def __enter__(self) -> typing.Self:
    if not is_main_process() or (not self._create and
                                 not os.path.isdir(os.path.dirname(self.path))):
      return self
    if self.path in WorkdirLock._held:  # this process holds it already (CLI, then Trainer)
      WorkdirLock._held[self.path] += 1
      self._nested = True
      return self
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    f = open(self.path, "a+", encoding="utf-8")  # held until __exit__
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise ConfigError(f"workdir {os.path.dirname(self.path)} is in use by another run "
                        f"({holder}); wait for it to end or stop it") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    self._file = f
    WorkdirLock._held[self.path] = 1
    return self

  def __exit__(self, *exc: object) -> None:
    if self._nested:
      WorkdirLock._held[self.path] -= 1
      return
    if self._file is not None:
      del WorkdirLock._held[self.path]
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None


__all__ = ["WorkdirLock"]
