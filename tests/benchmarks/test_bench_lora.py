"""benchmarks.bench_lora at a tiny shape: the report's fields, LoRA's smaller state, its
targets and table (no timing assertions)."""

from __future__ import annotations

from benchmarks import bench_lora, run_all


def test_lora_report_has_its_fields_and_a_smaller_state():
  report = bench_lora.measure("bert_micro", ("full", "lora_qv"), steps=1, warmup=1, rounds=1,
                              in_process=True)
  assert report["memory"] == "one process (all modes)"
  assert report["num_layers"] == 1 and report["hidden_size"] == 32
  full, lora = report["results"]
  assert (full["mode"], lora["mode"]) == ("full", "lora_qv")
  assert full["lora_targets"] == [] and lora["lora_targets"] == ["attention/query", "attention/value"]
  for r in (full, lora):
    for key in ("median_step_s", "min_step_s", "compile_s", "peak_host_mb",
                "peak_host_mb_before_save", "save_s", "first_loss", "last_loss"):
      assert r[key] > 0, key
    assert len(r["step_s"]) == 1
  # rank 8 on query and value of one layer, d=32: 2 x (32x8 + 8x32)
  assert lora["trainable_params"] == 2 * (32 * 8 + 8 * 32) == lora["params"] - full["params"]
  assert full["trainable_params"] == full["params"]
  assert 0 < lora["opt_state_bytes"] < full["opt_state_bytes"] / 10
  assert lora["saved_state_bytes"] < full["saved_state_bytes"] / 10
  assert 0 < lora["checkpoint_bytes"] < full["checkpoint_bytes"]
  assert lora["opt_state_smaller"] == full["opt_state_bytes"] / lora["opt_state_bytes"]
  assert lora["step_time_vs_full"] == lora["median_step_s"] / full["median_step_s"]
  assert full["step_time_vs_full"] == full["checkpoint_smaller"] == 1.0
  # The frozen base is saved once, and holds the full model's parameters.
  assert report["lora_base_bytes"] > lora["checkpoint_bytes"]

  # The suite judges the default-targets row and renders a row per mode.
  suite = next(s for s in run_all.SUITES if s.name == "lora")
  targets = run_all.suite_targets(suite, {"report": report})
  assert [t.what.rsplit(", ", 1)[1] for t in targets] == [
      "optimiser state", "step checkpoint on disk", "median step time"]
  assert all(t.met is not None for t in targets)
  lines = suite.table(report)
  assert sum(line.startswith(("| full |", "| lora_qv |"))
             for line in lines) == 2
