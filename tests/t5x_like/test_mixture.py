"""The `mixture` objective record: member configs, the lengths each member cuts from one
cache, one row layout for every member, the member feature, and the per-member eval sums."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from data_pipelines.objectives import mixture as mixture_lib
from data_pipelines.tokenizer import load_tokenizer
from pretrain import data as data_lib
from t5x_like.config import ConfigError, load_config
from t5x_like.objectives import mixture
from t5x_like.training import evaluation, tasks

UL2_LABELS = ("R1", "R2", "X1", "X2", "X3", "X4", "S")


@pytest.fixture(scope="module")
def tokenizer():
  return load_tokenizer("bundled_ul2")


def test_ul2_presets_list_the_seven_denoisers():
  for preset in ("ul2_tiny", "ul2_base"):
    c = load_config(preset)
    assert c.objective.name == "mixture" and c.data.tokenizer == "bundled_ul2"
    assert mixture.labels(c) == UL2_LABELS
    assert [m.paradigm for m in c.objective.mixture] == ["[NLU]"] * 2 + ["[NLG]"] * 4 + ["[S2S]"]
  base = load_config("ul2_base")
  assert [m.rate for m in base.objective.mixture] == [1.0] * 7


def test_raw_lengths_per_member_at_512_and_one_cache():
  c = load_config("ul2_tiny", ["data.seq_len=512", "objective.paradigm_tokens=false"])
  raws = [mixture._raw_length(c, k) for k in range(7)]  # pylint: disable=protected-access
  assert raws == [568, 588, 766, 908, 600, 1006, 511]
  assert mixture.block_length(c) == 1006 and mixture.target_length(c) == 512
  # With paradigm tokens each denoiser is sized for 511 inputs; the row still holds 512.
  c = load_config("ul2_tiny", ["data.seq_len=512"])
  assert mixture.block_length(c) == 1004 and mixture.target_length(c) == 511


def test_every_member_makes_the_same_row_layout(tokenizer):
  c = data_lib.resolve_lengths(load_config("ul2_tiny", ["data.seq_len=64"]))
  make = data_lib.make_objective(c, tokenizer)
  paradigms = dict(tokenizer.vocab_info().paradigm_ids)
  block = np.random.default_rng(0).integers(10, 7000, data_lib.block_length(c)).astype(np.int32)
  cumulative = np.cumsum(mixture_lib.probabilities([1] * 7))
  seen = set()
  shapes = None
  for i in range(300):
    row = make(block, np.random.default_rng([0, 0, i]))
    k = int(row["mixture_member"])
    assert k == mixture_lib.draw_member(np.random.default_rng([0, 0, i]), cumulative)
    seen.add(k)
    got = {f: v.shape for f, v in row.items()}
    assert shapes is None or got == shapes
    shapes = got
    assert row["input_ids"][0] == paradigms[c.objective.mixture[k].paradigm]
    real = row["segment_ids"] > 0
    assert real[0] and np.all(row["segment_ids"][real] == 1)
    if k < 6:  # span denoisers fill the encoder exactly
      assert real.all()
  assert seen == set(range(7))
  assert shapes["input_ids"] == (64,) and shapes["labels"] == (c.data.target_len,)


def test_paradigm_tokens_off_prepends_nothing(tokenizer):
  c = data_lib.resolve_lengths(load_config("ul2_tiny", ["data.seq_len=64",
                                                         "objective.paradigm_tokens=false"]))
  make = data_lib.make_objective(c, tokenizer)
  block = np.arange(10, 10 + data_lib.block_length(c), dtype=np.int32)
  for i in range(50):
    row = make(block, np.random.default_rng([0, 0, i]))
    assert row["input_ids"][0] < 7900  # an ordinary piece, not [NLU]/[NLG]/[S2S]


@pytest.mark.parametrize("overrides, needles", [
  (["objective.mixture=[]"], ["objective.mixture is empty"]),
  (["objective.mixture.2.rate=0"], ["objective.mixture.2.rate must be positive, got 0.0"]),
  (["objective.mixture.0.rate=-1"], ["objective.mixture.0.rate must be positive"]),
  (["objective.mixture.1.name=nope"], ["name 'nope' is not one of"]),
  (["objective.mixture=[{name: mlm, rate: 1}]"],
   ["objective.mixture.0: objective 'mlm' does not train model.family 't5'"]),
  (["objective.mixture=[{name: span_corruption, label: A}, {name: span_corruption, label: A}]"],
   ["objective.mixture.1.label 'A' is used twice"]),
  (["objective.mixture.0.z_loss=0.1"], ["objective.mixture.0.z_loss: set objective.z_loss"]),
])
def test_bad_mixtures_are_one_config_error(overrides, needles):
  with pytest.raises(ConfigError) as e:
    load_config("ul2_tiny", overrides)
  for needle in needles:
    assert needle in str(e.value)


def test_target_len_too_short_names_the_member_and_the_length():
  c = load_config("ul2_tiny", ["data.seq_len=512", "data.target_len=200"])
  with pytest.raises(ConfigError, match=r"data.target_len \(200\) is too short for "
                     r"objective.mixture.2 \(X1: span_corruption\): it makes targets of up to "
                     r"510 tokens from inputs of 511; .* >= 510"):
    data_lib.resolve_lengths(c)


def test_tokenizer_without_paradigm_tokens_is_refused():
  c = data_lib.resolve_lengths(load_config("ul2_tiny", ["data.tokenizer=bundled",
                                                         "model.vocab_size=8000"]))
  with pytest.raises(ConfigError, match=r"objective.mixture.0 \(R1\): paradigm token \[NLU\] "
                     r"is not reserved by tokenizer"):
    data_lib.check_objective(c, load_tokenizer("bundled"))


def test_member_eval_sums_add_up_to_the_total(tokenizer):
  c = data_lib.resolve_lengths(load_config("ul2_tiny", [
      "data.seq_len=32", "model.hidden_size=32", "model.num_heads=2", "model.head_dim=16",
      "model.intermediate_size=64", "model.num_layers=1", "model.num_decoder_layers=1"]))
  task = tasks.make_task(c)
  assert task.features[-1] == "mixture_member"
  make = data_lib.make_objective(c, tokenizer)
  block = np.random.default_rng(1).integers(10, 7000, data_lib.block_length(c)).astype(np.int32)
  rows = [make(block, np.random.default_rng([0, 0, i])) for i in range(8)]
  batch = {f: np.stack([r[f] for r in rows]) for f in task.features}
  params = jax.jit(task.init)(jax.random.PRNGKey(0))["params"]
  out, _ = jax.jit(evaluation.make_eval_step(task))(params, batch, None)
  for key in ("loss_sum", "count", "correct"):
    parts = sum(float(out[f"{key}/{label}"]) for label in UL2_LABELS)
    np.testing.assert_allclose(parts, float(out[key]), rtol=1e-5)
  for k, label in enumerate(UL2_LABELS):
    labels = batch["labels"][batch["mixture_member"] == k]
    assert float(out[f"count/{label}"]) == np.sum(labels != -100)
