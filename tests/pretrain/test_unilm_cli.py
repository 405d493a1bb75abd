"""`pretrain train --config unilm_tiny` on the bundled corpus: the loss falls, evaluation
reports each attention mode, the export is a BertForMaskedLM that transformers loads with our
logits on real rows; bad input gets one error line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import transformers

from pretrain import cli
from t5x_like import load_pretrained
from tests.pretrain.conftest import run_cli
from tests.pretrain.test_cli_errors import EXIT_BAD_INPUT, assert_one_error

pytestmark = pytest.mark.slow

MODES = ("bidirectional", "left_to_right", "right_to_left", "seq2seq")


def unilm_overrides(cache_dir: str, **extra: object) -> list[str]:
  """unilm_tiny at d=64, rows of 64 on the bundled corpus, 80 steps: a run of ~25 s."""
  values: dict[str, object] = {
      "model.hidden_size": 64, "model.intermediate_size": 128,
      "model.max_position_embeddings": 64, "data.seq_len": 64, "train.batch_size": 16,
      "train.steps": 80, "train.eval_every": 80, "train.eval_steps": 4,
      "train.log_every": 10, "checkpoint.every": 80, "optim.warmup_steps": 10,
      "data.corpus": "bundled", "data.cache_dir": cache_dir}
  values.update(extra)
  return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def unilm_workdir(tmp_path_factory, cache_dir) -> str:
  workdir = str(tmp_path_factory.mktemp("unilm") / "run")
  assert cli.main(["train", "--config", "unilm_tiny", "--workdir", workdir,
                   *unilm_overrides(cache_dir)]) == 0
  return workdir


def _metrics(workdir: str, split: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def test_unilm_tiny_trains_and_reports_each_mode(unilm_workdir):
  train = _metrics(unilm_workdir, "train")
  assert train[-1]["loss"] < train[0]["loss"] - 0.3, (train[0]["loss"], train[-1]["loss"])
  final = _metrics(unilm_workdir, "eval")[-1]
  total = 0
  for mode in MODES:
    assert final[f"predicted_tokens/{mode}"] > 0, mode
    assert np.isfinite(final[f"loss/{mode}"])
    total += final[f"predicted_tokens/{mode}"]
  assert total == final["predicted_tokens"]  # every row is in exactly one mode


def test_unilm_export_is_a_bert_for_masked_lm_with_our_logits(unilm_workdir):
  out = os.path.join(unilm_workdir, "export")
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["architectures"] == ["BertForMaskedLM"]
  hf = transformers.BertForMaskedLM.from_pretrained(out).eval()
  tok = transformers.AutoTokenizer.from_pretrained(out)
  enc = tok(["The committee opened the wooden bridge before the rain started.",
             "My neighbour painted a map.", "우리 가족은 오래된 다리를 방문했습니다."],
            ["It was late.", "Then it rained again on the harbour.", "지난 주말에"],
            padding=True, return_tensors="np")
  feed = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
  assert feed["token_type_ids"].max() == 1  # real segment pairs
  ours = load_pretrained(unilm_workdir).logits(feed)
  with torch.no_grad():
    theirs = hf(**{k: torch.tensor(v) for k, v in feed.items()}).logits.numpy()
  real = feed["attention_mask"] > 0
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("config, extra, needles", [
    ("t5_tiny", ["objective.name=unilm"], ["unilm", "model.family", "t5", "bert"]),
    ("unilm_tiny", ["objective.seq2seq_rate=-1"], ["objective.seq2seq_rate", ">= 0", "-1"]),
    ("unilm_tiny", ["objective.bidirectional_rate=0", "objective.left_to_right_rate=0",
                    "objective.right_to_left_rate=0", "objective.seq2seq_rate=0"],
     ["all 0"]),
    ("unilm_tiny", ["model.type_vocab_size=1"], ["model.type_vocab_size", "token types"]),
    ("unilm_tiny", ["data.pack_documents=true"], ["data.pack_documents", "unilm"]),
])
def test_bad_unilm_settings(capsys, tmp_path, cache_dir, config, extra, needles):
  workdir = str(tmp_path / "run")
  code, out, err = run_cli(capsys, ["train", "--config", config, "--workdir", workdir,
                                    f"data.cache_dir={cache_dir}", *extra])
  assert code == EXIT_BAD_INPUT and out == ""
  assert_one_error(err, *needles)
  assert not os.path.exists(workdir)
