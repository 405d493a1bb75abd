"""Multi-process start-up: one `pretrain` process per host joins one JAX job.

Called by the CLI before anything asks JAX for devices. Two ways in:

- explicit (any platform, also several processes on one CPU machine):
  `JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i` (the first name is
  the one `jax.distributed.initialize` reads itself; the other two are passed to it). On CPU
  the processes talk through gloo collectives.
- `PRETRAIN_DISTRIBUTED=auto` (set by `tpu_scripts/launch.sh` on every worker of a TPU VM):
  `jax.distributed.initialize()` with no arguments, which finds the coordinator, the process
  count and this worker's id from the Cloud TPU environment.

Without either, nothing happens: a single process, as on a laptop or a one-host TPU VM.
After initialisation every process sees the global devices; the data pipeline reads only this
process's rows (`jax.process_index()` of `jax.process_count()`), the loop assembles global
batches from them, and only process 0 logs, writes metrics and exports.

A lost process (killed, crashed, its host gone) is noticed by `PeerWatch`: every process
refreshes a liveness key in the coordination service's key-value store, and a process whose
key has not changed for `PRETRAIN_PEER_TIMEOUT_S` seconds (default 30) is declared lost; each
survivor then prints one `error:` line naming it and exits (see docs/reliability.md). JAX's
own heartbeat check would instead abort every survivor with a C++ check-failure trace, so its
timeout is set well above ours. Losing process 0, which runs the coordination service, makes
JAX abort the others at once, before Python can act: there a JAX-free parent process
(pretrain/supervise.py) prints the line this process left with it (`send_will`).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import threading
import time
import typing

import jax

from t5x_like.config import ConfigError

_ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
_ENV_COUNT = "JAX_NUM_PROCESSES"
_ENV_ID = "JAX_PROCESS_ID"
_ENV_AUTO = "PRETRAIN_DISTRIBUTED"
_ENV_PEER_TIMEOUT = "PRETRAIN_PEER_TIMEOUT_S"
DEFAULT_PEER_TIMEOUT_S = 30.0
# JAX's heartbeat check (jax.distributed.initialize's heartbeat_timeout_seconds, default 100)
# declares a task dead between about half of its timeout and all of it after the task's last
# heartbeat (heartbeats go every timeout / 2), and then aborts every process. It stays at
# least 3x ours, so that our verdict (within timeout + a few beats) always comes first.
_JAX_HEARTBEAT_FACTOR = 3
_JAX_HEARTBEAT_MIN_S = 100


def _int_env(name: str) -> int:
  value = os.environ.get(name)
  if value is None:
    raise ConfigError(f"{_ENV_COORDINATOR} is set, so {name} must be set too (the number of "
                      f"processes and this process's id in 0..N-1)")
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def initialize_from_env() -> bool:
  """Joins the multi-process job the environment describes; returns whether it did."""
  if jax.distributed.is_initialized():
    return True
  coordinator = os.environ.get(_ENV_COORDINATOR)
  mode = os.environ.get(_ENV_AUTO, "")
  if mode not in ("", "auto", "off"):
    raise ConfigError(f"{_ENV_AUTO} must be 'auto' or 'off', got {mode!r}")
  if coordinator:
    count, index = _int_env(_ENV_COUNT), _int_env(_ENV_ID)
    if count < 1 or not 0 <= index < count:
      raise ConfigError(f"{_ENV_ID} ({index}) must be in [0, {_ENV_COUNT}) = [0, {count})")
    if jax.config.jax_platforms in (None, "", "cpu") and count > 1:
      # Cross-process collectives on CPU (tests, CPU clusters); TPUs and GPUs bring their own.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=count, process_id=index,
                               heartbeat_timeout_seconds=_jax_heartbeat_timeout())
  elif mode == "auto":
    jax.distributed.initialize(heartbeat_timeout_seconds=_jax_heartbeat_timeout())
  else:
    return False
  if jax.process_index() != 0:
    send_will(_coordinator_host(), None)
  return True


def _coordinator_host() -> str:
  """Process 0's host as the coordinator address names it (host:port, [v6 address]:port)."""
  from jax._src import distributed as jax_distributed  # no public accessor
  address = getattr(jax_distributed.global_state, "coordinator_address", None) or "?"
  return address.rsplit(":", 1)[0].strip("[]")


