"""SIGKILL after a checkpoint, re-run the same command: training continues from the checkpoint
and ends with parameters bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from t5x_like import load_pretrained
from tests.conftest import xla_flags
from tests.pretrain.test_bart_cli import bart_overrides
from tests.pretrain.test_t5_cli import t5_overrides
from tests.pretrain.test_xlnet_cli import MEMORY_BI_DATA, xlnet_overrides

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

STEPS = 30
EVERY = 5
LORA_STEPS, LORA_EVERY = 12, 3  # the LoRA case: what differs is the state, not the data path


def _command(preset: str, workdir: str, corpus: str, cache_dir: str, lora: bool = False
             ) -> list[str]:
  steps, every = (LORA_STEPS, LORA_EVERY) if lora else (STEPS, EVERY)
  common = {"train.steps": steps, "checkpoint.every": every, "checkpoint.keep": 10,
            "train.eval_steps": 0, "train.log_every": 5, "train.export_at_end": "false",
            "model.hidden_size": 64,
            "model.intermediate_size": 128, "model.num_layers": 2, "model.dropout_rate": 0.1}
  if preset == "t5_tiny":
    # Packed documents, Adafactor, z-loss: the T5 path's state and data position resume too.
    overrides = t5_overrides(corpus, cache_dir, **common, **{"model.num_decoder_layers": 2,
                                                              "data.pack_documents": "true"})
  elif preset == "bart_tiny":
    # Random source lengths, text infilling + sentence permutation with dropout on: the
    # objective's generator position and the dropout stream resume too.
    overrides = bart_overrides(corpus, cache_dir, **common, **{"model.num_decoder_layers": 2,
                                                                "model.attention_dropout_rate": 0.1})
  else:
    assert preset == "xlnet_tiny", preset
    # Two streams, permutation masks drawn per record, dropout on, bi_data, and memory: the
    # stream position and the memory in the train state resume too.
    overrides = xlnet_overrides(corpus, cache_dir, **common, **MEMORY_BI_DATA)
  if lora:
    # Adapters on every T5 Linear with dropout on them: only the adapters, their optimiser
    # state and the dropout stream are in the step checkpoints; the base is in lora_base/.
    overrides += ["lora.rank=4", "lora.dropout=0.1", "lora.targets=[q,k,v,o,wi_0,wi_1,wo]",
                  "optim.learning_rate=0.01"]
  return [sys.executable, "-m", "pretrain.cli", "train", "--config", preset,
          "--workdir", workdir, *overrides]


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = xla_flags(1)
  return env


def _steps(workdir: str) -> list[int]:
  path = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(path):
    return []
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


# bert_tiny: tests/pretrain/test_faults.py kills it in the middle of a checkpoint write and
# checks the same bit-identical resume.
@pytest.mark.parametrize("preset,lora", [("t5_tiny", False), ("bart_tiny", False),
                                         ("xlnet_tiny", False), ("t5_tiny", True)])
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, corpus, cache_dir, preset, lora):
  command = lambda workdir: _command(preset, workdir, corpus, cache_dir, lora)
  straight = str(tmp_path / "straight")
  done = subprocess.run(command(straight), env=_env(), capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]

  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(command(killed), env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not _steps(killed) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  saved = _steps(killed)
  steps = LORA_STEPS if lora else STEPS
  assert saved and max(saved) < steps, saved

  resumed = subprocess.run(command(killed), env=_env(), capture_output=True,
                           text=True, timeout=300, check=False)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resumed from {os.path.join(killed, 'checkpoints')}/{max(saved)}" in resumed.stderr

  a, b = load_pretrained(straight), load_pretrained(killed)
  assert a.step == b.step == steps
  # With LoRA: the base and the adapters, unmerged.
  leaves_a = jax.tree_util.tree_leaves(a.lora_params if lora else a.params)
  leaves_b = jax.tree_util.tree_leaves(b.lora_params if lora else b.params)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # and training did move the parameters (the comparison is not between two initialisations)
  first = load_pretrained(killed, step=max(saved))
  assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
             zip(jax.tree_util.tree_leaves(first.lora_params if lora else first.params),
                 leaves_b))
