"""A thin parent for a process of a multi-process job other than process 0.

Process 0 runs the job's coordination service. When it ends (killed, crashed, its host gone),
JAX's coordination client in every other process aborts that process from a C++ thread within
a second: SIGABRT, an absl `F...` line ("Terminating process because the JAX distributed
service detected fatal errors ... Failed to send RPC to coordination service ...") and a
check-failure stack trace. Python cannot step in within the process (docs/reliability.md), so
such a process runs the real work in a child (the same command line again) under this parent,
which imports no JAX:

- stdout is the child's own (inherited); stderr passes through this parent as it comes;
- SIGTERM and SIGINT are forwarded to the child (preemption keeps working; the child has its
  own session, so a signal to the whole process group reaches it once, through here), and
  the child is SIGKILLed by the kernel if this parent dies (`PR_SET_PDEATHSIG`), so that
  killing the process one sees kills the job's process;
- the child sends its "will" through a pipe named in `PRETRAIN_SUPERVISOR`: the `error:` line
  to print if process 0 goes (t5x_like.distributed builds it, naming process 0's host and the
  checkpoint directory);
- when the child dies by SIGABRT right after JAX's fatal line about the unreachable
  coordination service, the fatal line, the stack trace and the error log line just before
  them are dropped; the will is the last line on stderr and the exit code is `exit_code`.
  Any other end passes through unchanged: the exit code, or death by the same signal, and
  all of stderr.

Single-process runs and process 0 (explicit `JAX_PROCESS_ID=0`) run as before, without a
parent. With `PRETRAIN_DISTRIBUTED=auto` the process id is not known before JAX starts, so
every process gets one; process 0's child sends no will, and its end passes through.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Sequence

ENV = "PRETRAIN_SUPERVISOR"  # in the child: "<will pipe fd> <this parent's pid>"
# JAX's abort when the coordination service (process 0) cannot be reached (jaxlib 0.10.2's
# client.h): the F line that ends a process other than 0 after process 0 went away.
_FATAL = re.compile(rb"^F\d{4} .*JAX distributed service detected fatal errors.*"
                    rb"(?:Failed to send RPC to coordination service|leader task)")
# The warnings and errors that JAX's coordination agent and preemption manager log (with
# continuation lines) in the moments before that F line: they start a hold.
_HOLD = re.compile(rb"^[WE]\d{4} \S+ +\d+ (?:coordination_\w+|preemption_\w+|client)"
                   rb"\.(?:cc|h):\d+\] ")
# An incomplete line that may still become one of those: kept until its end arrives.
_MAYBE_HELD = re.compile(rb"^[WEF]\d{0,4}$|^[WEF]\d{4} ")
# Everything from a line that starts a hold on is kept back this long: dropped if the F line
# comes in that time, written out otherwise.
_HOLD_S = 1.0
_FORWARDED = (signal.SIGTERM, signal.SIGINT)


def supervise_if_needed(exit_code: int) -> None:
  """Runs this command in a supervised child and exits like it, where needed; else returns."""
  if not _needs_supervisor(os.environ):
    return
  code = supervise([sys.executable, *sys.orig_argv[1:]], exit_code)
  for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(Exception):
      stream.flush()
  if code < 0:  # the child died by a signal: so does this process (a shell sees the same)
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
    code = 128 - code  # a signal that does not end a process by default
  os._exit(code)  # nothing of this parent is left to clean up


def _needs_supervisor(env: typing.Mapping[str, str]) -> bool:
  if supervised_by() is not None:
    return False  # this is the child
  if env.get("JAX_COORDINATOR_ADDRESS"):
    try:
      count, index = int(env.get("JAX_NUM_PROCESSES", "")), int(env.get("JAX_PROCESS_ID", ""))
    except ValueError:
      return False  # refused with one error line by t5x_like.distributed, unsupervised
    return count > 1 and index != 0
  return env.get("PRETRAIN_DISTRIBUTED") == "auto"


def supervised_by() -> int | None:
  """In a supervised child, the fd of the pipe its will goes to; else None."""
  try:
    fd, parent = (int(v) for v in os.environ.get(ENV, "").split())
  except ValueError:
    return None
  # A process started by the child (which inherits the environment) is not supervised.
  return fd if parent == os.getppid() else None


def send_will(message: str) -> None:
  """In a supervised child: the line the parent prints if process 0 goes. Else nothing."""
  fd = supervised_by()
  if fd is None:
    return
  # One write of a few hundred bytes to a pipe: atomic, never interleaved.
  with contextlib.suppress(OSError):  # the parent is gone: so will this process be
    os.write(fd, (json.dumps(message) + "\n").encode())


def _die_with_parent() -> typing.Callable[[], None] | None:
  """What the child runs between fork and exec so that the kernel kills it with this parent."""
  try:  # looked up here: between fork and exec only the call itself should run
    import ctypes
    prctl = ctypes.CDLL(None, use_errno=True).prctl
  except (OSError, AttributeError):  # not Linux: no such guarantee
    return None
  return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def supervise(command: Sequence[str], exit_code: int) -> int:
  """Runs `command` as the supervised child; returns its exit code (-N: killed by signal N)."""
  pending: list[int] = []
  child: subprocess.Popen | None = None

  def forward(signum: int, frame: object) -> None:
    del frame
    if child is None:
      pending.append(signum)
    else:
      with contextlib.suppress(ProcessLookupError):
        child.send_signal(signum)

  for signum in _FORWARDED:
    signal.signal(signum, forward)
  will_r, will_w = os.pipe()
  child = subprocess.Popen(list(command), env={**os.environ, ENV: f"{will_w} {os.getpid()}"},
                           stderr=subprocess.PIPE, pass_fds=(will_w,), start_new_session=True,
                           preexec_fn=_die_with_parent())  # noqa: PLW1509 - no threads here
  os.close(will_w)
  for signum in pending:
    child.send_signal(signum)
  err = _StderrFilter()
  will = _WillReader()
  assert child.stderr is not None
  readers = {child.stderr.fileno(): err.feed, will_r: will.feed}
  ended_at = None
  while True:
    if ended_at is None and child.poll() is not None:
      ended_at = time.monotonic()
    # After the child ended, read what it left in the pipes; a process it started may keep
    # them open, so stop once they are quiet (or after a second of chatter).
    if ended_at is not None and (not readers or time.monotonic() - ended_at > 1.0):
      break
    timeout = 0.05 if ended_at is not None else min(0.1, err.hold_left())
    ready, _, _ = select.select(list(readers), [], [], timeout)
    for fd in ready:
      data = os.read(fd, 65536)
      if data:
        readers[fd](data)
      else:
        del readers[fd]
    if ended_at is not None and not ready:
      break
    err.release_if_old()
  code = child.wait()
  os.close(will_r)
  if code == -signal.SIGABRT and err.coordinator_lost and will.message:
    err.close()  # what the child wrote after the fatal line goes too
    _write(("" if err.at_line_start else "\n") + will.message + "\n")
    return exit_code
  err.flush()
  return code


def _write(text: str | bytes) -> None:
  data = text.encode("utf-8", "backslashreplace") if isinstance(text, str) else text
  with contextlib.suppress(OSError):  # our stderr is gone: nothing to tell anyone
    while data:
      data = data[os.write(2, data):]


class _WillReader:
  def __init__(self) -> None:
    self.message: str | None = None
    self._buffer = b""

  def feed(self, data: bytes) -> None:
    *lines, self._buffer = (self._buffer + data).split(b"\n")
    for line in lines:
      with contextlib.suppress(ValueError):
        self.message = str(json.loads(line))


class _StderrFilter:
  """Passes the child's stderr on as it arrives, except JAX's abort on a lost process 0.

  Complete lines go out at once; an incomplete one too (a progress bar) unless it may become
  an absl log line. A warning or error of JAX's coordination code starts a hold: it and what
  follows are kept back up to `_HOLD_S`, as they come just before the fatal line. From the
  fatal line on, everything is kept back; `close` drops it, `flush` writes it (the child did
  not die of it after all).
  """

  def __init__(self) -> None:
    self.coordinator_lost = False
    self.at_line_start = True  # of what went out
    self._partial = b""  # the start of a line not yet written
    self._line_started = False  # part of the current line went out already
    self._held: list[bytes] = []
    self._held_since = 0.0
    self._kept: list[bytes] = []  # from the fatal line on

  def feed(self, data: bytes) -> None:
    *lines, rest = (self._partial + data).split(b"\n")
    self._partial = b""
    for line in lines:
      self._line(line + b"\n")
    if not rest:
      return
    if self.coordinator_lost:
      self._kept.append(rest)
    else:
      self._partial = rest
      self._partial_out()

  def _partial_out(self) -> None:
    if self._partial and not self._held and (
        self._line_started or not _MAYBE_HELD.match(self._partial)):
      self._out(self._partial)
      self._partial, self._line_started = b"", True

  def _line(self, line: bytes) -> None:
    if self.coordinator_lost:
      self._kept.append(line)
    elif self._line_started:
      self._out(line)
      self._line_started = False
    elif _FATAL.match(line):
      self.coordinator_lost = True
      self._kept, self._held = self._held + [line], []
    elif self._held or _HOLD.match(line):
      if not self._held:
        self._held_since = time.monotonic()
      self._held.append(line)
    else:
      self._out(line)

  def hold_left(self) -> float:
    """Seconds until a held line is due (large when none is)."""
    if not self._held:
      return 3600.0
    return max(0.0, self._held_since + _HOLD_S - time.monotonic())

  def release_if_old(self) -> None:
    if self._held and not self.hold_left():
      self._release()
      self._partial_out()

  def _release(self) -> None:
    for line in self._held:
      self._out(line)
    self._held = []

  def _out(self, data: bytes) -> None:
    _write(data)
    self.at_line_start = data.endswith(b"\n")

  def flush(self) -> None:
    self._release()
    for data in [*self._kept, self._partial]:
      if data:
        self._out(data)
    self._kept, self._partial = [], b""

  def close(self) -> None:
    self._held, self._kept, self._partial = [], [], b""