def send_will(host: str, workdir: str | None) -> None:
  """Leaves the line to end with if process 0 (on `host`) goes, with the supervising parent.

  Called in a process other than 0: after joining the job, and again by `PeerWatch` with the
  workdir and process 0's own host name. Nothing happens without a parent (pretrain/supervise).
  """
  from pretrain import supervise  # JAX-free: the parent imports it too
  what = (f"lost process 0 (host {host}), which runs the job's coordination service: it ended "
          f"or became unreachable (killed, crashed, stopped by an error, or its host went "
          f"away; see its log)")
  supervise.send_will(lost_message(what, jax.process_index(), workdir))


def lost_message(what: str, process: int, workdir: str | None) -> str:
  """The `error:` line of a process that stops because another one was lost."""
  message = f"error: {what}; process {process} stopped too."
  if workdir is None:  # not a training run: nothing to resume
    return f"{message} Run the same command again on all hosts"
  checkpoints = os.path.join(workdir, "checkpoints")
  return (f"{message} Complete checkpoints in {checkpoints} are intact (a save in progress is "
          f"discarded); run the same command again on all hosts to resume from the last one")


def is_main_process() -> bool:
  """Process 0 speaks for the job: it logs, writes metrics, takes the workdir lock, exports."""
  return jax.process_index() == 0


def peer_timeout() -> float:
  """Seconds without a sign of life after which a process of the job is declared lost."""
  value = os.environ.get(_ENV_PEER_TIMEOUT)
  if value is None or value == "":
    return DEFAULT_PEER_TIMEOUT_S
  try:
    seconds = float(value)
  except ValueError:
    seconds = math.nan
  if not math.isfinite(seconds) or seconds <= 0:
    raise ConfigError(f"{_ENV_PEER_TIMEOUT} must be a positive number of seconds, got {value!r}")
  return seconds


def _jax_heartbeat_timeout() -> int:
  return max(_JAX_HEARTBEAT_MIN_S, math.ceil(_JAX_HEARTBEAT_FACTOR * peer_timeout()))


_KEY_PREFIX = "pretrain_peer_watch/"
_ALIVE = _KEY_PREFIX + "alive/"  # alive/<process id> = "<beat counter> <host>" or "done <host>"
_VERDICT = _KEY_PREFIX + "lost"  # written by process 0: the lost ids, "1,3"
_DONE = "done"


