"""`pretrain train` writes WORKDIR/DONE when it reaches train.steps (what babysit.sh reads)."""

import json
import os
import subprocess
import sys

import pytest

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def test_a_finished_run_writes_done_and_a_longer_run_rewrites_it(tmp_path):
  steps = 2
  workdir = tmp_path / "run"
  env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
  args = [sys.executable, "-m", "pretrain.cli", "train", "--config", "bert_tiny", "--workdir",
          str(workdir), "train.eval_every=100", "train.export_at_end=false",
          "checkpoint.every=100", "train.batch_size=8"]
  r = subprocess.run([*args, f"train.steps={steps}"], env=env, capture_output=True, text=True,
                     timeout=600, check=False)
  assert r.returncode == 0, r.stderr
  done = json.loads((workdir / "DONE").read_text())
  assert done["step"] == steps
  # Training further: the old marker goes when the run starts, a new one when it ends.
  (workdir / "DONE").write_text("stale\n")
  r = subprocess.run([*args, f"train.steps={steps + 1}"], env=env, capture_output=True,
                     text=True, timeout=600, check=False)
  assert r.returncode == 0, r.stderr
  assert json.loads((workdir / "DONE").read_text())["step"] == steps + 1
