"""Two processes on this machine (a localhost coordinator, gloo collectives, 4 virtual CPU
devices each) train one model on a global mesh of 8 (data parallelism across the processes as
across DCN, `mesh.dcn_data=2`; fsdp and tensor within each): the parameters equal those of one
process with 8 devices, and each process read its own half of every global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from t5x_like import load_pretrained
from tests.conftest import xla_flags
from tests.pretrain.conftest import tiny_overrides

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

STEPS = 4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _worker(workdir: str, record: str, corpus: str, cache_dir: str, devices: int,
            env: dict[str, str], mesh: dict[str, int]) -> subprocess.Popen:
  args = tiny_overrides(corpus, cache_dir, **{
      "train.steps": STEPS, "train.batch_size": 16, "train.eval_steps": 0,
      "checkpoint.every": 2, "train.log_every": 1, "mesh.fsdp": 2, "mesh.tensor": 2,
      "model.num_heads": 2, **{f"mesh.{k}": v for k, v in mesh.items()}})
  full_env = {**os.environ, **env, "RECORD_PATH": record,
              "XLA_FLAGS": xla_flags(devices)}
  return subprocess.Popen([sys.executable, "-m", "tests.pretrain.multihost_worker", "train",
                           "--config", "bert_tiny", "--workdir", workdir, *args],
                          env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  return out, err


def test_two_processes_equal_one_process_and_split_the_data(tmp_path, corpus, cache_dir):
  single_dir, multi_dir = str(tmp_path / "single"), str(tmp_path / "multi")
  single_rec = str(tmp_path / "single.npy")
  _finish(_worker(single_dir, single_rec, corpus, cache_dir, 8, {}, {"data": 2}))

  port = _free_port()
  procs = [_worker(multi_dir, str(tmp_path / f"p{i}.npy"), corpus, cache_dir, 4, {
      "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": str(i)}, {"data": 1, "dcn_data": 2}) for i in range(2)]
  outs = [_finish(p) for p in procs]

  # Each process read rows [p * 8, (p + 1) * 8) of every global batch of the single run.
  single = np.load(single_rec)
  parts = [np.load(str(tmp_path / f"p{i}.npy")) for i in range(2)]
  assert single.shape == (STEPS, 16, 32) and all(p.shape == (STEPS, 8, 32) for p in parts)
  np.testing.assert_array_equal(parts[0], single[:, :8])
  np.testing.assert_array_equal(parts[1], single[:, 8:])
  rows = [{r.tobytes() for r in p.reshape(-1, 32)} for p in parts]
  assert not rows[0] & rows[1]

  # One job: process 0 alone prints the summary and writes the metrics (no duplicates).
  assert json.loads(outs[0][0].strip().splitlines()[-1])["step"] == STEPS
  # (gloo prints its own connection lines, interleaved, to stdout)
  assert not [line for line in outs[1][0].splitlines() if line.lstrip().startswith("{")]
  assert "over 8 cpu devices" in outs[0][1] and "parameters" not in outs[1][1]
  logged = []
  for workdir in (single_dir, multi_dir):
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      logged.append([json.loads(line)["step"] for line in f])
  assert logged[1] == logged[0] and logged[0][-1] == STEPS

  a, b = load_pretrained(single_dir), load_pretrained(multi_dir)
  assert a.step == b.step == STEPS
  for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)
