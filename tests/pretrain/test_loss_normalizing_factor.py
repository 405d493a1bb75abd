"""`objective.loss_normalizing_factor` reaches the train step through `pretrain train`.

T5X semantics: the summed loss is divided by the constant instead of the number of predicted
tokens, so the gradient (and `grad_norm`) scales by tokens / constant, while the logged `loss`
stays the cross-entropy per predicted token.

The first step is never logged (its window holds compilation), so the runs are compared at
step 2: with one warmup step the learning rate of step 1 is 0, so both runs take step 2's
gradient at the initial parameters on the same batch and the ratio is exact up to rounding.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.pretrain.conftest import run_cli, tiny_overrides

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

FACTOR = 1000.0


def _first_train_record(capsys: pytest.CaptureFixture[str], workdir: str, corpus: str,
                        cache_dir: str, factor: float) -> dict[str, float]:
  overrides = tiny_overrides(corpus, cache_dir, **{
      "train.steps": 2, "train.log_every": 2, "train.eval_steps": 0, "checkpoint.every": 2,
      "optim.warmup_steps": 1, "objective.loss_normalizing_factor": factor})
  code, _, err = run_cli(capsys, ["train", "--config", "bert_tiny", "--workdir", workdir,
                                  *overrides])
  assert code == 0, err
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  (record,) = [r for r in records if r["split"] == "train" and r["step"] == 2]
  return record


def test_constant_factor_scales_grad_norm_not_loss(capsys, tmp_path, corpus, cache_dir):
  by_tokens = _first_train_record(capsys, str(tmp_path / "tokens"), corpus, cache_dir, 0)
  by_const = _first_train_record(capsys, str(tmp_path / "const"), corpus, cache_dir, FACTOR)
  tokens = by_tokens["predicted_tokens"]
  assert tokens == by_const["predicted_tokens"] > 0
  assert tokens != FACTOR  # else the two normalisers would agree and prove nothing
  # The logged loss is per predicted token whichever normaliser the gradient uses.
  assert by_const["loss"] == pytest.approx(by_tokens["loss"], rel=1e-6)
  assert by_const["grad_norm"] == pytest.approx(by_tokens["grad_norm"] * tokens / FACTOR,
                                                rel=1e-4)
