"""A multi-process `train` that loses a process: two CPU processes (a localhost coordinator,
gloo collectives) train one model; process 1 is SIGKILLed mid-run. Process 0 must end within
the documented bound (PRETRAIN_PEER_TIMEOUT_S plus three beats of a tenth of it) with exit
code 4 and one `error:` line naming process 1 as its last line, no C++ check-failure trace
and no Python traceback; the same command on both processes then resumes from the last
complete checkpoint.

Before the fix, process 0 got a gloo error at once, printed its traceback, and then hung in
JAX's shutdown barrier until JAX's heartbeat check aborted it (SIGABRT) ~70 s after the kill
with a C++ check-failure trace."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.pretrain.conftest import tiny_overrides

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

EXIT_PEER_LOST = 4  # pretrain.EXIT_PEER_LOST
PEER_TIMEOUT_S = 8.0
# PeerWatch's bound for process 0: the timeout, a beat for the judge to look, two beats of
# grace for the other survivors; plus slack for a loaded 2-core test machine.
BOUND_S = PEER_TIMEOUT_S * 1.3 + 5


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir: str, corpus: str, cache_dir: str, port: int, steps: int, tmp: str
           ) -> list[tuple[subprocess.Popen, str]]:
  args = tiny_overrides(corpus, cache_dir, **{
      "train.steps": steps, "train.batch_size": 16, "train.eval_steps": 0,
      "checkpoint.every": 5, "train.log_every": 5, "mesh.data": 1, "mesh.dcn_data": 2})
  procs = []
  for i in range(2):
    env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
           "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i),
           "PRETRAIN_PEER_TIMEOUT_S": str(PEER_TIMEOUT_S),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    # stderr to a file: a pipe nobody reads could fill up and block the process.
    err_path = os.path.join(tmp, f"err{i}-{port}.txt")
    with open(err_path, "w", encoding="utf-8") as err:
      procs.append((subprocess.Popen(
          [sys.executable, "-m", "pretrain.cli", "train", "--config", "bert_tiny",
           "--workdir", workdir, *args], env=env, stdout=subprocess.DEVNULL, stderr=err),
          err_path))
  return procs


def _complete_steps(checkpoints: str) -> list[int]:
  if not os.path.isdir(checkpoints):
    return []
  return sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())


def _read(path: str) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()


def test_lost_process_ends_the_survivor_with_one_error_line_and_a_rerun_resumes(
    tmp_path, corpus, cache_dir):
  workdir = str(tmp_path / "run")
  checkpoints = os.path.join(workdir, "checkpoints")
  procs = _start(workdir, corpus, cache_dir, _free_port(), 100_000, str(tmp_path))
  try:
    deadline = time.monotonic() + 240
    while not [s for s in _complete_steps(checkpoints) if s >= 10]:
      assert time.monotonic() < deadline, "no checkpoint 10 in time"
      assert all(p.poll() is None for p, _ in procs), [_read(e)[-2000:] for _, e in procs]
      time.sleep(0.2)
    procs[1][0].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    survivor, err_path = procs[0]
    try:
      survivor.wait(timeout=BOUND_S + 60)
    except subprocess.TimeoutExpired:
      survivor.kill()
      survivor.wait()
    elapsed = time.monotonic() - killed
  finally:
    for p, _ in procs:
      if p.poll() is None:
        p.kill()
        p.wait()

  err = _read(err_path)
  lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
  assert survivor.returncode == EXIT_PEER_LOST, (survivor.returncode, err[-3000:])
  assert elapsed <= BOUND_S, (elapsed, err[-3000:])
  errors = [line for line in lines if line.startswith("error:")]
  assert len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
  assert "lost process 1 (host " in errors[0] and f"no sign of life for {PEER_TIMEOUT_S:g} s" \
      in errors[0] and "run the same command again on all hosts" in errors[0]
  assert checkpoints in errors[0]
  assert "Check failure" not in err and "Traceback" not in err, err[-3000:]
  assert not re.search(r"^F\d{4} ", err, re.MULTILINE), err[-3000:]  # an absl FATAL line

  # The checkpoints on disk are whole: the same command on both processes resumes from the
  # last complete one (a save that was in progress left only a temporary directory).
  last = _complete_steps(checkpoints)[-1]
  procs = _start(workdir, corpus, cache_dir, _free_port(), last + 1, str(tmp_path))
  try:
    for p, _ in procs:
      p.wait(timeout=240)
  finally:
    for p, _ in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  errs = [_read(e) for _, e in procs]
  assert [p.returncode for p, _ in procs] == [0, 0], [e[-3000:] for e in errs]
  assert f"resumed from {checkpoints}/{last}" in errs[0], errs[0][-3000:]
  assert _complete_steps(checkpoints)[-1] == last + 1


def test_peer_timeout_setting(monkeypatch):
  from t5x_like import distributed
  from t5x_like.config import ConfigError

  monkeypatch.delenv("PRETRAIN_PEER_TIMEOUT_S", raising=False)
  assert distributed.peer_timeout() == distributed.DEFAULT_PEER_TIMEOUT_S == 30
  assert distributed._jax_heartbeat_timeout() == 100  # JAX's default, 3x ours or more
  monkeypatch.setenv("PRETRAIN_PEER_TIMEOUT_S", "45")
  assert distributed.peer_timeout() == 45 and distributed._jax_heartbeat_timeout() == 135
  for bad in ("0", "-1", "abc", "nan", "inf"):
    monkeypatch.setenv("PRETRAIN_PEER_TIMEOUT_S", bad)
    with pytest.raises(ConfigError, match="PRETRAIN_PEER_TIMEOUT_S must be a positive"):
      distributed.peer_timeout()
