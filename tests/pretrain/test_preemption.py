"""SIGTERM (what a spot / preemptible VM gets before it goes) during `pretrain train`: the run
saves a checkpoint at the next step boundary and exits 0 without exporting; the same command
run again continues from that checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import xla_flags
from tests.pretrain.conftest import tiny_overrides

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def _command(workdir: str, corpus: str, cache_dir: str, steps: int) -> list[str]:
  # No periodic checkpoint and no eval: the only checkpoint is the one SIGTERM asks for.
  overrides = tiny_overrides(corpus, cache_dir, **{
      "train.steps": steps, "checkpoint.every": 100000, "train.eval_steps": 0,
      "train.log_every": 5, "train.export_at_end": "true"})
  return [sys.executable, "-m", "pretrain.cli", "train", "--config", "bert_tiny",
          "--workdir", workdir, *overrides]


def _env() -> dict[str, str]:
  return {**os.environ, "XLA_FLAGS": xla_flags(1)}


def _train_records(workdir: str) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    return sum('"split": "train"' in line for line in f)


def test_sigterm_saves_exits_zero_and_the_rerun_continues(tmp_path, corpus, cache_dir):
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(_command(workdir, corpus, cache_dir, 100000), env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while _train_records(workdir) < 2 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, proc.communicate()[1][-2000:]
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  summary = json.loads(out.strip().splitlines()[-1])
  stopped = summary["step"]
  assert summary["preempted"] is True and 10 <= stopped < 100000
  assert "SIGTERM: saved checkpoint" in err and "Traceback" not in err
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps == [stopped]
  assert not os.path.exists(os.path.join(workdir, "export"))  # unfinished: no export

  again = subprocess.run(_command(workdir, corpus, cache_dir, stopped + 4), env=_env(),
                         capture_output=True, text=True, timeout=240, check=False)
  assert again.returncode == 0, again.stderr[-2000:]
  assert f"resumed from {os.path.join(workdir, 'checkpoints')}/{stopped}" in again.stderr
  final = json.loads(again.stdout.strip().splitlines()[-1])
  assert final["step"] == stopped + 4 and "preempted" not in final
  assert os.path.isdir(final["export"])
