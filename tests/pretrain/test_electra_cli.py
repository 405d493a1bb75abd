"""`pretrain` with the ELECTRA family: replaced-token detection trains (both losses fall, the
discriminator beats the all-"original" baseline), exports the discriminator and the generator
to transformers with the same logits, and bad input gets one error line."""

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


def electra_overrides(corpus: str, cache_dir: str, **extra: object) -> list[str]:
  """electra_tiny at d=64 (generator d=32), rows of 32, 120 steps: a run of ~30 s."""
  values: dict[str, object] = {
      "model.hidden_size": 64, "model.num_heads": 2, "model.intermediate_size": 128,
      "model.embedding_size": 32, "model.generator_hidden_size": 32,
      "model.generator_intermediate_size": 64, "model.max_position_embeddings": 32,
      "data.seq_len": 32, "train.batch_size": 16, "train.steps": 120, "train.eval_every": 120,
      "train.eval_steps": 4, "train.log_every": 20, "checkpoint.every": 120,
      "optim.warmup_steps": 10, "data.corpus": corpus, "data.cache_dir": cache_dir}
  values.update(extra)
  return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def electra_workdir(tmp_path_factory, corpus, cache_dir) -> str:
  workdir = str(tmp_path_factory.mktemp("electra") / "run")
  assert cli.main(["train", "--config", "electra_tiny", "--workdir", workdir,
                   *electra_overrides(corpus, cache_dir)]) == 0
  return workdir


def _metrics(workdir: str, split: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def test_electra_tiny_trains_and_the_discriminator_beats_the_baseline(electra_workdir):
  train = _metrics(electra_workdir, "train")
  for key in ("loss", "generator_loss", "discriminator_loss"):
    assert train[-1][key] < train[0][key], (key, train[0][key], train[-1][key])
  final = _metrics(electra_workdir, "eval")[-1]
  baseline = 1.0 - final["replaced_fraction"]  # every token called original
  assert 0.05 < final["replaced_fraction"] < 0.2
  assert final["discriminator_accuracy"] > baseline + 0.01, final
  np.testing.assert_allclose(final["loss"], final["generator_loss"] +
                             50.0 * final["discriminator_loss"], rtol=1e-4)


def test_electra_export_matches_transformers(electra_workdir):
  out = os.path.join(electra_workdir, "export")
  assert os.path.isdir(os.path.join(out, "generator"))
  pretrained = load_pretrained(electra_workdir)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  enc = tok(["The committee opened the wooden bridge.", "My neighbour painted a map."],
            padding=True, return_tensors="np")
  feed = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
  ours = pretrained.logits(feed)
  disc = transformers.AutoModelForPreTraining.from_pretrained(out).eval()
  assert type(disc).__name__ == "ElectraForPreTraining"
  gen = transformers.AutoModelForMaskedLM.from_pretrained(os.path.join(out, "generator")).eval()
  with torch.no_grad():
    theirs = disc(**{k: torch.tensor(v) for k, v in feed.items()}).logits.numpy()
    gen_logits = gen(**{k: torch.tensor(v) for k, v in feed.items()}).logits.numpy()
  real = feed["attention_mask"] > 0
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=1e-4)
  params = pretrained.params
  ours_gen = pretrained.model.apply({"params": params}, feed["input_ids"],
                                    feed["attention_mask"], feed["token_type_ids"],
                                    tower="generator")
  np.testing.assert_allclose(np.asarray(ours_gen)[real], gen_logits[real], atol=1e-4,
                             rtol=1e-4)


@pytest.mark.parametrize("extra, needles", [
    (["model.vocab_size=1234"], ["model.vocab_size", "1234", "8000"]),
    (["model.generator_num_heads=3"], ["model.generator_hidden_size (32)",
                                       "model.generator_num_heads (3)"]),
    (["objective.temperature=0"], ["objective.temperature", "> 0"]),
    (["data.pack_documents=true"], ["data.pack_documents", "replaced_token_detection"]),
])
def test_bad_electra_settings(capsys, tmp_path, corpus, cache_dir, extra, needles):
  workdir = str(tmp_path / "run")
  code, out, err = run_cli(capsys, ["train", "--config", "electra_tiny", "--workdir", workdir,
                                    *electra_overrides(corpus, cache_dir), *extra])
  assert code == EXIT_BAD_INPUT and out == ""
  assert_one_error(err, *needles)
  assert not os.path.exists(workdir)
