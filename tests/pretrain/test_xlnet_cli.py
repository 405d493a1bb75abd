"""`pretrain` with the XLNet family: permutation LM with bi_data and memory trains (loss falls,
target accuracy rises), export to `XLNetLMHeadModel` (bi_data, mem_len, reuse_len kept) with
the same query-stream logits and tokenizer ids, and bad permutation settings refused with one
line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import sentencepiece as spm
import torch
import transformers

from data_pipelines.objectives import permutation_lm
from data_pipelines.tokenizer import load_tokenizer
from t5x_like import load_pretrained
from tests.pretrain.conftest import run_cli, snapshot
from tests.pretrain.test_cli_errors import EXIT_BAD_INPUT, assert_one_error

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def xlnet_overrides(corpus: str, cache_dir: str, **extra: object) -> list[str]:
  """Shrinks xlnet_tiny to a run of ~20 s: d=64, 2 layers, rows of 32 (5 targets)."""
  values: dict[str, object] = {
      "model.hidden_size": 64, "model.num_heads": 2, "model.intermediate_size": 128,
      "model.num_layers": 2, "data.seq_len": 32, "train.batch_size": 16, "train.steps": 300,
      "train.eval_every": 25, "train.eval_steps": 8, "train.log_every": 10,
      "checkpoint.every": 150, "train.export_at_end": "false", "optim.warmup_steps": 20,
      "optim.learning_rate": 0.003, "data.corpus": corpus, "data.cache_dir": cache_dir}
  values.update(extra)
  return [f"{k}={v}" for k, v in values.items()]


MEMORY_BI_DATA = {"model.bi_data": "true", "model.mem_len": 24, "model.reuse_len": 16}


def _metrics(workdir: str) -> tuple[list[dict], list[dict]]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return ([r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "eval"])


@pytest.fixture(scope="module")
def xlnet_workdir(tmp_path_factory, corpus, cache_dir) -> str:
  workdir = str(tmp_path_factory.mktemp("xlnet") / "run")
  from pretrain import cli
  # bi_data on (the second half of every batch is reversed text) and memory: rows in stream
  # order, 24 cached states per layer from the first 16 tokens of each row.
  assert cli.main(["train", "--config", "xlnet_tiny", "--workdir", workdir,
                   *xlnet_overrides(corpus, cache_dir, **MEMORY_BI_DATA)]) == 0
  return workdir


def test_xlnet_tiny_learns_permutation_lm(xlnet_workdir):
  train, evals = _metrics(xlnet_workdir)
  assert [r["step"] for r in evals] == list(range(25, 301, 25))
  assert train[-1]["loss"] < train[0]["loss"] - 1.0
  assert evals[-1]["loss"] < evals[0]["loss"] - 0.3
  # 160 held-out targets (the validation split holds two batches): a rise of 0.1 is > 3
  # standard errors
  assert evals[-1]["accuracy"] > evals[0]["accuracy"] + 0.1
  assert evals[-1]["accuracy"] > evals[-1]["unigram_baseline_accuracy"] + 0.1
  assert train[0]["predicted_tokens"] == 16 * 5  # round(32 / 6) targets per row


def test_xlnet_export_matches_transformers(xlnet_workdir, tmp_path, capsys):
  out = str(tmp_path / "hf")
  code, stdout, _ = run_cli(capsys, ["export", "--workdir", xlnet_workdir, "--out", out])
  assert code == 0 and '"step": 300' in stdout
  ours = load_pretrained(xlnet_workdir)
  hf = transformers.XLNetLMHeadModel.from_pretrained(out).eval()
  tok = load_tokenizer("bundled")
  vocab = tok.vocab_info()
  rng = np.random.default_rng(0)
  params = permutation_lm.PermutationLMParams()
  assert hf.config.bi_data and ours.config.model.bi_data
  assert (hf.config.mem_len, hf.config.reuse_len) == (24, 16)
  rows = [permutation_lm.make_example(rng.choice(vocab.normal_ids, 29).astype(np.int32), rng,
                                      params, vocab, reverse=i >= 2) for i in range(4)]
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k != "labels"}
  expected = ours.logits(batch)
  with torch.no_grad():
    got = hf(input_ids=torch.from_numpy(batch["input_ids"].astype(np.int64)),
             token_type_ids=torch.from_numpy(batch["token_type_ids"].astype(np.int64)),
             perm_mask=torch.from_numpy(batch["perm_mask"]),
             target_mapping=torch.from_numpy(batch["target_mapping"])).logits
  assert expected.shape == (4, 5, ours.config.model.vocab_size)
  assert np.max(np.abs(got.numpy() - expected)) < 1e-4
  assert np.std(expected) > 0.01

  auto = transformers.AutoTokenizer.from_pretrained(out)
  sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "spiece.model"))
  for text in ["Permutation language modelling.", "서울은 대한민국의 수도이다."]:
    assert auto(text)["input_ids"] == sp.encode(text) + [4, 3]  # A <sep> <cls>


@pytest.mark.parametrize("extra,needles", [
    (["objective.perm_size=5"], ["objective.perm_size", "5", "32"]),
    (["objective.num_predict=40"], ["objective.num_predict", "40"]),
    (["data.pack_documents=true"], ["data.pack_documents", "permutation_lm"]),
    (["objective.name=mlm"], ["objective.name", "xlnet"]),
    (["model.bi_data=true", "train.batch_size=6", "optim.grad_accum_steps=2"],
     ["model.bi_data", "train.batch_size (6)", "optim.grad_accum_steps (2)"]),
], ids=["perm_size_not_dividing", "too_many_predictions", "packing", "wrong_objective",
        "bi_data_batch"])
def test_bad_permutation_settings(capsys, tmp_path, corpus, cache_dir, extra, needles):
  workdir = str(tmp_path / "run")
  before = snapshot(cache_dir)
  code, out, err = run_cli(capsys, ["train", "--config", "xlnet_tiny", "--workdir", workdir,
                                    *xlnet_overrides(corpus, cache_dir), *extra])
  assert code == EXIT_BAD_INPUT, err
  assert out == ""
  assert_one_error(err, *needles)
  assert not os.path.exists(workdir)
  assert snapshot(cache_dir) == before
