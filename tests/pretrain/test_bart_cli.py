"""`pretrain` with the BART family: denoising trains (loss falls, reconstruction accuracy rises),
one-block and packed-document rows, export to `BartForConditionalGeneration` with the same
logits and tokenizer ids, bad noise settings refused with one line, and a corpus without
sentence ends trains with a warning."""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
import sentencepiece as spm
import torch
import transformers

from t5x_like import load_pretrained
from tests.pretrain.conftest import run_cli, snapshot, write_jsonl
from tests.pretrain.test_cli_errors import EXIT_BAD_INPUT, assert_one_error

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def bart_overrides(corpus: str, cache_dir: str, **extra: object) -> list[str]:
  """Shrinks bart_tiny to a run of a few seconds: d=32, 1+1 layers, rows of 32 + 32."""
  values: dict[str, object] = {
      "model.hidden_size": 32, "model.num_heads": 2, "model.intermediate_size": 64,
      "model.num_layers": 1, "model.num_decoder_layers": 1,
      "model.max_position_embeddings": 32, "data.seq_len": 32, "train.batch_size": 8,
      "train.steps": 60, "train.eval_every": 10, "train.eval_steps": 4, "train.log_every": 5,
      "checkpoint.every": 30, "train.export_at_end": "false", "optim.warmup_steps": 10,
      "optim.learning_rate": 0.01, "data.corpus": corpus, "data.cache_dir": cache_dir}
  values.update(extra)
  return [f"{k}={v}" for k, v in values.items()]


def _metrics(workdir: str) -> tuple[list[dict], list[dict]]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return ([r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "eval"])


@pytest.fixture(scope="module")
def bart_run(tmp_path_factory, corpus, cache_dir) -> tuple[str, str]:
  """(workdir, stderr) of a 60-step run on the shared (punctuated) corpus."""
  workdir = str(tmp_path_factory.mktemp("bart") / "run")
  from pretrain import cli
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = cli.main(["train", "--config", "bart_tiny", "--workdir", workdir,
                     *bart_overrides(corpus, cache_dir)])
  assert code == 0, err.getvalue()[-2000:]
  return workdir, err.getvalue()


@pytest.fixture(scope="module")
def bart_workdir(bart_run) -> str:
  return bart_run[0]


def test_bart_tiny_learns_to_denoise(bart_workdir):
  train, evals = _metrics(bart_workdir)
  assert [r["step"] for r in evals] == [10, 20, 30, 40, 50, 60]
  assert train[-1]["loss"] < train[0]["loss"] - 1.0
  assert evals[-1]["loss"] < evals[0]["loss"] - 0.5
  # 4 x 8 x 32 = 1024 held-out target tokens: a rise of 0.1 is > 3 standard errors
  assert evals[-1]["accuracy"] > evals[0]["accuracy"] + 0.1
  with open(os.path.join(bart_workdir, "config.yaml"), encoding="utf-8") as f:
    assert "target_len: 32" in f.read()
  assert train[0]["predicted_tokens"] == 8 * 32  # every target position of full blocks


def test_bart_export_matches_transformers(bart_workdir, tmp_path, capsys):
  out = str(tmp_path / "hf")
  code, stdout, _ = run_cli(capsys, ["export", "--workdir", bart_workdir, "--out", out])
  assert code == 0 and '"step": 60' in stdout
  ours = load_pretrained(bart_workdir)
  hf = transformers.BartForConditionalGeneration.from_pretrained(out).eval()
  rng = np.random.default_rng(0)
  vocab = ours.config.model.vocab_size
  batch = {"input_ids": rng.integers(6, vocab, (3, 32)),
           "decoder_input_ids": rng.integers(6, vocab, (3, 32))}
  mask = np.ones((3, 32), np.int64)
  mask[1, 20:] = 0
  expected = ours.logits({**batch, "attention_mask": mask})
  with torch.no_grad():
    got = hf(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()},
             attention_mask=torch.from_numpy(mask)).logits
  assert np.max(np.abs(got.numpy() - expected)) < 1e-4
  assert np.std(expected) > 0.01

  tok = transformers.AutoTokenizer.from_pretrained(out)
  sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "spiece.model"))
  for text in ["Denoising on a small BART.", "서울은 대한민국의 수도이다."]:
    assert tok(text)["input_ids"] == [3] + sp.encode(text) + [1]  # <s> ... </s>
  assert tok.mask_token_id == 5


def test_bart_packed_documents_train(tmp_path, corpus, cache_dir):
  from pretrain import cli
  workdir = str(tmp_path / "packed")
  assert cli.main(["train", "--config", "bart_tiny", "--workdir", workdir,
                   *bart_overrides(corpus, cache_dir, **{"data.pack_documents": "true",
                                                          "train.steps": 20,
                                                          "train.eval_every": 20})]) == 0
  train, evals = _metrics(workdir)
  assert train[-1]["loss"] < train[0]["loss"]
  assert 0 < train[0]["predicted_tokens"] <= 8 * 32
  assert evals and evals[0]["predicted_tokens"] > 0


def test_corpus_without_sentence_ends_trains_with_a_warning(tmp_path, capsys, cache_dir):
  docs = [" ".join(f"word{i % 37} token{(i * 7) % 23}" for i in range(j, j + 40))
          for j in range(200)]
  corpus = write_jsonl(str(tmp_path / "nostops.jsonl"), docs)
  workdir = str(tmp_path / "run")
  code, _, err = run_cli(capsys, ["train", "--config", "bart_tiny", "--workdir", workdir,
                                  *bart_overrides(corpus, cache_dir, **{"train.steps": 4,
                                                                        "train.eval_every": 4})])
  assert code == 0, err
  warnings = [line for line in err.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1, err
  assert "objective.permute_sentences=1.0" in warnings[0]
  assert "fewer than 2 sentences" in warnings[0]


def test_punctuated_corpus_gives_no_sentence_warning(bart_run):
  err = bart_run[1]
  assert "prepared " in err and "(block length 30" in err  # stderr was captured
  assert "warning:" not in err


@pytest.mark.parametrize("extra,needles", [
    (["objective.text_infilling=1.5"], ["objective.text_infilling", "[0, 1]", "1.5"]),
    (["objective.token_deletion=-0.2"], ["objective.token_deletion", "-0.2"]),
    (["objective.rotate=2"], ["objective.rotate", "2"]),
    (["objective.poisson_lambda=0"], ["objective.poisson_lambda", ">= 0.01"]),
    (["data.target_len=16"], ["data.target_len", "16", "32"]),
    (["objective.name=mlm"], ["objective.name", "bart"]),
], ids=["infilling_above_one", "deletion_negative", "rotate_above_one", "lambda_zero",
        "targets_too_short", "wrong_objective"])
def test_bad_denoising_settings(capsys, tmp_path, corpus, cache_dir, extra, needles):
  workdir = str(tmp_path / "run")
  before = snapshot(cache_dir)
  code, out, err = run_cli(capsys, ["train", "--config", "bart_tiny", "--workdir", workdir,
                                    *bart_overrides(corpus, cache_dir), *extra])
  assert code == EXIT_BAD_INPUT, err
  assert out == ""
  assert_one_error(err, *needles)
  assert not os.path.exists(workdir)
  assert snapshot(cache_dir) == before
