"""Faults a long run meets: a second run on the same workdir, a NaN/Inf loss, a full disk
during a save, and SIGKILL in the middle of an asynchronous checkpoint write."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from t5x_like import checkpointing, load_pretrained
from tests.conftest import xla_flags
from tests.pretrain.conftest import run_cli, tiny_overrides
from tests.pretrain.test_cli_errors import EXIT_BAD_INPUT, assert_one_error

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

EXIT_TRAINING_FAILED = 3


def _env() -> dict[str, str]:
  return {**os.environ, "XLA_FLAGS": xla_flags(1)}


def _steps(workdir: str) -> list[int]:
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _finite(workdir: str, step: int) -> bool:
  params = load_pretrained(workdir, step=step).params
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(params))


def test_a_second_run_on_the_same_workdir_is_refused(tmp_path, capsys, corpus, cache_dir):
  workdir = str(tmp_path / "run")
  args = ["train", "--config", "bert_tiny", "--workdir", workdir,
          *tiny_overrides(corpus, cache_dir, **{"train.steps": 100000, "train.eval_steps": 0,
                                                "checkpoint.every": 100000})]
  first = subprocess.Popen([sys.executable, "-m", "pretrain.cli", *args], env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")

  def trained() -> bool:
    if not os.path.exists(metrics):
      return False
    with open(metrics, encoding="utf-8") as f:
      return '"train"' in f.read()

  deadline = time.time() + 240
  while not trained() and first.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert first.poll() is None
  code, out, err = run_cli(capsys, args)
  assert code == EXIT_BAD_INPUT and out == ""
  assert_one_error(err, f"workdir {workdir} is in use by another run", f"pid {first.pid}")
  first.send_signal(signal.SIGTERM)
  assert first.wait(timeout=120) == 0, first.stderr.read()[-2000:]
  assert _steps(workdir)  # the first run's SIGTERM checkpoint; the second wrote nothing


def _blow_up(corpus: str, cache_dir: str, **extra: object) -> list[str]:
  # A learning rate of 1e6 after 3 warm-up steps: finite at first, then the loss overflows.
  return tiny_overrides(corpus, cache_dir, **{
      "train.steps": 12, "train.eval_steps": 0, "checkpoint.every": 1, "checkpoint.keep": 20,
      "train.log_every": 4, "optim.learning_rate": 1e6, "optim.warmup_steps": 3,
      "optim.grad_clip_norm": 0, **extra})


def test_non_finite_loss_stops_naming_the_step_and_the_last_good_checkpoint(
    tmp_path, capsys, corpus, cache_dir):
  workdir = str(tmp_path / "run")
  code, out, err = run_cli(capsys, ["train", "--config", "bert_tiny", "--workdir", workdir,
                                    *_blow_up(corpus, cache_dir)])
  assert code == EXIT_TRAINING_FAILED and out == ""
  line = err.strip().splitlines()[-1]
  assert line.startswith("error: non-finite loss or gradient at step "), err[-2000:]
  bad = int(line.split(" at step ")[1].split()[0])
  saved = _steps(workdir)
  assert saved and max(saved) < bad
  assert f"the last good checkpoint is {os.path.join(workdir, 'checkpoints')}/{max(saved)}" in line
  assert all(_finite(workdir, s) for s in (saved[0], saved[-1]))


def test_non_finite_steps_are_skipped_when_configured(tmp_path, capsys, corpus, cache_dir):
  workdir = str(tmp_path / "run")
  code, out, err = run_cli(capsys, ["train", "--config", "bert_tiny", "--workdir", workdir,
                                    *_blow_up(corpus, cache_dir, **{
                                        "train.on_nonfinite": "skip",
                                        "checkpoint.every": 100})])
  assert code == 0, err[-2000:]
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary["step"] == 12 and 0 < summary["skipped_steps"] < 12
  assert "were skipped" in err
  assert _steps(workdir) == [12] and _finite(workdir, 12)


def test_full_disk_during_a_save_is_one_error_and_keeps_the_checkpoints(
    tmp_path, capsys, monkeypatch, corpus, cache_dir):
  """The save of step 4 fails as on a full disk: one `error:` line naming it; the
  complete checkpoints stay and restore."""
  real_save = checkpointing.ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step >= 4:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", save)
  workdir = str(tmp_path / "run")
  code, out, err = run_cli(capsys, ["train", "--config", "bert_tiny", "--workdir", workdir,
                                    *tiny_overrides(corpus, cache_dir, **{
                                        "train.steps": 8, "checkpoint.every": 2,
                                        "train.eval_steps": 0})])
  assert code == EXIT_BAD_INPUT and out == ""
  last = err.strip().splitlines()[-1]  # after the run's progress lines
  assert last.startswith("error: saving checkpoint 4 in ") and "Traceback" not in err
  assert "No space left on device" in last and "the complete checkpoints [2] are intact" in last
  assert _steps(workdir) == [2]
  assert load_pretrained(workdir).step == 2


def test_sigkill_during_an_async_checkpoint_write_resumes_from_the_last_complete_one(
    tmp_path, corpus, cache_dir):
  """Killed while orbax writes a checkpoint (its temporary directory exists): the partial
  checkpoint is never used; the re-run resumes from the last complete one and ends with the
  parameters of an uninterrupted run."""
  overrides = tiny_overrides(corpus, cache_dir, **{
      "train.steps": 12, "checkpoint.every": 4, "checkpoint.keep": 10, "train.eval_steps": 0,
      "model.hidden_size": 256, "model.intermediate_size": 1024, "model.num_heads": 4,
      "model.num_layers": 2})
  command = lambda workdir: [sys.executable, "-m", "pretrain.cli", "train", "--config",
                             "bert_tiny", "--workdir", workdir, *overrides]
  straight = str(tmp_path / "straight")
  assert subprocess.run(command(straight), env=_env(), capture_output=True, timeout=300,
                        check=False).returncode == 0

  killed = str(tmp_path / "killed")
  ckpts = os.path.join(killed, "checkpoints")
  partial = None
  for _attempt in range(3):  # the write window is short; try again if it was missed
    proc = subprocess.Popen(command(killed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
      names = os.listdir(ckpts) if os.path.isdir(ckpts) else []
      tmp = [n for n in names if "tmp" in n and _steps(killed)]
      if tmp:
        proc.send_signal(signal.SIGKILL)
        partial = tmp[0]
        break
      time.sleep(0.001)
    proc.wait(timeout=60)
    if partial is not None:
      break
  if partial is None:
    pytest.fail("never caught a checkpoint write in progress")
  complete = _steps(killed)
  assert complete and max(complete) < 12

  rerun = subprocess.run(command(killed), env=_env(), capture_output=True, text=True,
                         timeout=300, check=False)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert f"resumed from {ckpts}/{max(complete)}" in rerun.stderr
  a, b = load_pretrained(straight), load_pretrained(killed)
  assert a.step == b.step == 12
  for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