class PeerWatch:
  """Ends this process with one `error:` line when another process of the job is lost.

  Two daemon threads while the block runs (nothing in a single-process run). The beater
  writes this process's liveness key every `timeout / 10` seconds and reads all of them;
  the judge declares lost a process whose key has not changed for `timeout` seconds (and,
  in a process other than 0, process 0 when the key-value store, which lives in process 0,
  has not answered for as long). It then prints the line and calls `os._exit`: the main
  thread may be blocked inside a collective that will never finish, so raising is no use.
  Process 0 publishes its verdict, so that every survivor names the same process, and
  exits last, two beats later: the coordination service runs in it, and its end would make
  the other survivors abort on their own with JAX's check-failure trace.

  Leaving the block normally marks this process done (a done process, e.g. one waiting for
  process 0 to export, is never declared lost). Leaving it with an exception other than the
  `expected` ones (a dead peer surfaces in many types: a gloo collective on CPU raises
  JaxRuntimeError, `sync_global_devices` ValueError) first waits up to one timeout and a few
  beats for a verdict, so that the error line, not a traceback, ends the output.
  """

  def __init__(self, workdir: str, exit_code: int,
               expected: tuple[type[BaseException], ...] = (), timeout: float | None = None):
    self.workdir = workdir
    self.exit_code = exit_code
    self.expected = expected
    self.timeout = peer_timeout() if timeout is None else timeout
    self.beat = self.timeout / 10
    self._client: typing.Any = None
    self._stop = threading.Event()
    self._lock = threading.Lock()
    self._seen: dict[int, str] = {}  # process id -> its liveness value
    self._verdict: str | None = None
    self._last_ok = 0.0  # monotonic time of the last answer from the key-value store
    self._will_host: str | None = None  # process 0's host as last named in the will
    self._threads: list[threading.Thread] = []

  def __enter__(self) -> typing.Self:
    from jax._src import distributed as jax_distributed  # the client: no public accessor
    state = jax_distributed.global_state
    if state.client is None or state.num_processes < 2:
      return self
    self._client = state.client
    self.process, self.count = state.process_id, state.num_processes
    self.host = socket.gethostname()
    self._last_ok = time.monotonic()
    if self.process != 0:
      self._will_host = _coordinator_host()
      send_will(self._will_host, self.workdir)
    self._threads = [threading.Thread(target=self._beat_loop, name="peer-watch-beat",
                                      daemon=True),
                     threading.Thread(target=self._judge_loop, name="peer-watch-judge",
                                      daemon=True)]
    for t in self._threads:
      t.start()
    return self

  def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
               tb: object) -> None:
    if self._client is None:
      return
    if isinstance(exc, Exception) and not isinstance(exc, self.expected):
      # A dead peer surfaces here first on CPU (gloo: "connection reset by peer"); let the
      # judge name it and exit. An error with every peer alive goes on after this.
      deadline = time.monotonic() + self.timeout + 3 * self.beat
      while time.monotonic() < deadline:
        time.sleep(self.beat)
    self._stop.set()
    for t in self._threads:
      t.join(timeout=2 * self.beat)
    if exc is None:
      with contextlib.suppress(Exception):  # best effort: the run itself is over and fine
        self._set(_ALIVE + str(self.process), f"{_DONE} {self.host}")

  def _set(self, key: str, value: str) -> None:
    try:
      self._client.key_value_set(key, value, allow_overwrite=True)
    except TypeError:  # a jaxlib without allow_overwrite
      with contextlib.suppress(Exception):  # not there yet
        self._client.key_value_delete(key)
      self._client.key_value_set(key, value)

  def _beat_loop(self) -> None:
    counter = 0
    while not self._stop.is_set():
      counter += 1
      try:
        self._set(_ALIVE + str(self.process), f"{counter} {self.host}")
        entries = self._client.key_value_dir_get(_KEY_PREFIX)
      except Exception:  # noqa: BLE001 - the judge decides what silence means
        entries = None
      if entries is not None:
        seen, verdict = {}, None
        for key, value in entries:
          name = key[key.find(_KEY_PREFIX):]  # some versions return the key with a "/"
          if name.startswith(_ALIVE) and name[len(_ALIVE):].isdigit():
            seen[int(name[len(_ALIVE):])] = value
          elif name == _VERDICT:
            verdict = value
        with self._lock:
          self._seen, self._verdict, self._last_ok = seen, verdict, time.monotonic()
        host0 = seen.get(0, "").split(" ", 1)[-1]
        if self.process != 0 and host0 and host0 != self._will_host:
          # Name process 0 as PeerWatch's own lines do: by the host name it reports.
          self._will_host = host0
          send_will(host0, self.workdir)
      self._stop.wait(self.beat)

  def _judge_loop(self) -> None:
    start = time.monotonic()
    last_value: dict[int, str | None] = {p: None for p in range(self.count)}
    last_change = {p: start for p in range(self.count)}
    while not self._stop.wait(self.beat):
      now = time.monotonic()
      with self._lock:
        seen, verdict, last_ok = dict(self._seen), self._verdict, self._last_ok
      # Process 0's verdict; one that names this (slow but alive) process is not ours to print.
      adopted = [int(p) for p in (verdict or "").split(",") if p and int(p) != self.process]
      if adopted:
        self._lost(adopted, seen)
      if self.process != 0 and now - last_ok > self.timeout:
        self._lost([0], seen, coordinator=True)
      lost = []
      for p in range(self.count):
        value = seen.get(p)
        if p == self.process or (value or "").startswith(_DONE):
          continue
        if value != last_value[p]:
          last_value[p], last_change[p] = value, now
        elif now - last_change[p] > self.timeout:
          lost.append(p)
      if lost:
        self._lost(lost, seen)

  def _lost(self, lost: list[int], seen: dict[int, str], coordinator: bool = False
            ) -> typing.NoReturn:
    hosts = ", ".join(f"process {p} (host {seen[p].split(' ', 1)[-1]})" if p in seen
                      else f"process {p}" for p in lost)
    if coordinator:
      what = (f"lost contact with {hosts}, which runs the job's coordination service: no "
              f"answer for {self.timeout:g} s")
    else:
      what = (f"lost {hosts} of this {self.count}-process job: no sign of life for "
              f"{self.timeout:g} s (killed, crashed, or its host went away)")
    message = lost_message(what, self.process, self.workdir)
    if self.process == 0:
      # Every survivor then names the same process, and exits before this one; without the
      # key they reach their own verdict a beat later.
      with contextlib.suppress(Exception):
        self._set(_VERDICT, ",".join(str(p) for p in lost))
      time.sleep(2 * self.beat)
    for stream in (sys.stdout, sys.stderr):
      with contextlib.suppress(Exception):  # a stream may be closed; the line still goes out
        stream.flush()
    # One write that starts with a newline: a progress bar may have left the line open.
    os.write(2, f"\n{message}\n".encode("utf-8", "backslashreplace"))
    os._exit(self.exit_code)
