"""The train benchmarks' harness: specs are checked when written, every train suite's command
names a spec's shapes, and the timing and statistics treat both sides alike."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from benchmarks import run_all, train_harness
from benchmarks.bench_train import SPEC as BERT
from benchmarks.train_sides import Side, run_interleaved

TRAIN_SUITES = [s for s in run_all.SUITES if s.name.startswith("train_")]


def _spec_fields(spec):
  return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}


def test_a_spec_missing_a_field_names_it():
  fields = _spec_fields(BERT)
  del fields["hf_optimizer"]
  with pytest.raises(TypeError, match="hf_optimizer"):
    type(BERT)(**fields)


@pytest.mark.parametrize("change, error, message", [
    ({"default_shapes": "bert_tiny,bert_huge"}, ValueError,
     "default_shapes 'bert_tiny,bert_huge' must name shapes from bert_tiny, bert_small"),
    ({"shapes": {}}, ValueError, "no shapes"),
    ({"overrides": ("model.dropout_rate",)}, ValueError, "must be key=value"),
    ({"make_batches": None}, TypeError, "make_batches must be callable"),
])
def test_a_spec_whose_fields_do_not_fit_is_refused(change, error, message):
  with pytest.raises(error, match=message):
    dataclasses.replace(BERT, **change)


@pytest.mark.parametrize("suite", TRAIN_SUITES, ids=lambda s: s.name)
def test_every_train_suite_names_shapes_of_its_spec(suite):
  spec = importlib.import_module(f"benchmarks.{suite.module}").SPEC
  for args in (suite.args, suite.quick_args):
    shapes = args[args.index("--shapes") + 1].split(",")
    assert set(shapes) <= set(spec.shapes)
    assert ("--dtype" in args) <= spec.dtypes
    for shape in shapes:  # each loads as a valid config on one device
      config = train_harness.shape_config(spec, shape, 10)
      assert config.mesh.data == config.mesh.fsdp == config.mesh.tensor == 1


def test_sides_alternate_in_rounds_after_warmup_and_stats_compare_them():
  order = []

  def side(label):
    def run(i):
      order.append((label, i))
      return float(i)
    return Side(run)

  ours, hf = side("ours"), side("hf")
  run_interleaved(ours, hf, steps=5, warmup=2, rounds=2)
  assert order == [("ours", 0), ("hf", 0), ("ours", 1), ("hf", 1),
                   *[("ours", i) for i in (2, 3, 4)], *[("hf", i) for i in (2, 3, 4)],
                   *[("ours", i) for i in (5, 6)], *[("hf", i) for i in (5, 6)]]
  assert len(ours.times) == len(hf.times) == 5 and ours.losses == [2.0, 3.0, 4.0, 5.0, 6.0]
  ours.times, hf.times = [0.5] * 5, [1.0, 1.0, 2.0, 1.0, 9.0]
  row = train_harness.add_side_stats({}, ours, hf, tokens=1000, flops_per_step=1e9, peak=1e10)
  assert row["ours_tokens_per_s"] == 2000 and row["hf_tokens_per_s"] == 1000
  assert row["ratio"] == 2.0 and row["ours_mfu"] == 0.2 and row["hf_mfu"] == 0.1
  assert row["hf_first_loss"] == 2.0 and row["hf_last_loss"] == 6.0


def test_command_line_refuses_unknown_shapes_and_too_few_steps(capsys):
  with pytest.raises(SystemExit):
    train_harness.parse_args(BERT, ["--shapes", "bert_huge"])
  assert "unknown shapes ['bert_huge']; known: bert_tiny, bert_small" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    train_harness.parse_args(BERT, ["--steps", "2", "--rounds", "4"])
  assert "--steps must be >= --rounds" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # BERT offers no bf16 run
    train_harness.parse_args(BERT, ["--dtype", "bfloat16"])
