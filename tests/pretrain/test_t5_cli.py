"""`pretrain` with the T5 family: span corruption trains (loss falls, target accuracy rises),
concatenated and packed-document data, export to `T5ForConditionalGeneration` with the same
logits and tokenizer ids, and bad span-corruption settings refused with one line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import sentencepiece as spm
import torch
import transformers

from t5x_like import load_pretrained
from tests.pretrain.conftest import run_cli, snapshot
from tests.pretrain.test_cli_errors import EXIT_BAD_INPUT, assert_one_error

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def t5_overrides(corpus: str, cache_dir: str, **extra: object) -> list[str]:
  """Shrinks t5_tiny to a run of a few seconds: d=32, 1+1 layers, inputs 32, targets 8."""
  values: dict[str, object] = {
      "model.hidden_size": 32, "model.num_heads": 2, "model.head_dim": 16,
      "model.intermediate_size": 64, "model.num_layers": 1, "model.num_decoder_layers": 1,
      "data.seq_len": 32, "train.batch_size": 8, "train.steps": 60, "train.eval_every": 10,
      "train.eval_steps": 4, "train.log_every": 5, "checkpoint.every": 30,
      "train.export_at_end": "false", "optim.warmup_steps": 10, "optim.learning_rate": 0.03,
      "data.corpus": corpus, "data.cache_dir": cache_dir}
  values.update(extra)
  return [f"{k}={v}" for k, v in values.items()]


def _metrics(workdir: str) -> tuple[list[dict], list[dict]]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return ([r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "eval"])


@pytest.fixture(scope="module")
def t5_workdir(tmp_path_factory, corpus, cache_dir) -> str:
  workdir = str(tmp_path_factory.mktemp("t5") / "run")
  from pretrain import cli
  assert cli.main(["train", "--config", "t5_tiny", "--workdir", workdir,
                   *t5_overrides(corpus, cache_dir)]) == 0
  return workdir


def test_t5_tiny_learns_span_corruption(t5_workdir):
  train, evals = _metrics(t5_workdir)
  assert [r["step"] for r in evals] == [10, 20, 30, 40, 50, 60]
  assert train[-1]["loss"] < train[0]["loss"] - 1.0
  assert evals[-1]["loss"] < evals[0]["loss"] - 0.5
  # 256 held-out targets: a rise of 0.1 is > 3 standard errors of either estimate
  assert evals[-1]["accuracy"] > evals[0]["accuracy"] + 0.1
  # targets of full blocks: 8 per row (random_spans_helper(32) -> 35 raw tokens, 8 targets)
  with open(os.path.join(t5_workdir, "config.yaml"), encoding="utf-8") as f:
    assert "target_len: 8" in f.read()
  assert train[0]["predicted_tokens"] == 8 * 8


def test_t5_export_matches_transformers(t5_workdir, tmp_path, capsys):
  out = str(tmp_path / "hf")
  code, stdout, _ = run_cli(capsys, ["export", "--workdir", t5_workdir, "--out", out])
  assert code == 0 and '"step": 60' in stdout
  ours = load_pretrained(t5_workdir)
  hf = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
  rng = np.random.default_rng(0)
  vocab = ours.config.model.vocab_size
  batch = {"input_ids": rng.integers(0, vocab, (3, 32)),
           "decoder_input_ids": rng.integers(0, vocab, (3, 8))}
  expected = ours.logits(batch)
  with torch.no_grad():
    got = hf(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}).logits
  assert np.max(np.abs(got.numpy() - expected)) < 1e-4
  assert np.std(expected) > 0.01

  tok = transformers.AutoTokenizer.from_pretrained(out)
  sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "spiece.model"))
  for text in ["Span corruption on a small T5.", "서울은 대한민국의 수도이다."]:
    assert tok(text)["input_ids"] == sp.encode(text) + [1]  # T5 appends EOS
  assert tok.convert_tokens_to_ids("<extra_id_0>") == vocab - 1


def test_t5_packed_documents_train(tmp_path, corpus, cache_dir):
  from pretrain import cli
  workdir = str(tmp_path / "packed")
  assert cli.main(["train", "--config", "t5_tiny", "--workdir", workdir,
                   *t5_overrides(corpus, cache_dir, **{"data.pack_documents": "true",
                                                        "train.steps": 20,
                                                        "train.eval_every": 20})]) == 0
  train, evals = _metrics(workdir)
  assert train[-1]["loss"] < train[0]["loss"]
  # packed rows hold fewer targets than full blocks (no padding is scored)
  assert 0 < train[0]["predicted_tokens"] <= 8 * 8
  assert evals and evals[0]["predicted_tokens"] > 0


@pytest.mark.parametrize("extra,needles", [
    (["objective.noise_density=0"], ["objective.noise_density", "(0, 1)", "0.0"]),
    (["objective.noise_density=1.5"], ["objective.noise_density", "1.5"]),
    (["objective.mean_noise_span_length=0.5"], ["objective.mean_noise_span_length", ">= 1"]),
    (["data.seq_len=2048"], ["sentinel", "100"]),
    (["data.target_len=4"], ["data.target_len", "4", "8"]),
    (["objective.name=mlm"], ["objective.name", "t5"]),
], ids=["density_zero", "density_above_one", "short_spans", "no_room_for_sentinels",
        "targets_too_short", "wrong_objective"])
def test_bad_span_corruption_settings(capsys, tmp_path, corpus, cache_dir, extra, needles):
  workdir = str(tmp_path / "run")
  before = snapshot(cache_dir)
  code, out, err = run_cli(capsys, ["train", "--config", "t5_tiny", "--workdir", workdir,
                                    *t5_overrides(corpus, cache_dir), *extra])
  assert code == EXIT_BAD_INPUT, err
  assert out == ""
  assert_one_error(err, *needles)
  assert not os.path.exists(workdir)
  assert snapshot(cache_dir) == before
