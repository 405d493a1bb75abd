"""`pretrain` with a UL2 mixture on T5: bad mixtures refused with one line; (slow) a killed and
re-run mixture run ends bit-identical to an uninterrupted one, and its export loads in
`T5ForConditionalGeneration` with the paradigm tokens in its tokenizer and the same logits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.conftest import xla_flags
from tests.pretrain.conftest import run_cli, snapshot
from tests.pretrain.test_cli_errors import EXIT_BAD_INPUT, assert_one_error

STEPS = 12
EVERY = 4


def ul2_overrides(corpus: str, cache_dir: str, **extra: object) -> list[str]:
  """Shrinks ul2_tiny to a run of a few seconds: d=32, 1+1 layers, inputs 32."""
  values: dict[str, object] = {
      "model.hidden_size": 32, "model.num_heads": 2, "model.head_dim": 16,
      "model.intermediate_size": 64, "model.num_layers": 1, "model.num_decoder_layers": 1,
      "model.dropout_rate": 0.1, "data.seq_len": 32, "train.batch_size": 8,
      "train.steps": STEPS, "train.eval_every": STEPS, "train.eval_steps": 2,
      "train.log_every": 4, "checkpoint.every": EVERY, "checkpoint.keep": 10,
      "train.export_at_end": "false", "optim.warmup_steps": 10,
      "data.corpus": corpus, "data.cache_dir": cache_dir}
  values.update(extra)
  return [f"{k}={v}" for k, v in values.items()]


@pytest.mark.parametrize("extra, needles", [
  (["objective.mixture.3.rate=0"], ["objective.mixture.3.rate must be positive, got 0.0"]),
  (["objective.mixture=[]"], ["objective.mixture is empty"]),
  (["objective.mixture.0.name=spam"], ["'spam' is not one of", "span_corruption"]),
  (["objective.mixture.6.name=prefix_lm"],
   ["objective.mixture.6: objective 'prefix_lm' does not train model.family 't5'"]),
  (["data.target_len=20"],
   ["data.target_len (20) is too short for objective.mixture.2 (X1: span_corruption)",
    ">= 30"]),
])
def test_bad_mixture_is_one_error_line(capsys, tmp_path, corpus, cache_dir, extra, needles):
  workdir = str(tmp_path / "run")
  before = snapshot(str(tmp_path)), snapshot(cache_dir)
  code, out, err = run_cli(capsys, ["train", "--config", "ul2_tiny", "--workdir", workdir,
                                    *ul2_overrides(corpus, cache_dir), *extra])
  assert code == EXIT_BAD_INPUT and out == ""
  assert_one_error(err, *needles)
  assert not os.path.exists(workdir)
  assert (snapshot(str(tmp_path)), snapshot(cache_dir)) == before


def _command(workdir: str, corpus: str, cache_dir: str) -> list[str]:
  return [sys.executable, "-m", "pretrain.cli", "train", "--config", "ul2_tiny", "--workdir",
          workdir, *ul2_overrides(corpus, cache_dir)]


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = xla_flags(1)
  return env


def _steps(workdir: str) -> list[int]:
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus, cache_dir) -> str:
  workdir = str(tmp_path_factory.mktemp("ul2") / "straight")
  done = subprocess.run(_command(workdir, corpus, cache_dir), env=_env(), capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  return workdir


@pytest.mark.slow
def test_killed_mixture_run_resumes_bit_identically(straight, tmp_path, corpus, cache_dir):
  from t5x_like import load_pretrained

  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(_command(killed, corpus, cache_dir), env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not _steps(killed) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  saved = _steps(killed)
  assert saved and max(saved) < STEPS, saved
  resumed = subprocess.run(_command(killed, corpus, cache_dir), env=_env(), capture_output=True,
                           text=True, timeout=300, check=False)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resumed from {os.path.join(killed, 'checkpoints')}/{max(saved)}" in resumed.stderr

  a, b = load_pretrained(straight), load_pretrained(killed)
  assert a.step == b.step == STEPS
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  first = load_pretrained(killed, step=max(saved))
  assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
             zip(jax.tree_util.tree_leaves(first.params), leaves_b))


@pytest.mark.slow
def test_ul2_export_loads_in_transformers_with_paradigm_tokens(straight, tmp_path, capsys):
  import torch
  import transformers

  from data_pipelines.tokenizer import load_tokenizer
  from pretrain import data as data_lib
  from t5x_like import load_pretrained

  out = str(tmp_path / "hf")
  code, stdout, _ = run_cli(capsys, ["export", "--workdir", straight, "--out", out])
  assert code == 0 and f'"step": {STEPS}' in stdout
  ours = load_pretrained(straight)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  ids = tok.convert_tokens_to_ids(["[NLU]", "[NLG]", "[S2S]", "<extra_id_0>"])
  assert ids == [7900, 7901, 7902, 8063]
  assert tok("[S2S] A short prefix").input_ids[0] == 7902  # one id, never split

  # Real mixture rows (span denoisers and the S-denoiser's padded rows).
  config = ours.config
  make = data_lib.make_objective(config, load_tokenizer("bundled_ul2"))
  block = np.random.default_rng(0).integers(10, 7000, data_lib.block_length(config))
  rows = [make(block.astype(np.int32), np.random.default_rng([0, 0, i])) for i in range(8)]
  assert {int(r["mixture_member"]) for r in rows} >= {6} or len({int(r["mixture_member"])
                                                                  for r in rows}) > 2
  batch = {"input_ids": np.stack([r["input_ids"] for r in rows]),
           "attention_mask": np.stack([(r["segment_ids"] > 0) for r in rows]).astype(np.int32),
           "decoder_input_ids": np.stack([r["decoder_input_ids"] for r in rows]),
           "decoder_attention_mask": np.stack([(r["decoder_segment_ids"] > 0)
                                               for r in rows]).astype(np.int32)}
  expected = ours.logits(batch)
  hf = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
  with torch.no_grad():
    got = hf(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}).logits
  real = batch["decoder_attention_mask"].astype(bool)
  assert np.max(np.abs(got.numpy()[real] - expected[real])) < 1e-4
  assert np.std(expected) > 0.01


def test_decoder_span_corruption_is_refused_on_t5(capsys, tmp_path, corpus, cache_dir):
  work = str(tmp_path / "run")
  code, out, err = run_cli(capsys, ["train", "--config", "ul2_tiny", "--workdir", work,
                                    *ul2_overrides(corpus, cache_dir),
                                    "objective.mixture.0.name=decoder_span_corruption"])
  assert code == EXIT_BAD_INPUT and out == ""
  assert_one_error(err, "objective.mixture.0", "'decoder_span_corruption'", "llama, mpt")


@pytest.mark.slow
def test_decoder_only_ul2_trains_reports_each_denoiser_and_exports(capsys, tmp_path, corpus,
                                                                   cache_dir):
  """UL2's decoder-only form on a tiny Llama: `[paradigm] inputs targets` rows train, eval
  reports every denoiser, and the export (paradigm tokens in its tokenizer) gives our
  logits in LlamaForCausalLM."""
  import torch
  import transformers

  from t5x_like import load_pretrained

  work, out = str(tmp_path / "run"), str(tmp_path / "hf")
  overrides = [f"data.corpus={corpus}", f"data.cache_dir={cache_dir}", "data.seq_len=48",
               "model.hidden_size=32", "model.num_heads=2", "model.num_kv_heads=1",
               "model.intermediate_size=64", "model.num_layers=1", "train.steps=6",
               "train.eval_every=6", "train.eval_steps=2", "train.batch_size=8"]
  code, _, err = run_cli(capsys, ["train", "--config", "ul2_decoder_tiny", "--workdir", work,
                                  *overrides])
  assert code == 0, err
  with open(os.path.join(work, "metrics.jsonl"), encoding="utf-8") as f:
    evals = [json.loads(line) for line in f if '"eval"' in line]
  last = evals[-1]
  for label in ("R1", "R2", "X1", "X2", "X3", "X4", "S"):
    assert f"loss/{label}" in str(last), (label, last)
  code, _, err = run_cli(capsys, ["export", "--workdir", work, "--out", out])
  assert code == 0, err
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok.convert_tokens_to_ids(["[NLU]", "[NLG]", "[S2S]"]) == [7900, 7901, 7902]
  ids = np.array([tok("[NLG] 한국어와 English 텍스트").input_ids])
  assert ids[0, 1] == 7901  # after BOS, one id
  ours = load_pretrained(work).logits({"input_ids": ids})
  with torch.no_grad():
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()(
        torch.from_numpy(ids)).logits.numpy()
  assert np.abs(ours - theirs).max() < 1e-4
