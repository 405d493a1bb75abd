"""`python -m benchmarks.run_all`: children run, results kept per suite, section rendered."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks import run_all
from t5x_like import config as config_lib

PROSE_BEFORE = "# Benchmarks\n\nMethod notes written by hand.\n\n"
PROSE_AFTER = "\n## How each benchmark works\n\nMore prose.\n"


def _doc(tmp_path):
  path = tmp_path / "bench.md"
  path.write_text(PROSE_BEFORE + run_all.BEGIN + "\nold\n" + run_all.END + "\n" + PROSE_AFTER,
                  encoding="utf-8")
  return path


def test_quick_run_writes_section_and_keeps_other_suites(tmp_path):
  doc = _doc(tmp_path)
  assert run_all.main(["--quick", "--only", "span_corruption,denoising,permutation_lm",
                       "--out", str(doc)]) == 0
  text = doc.read_text(encoding="utf-8")
  assert text.startswith(PROSE_BEFORE) and text.endswith(PROSE_AFTER)
  assert "\nold\n" not in text and text.count(run_all.BEGIN) == 1
  results = json.loads(doc.with_suffix(".json").read_text(encoding="utf-8"))
  assert set(results["suites"]) == {"span_corruption", "denoising", "permutation_lm"}
  for entry in results["suites"].values():
    assert entry["quick"] and entry["exit_code"] == 0
    assert entry["peak_rss_mb"] > 10 and entry["wall_s"] > 0 and entry["child_cpu_s"] > 0
    assert entry["report"]["results"][0]["tokens_per_s"] > 0
  # Each suite's table and target row come from its own child's report.
  span = results["suites"]["span_corruption"]["report"]
  assert f"| {span['results'][0]['variant']} | {span['results'][0]['tokens_per_s']:,.0f} |" in text
  assert "span corruption objective, raw tokens/s on one core" in text
  assert "### denoising: " in text and "### train_bert" not in text
  # The permutation LM suite runs HF's collator on the same rows as the peer: both predict
  # about L/6 tokens per row (ours exactly round(128 / 6) = 21; HF's spans vary, over 64 rows
  # its mean is well inside 21 +- 6).
  rows = {r["variant"].split(" (")[0]: r
          for r in results["suites"]["permutation_lm"]["report"]["results"]}
  assert rows["default"]["predicted_per_record"] == 21 and rows["default"]["vs_hf"] > 0
  hf = rows["HF DataCollatorForPermutationLanguageModeling"]
  assert 15 < hf["predicted_per_record"] < 27 and hf["vs_hf"] == 1.0
  assert rows["perm_mask [L, L] float32 alone"]["vs_hf"] is None

  # Re-running one suite replaces only that suite's entry: mark the stored span-corruption
  # entry, re-run it alone; the mark is gone, the other suites' entries are untouched.
  results["suites"]["span_corruption"]["utc"] = "1999-01-01 00:00"
  doc.with_suffix(".json").write_text(json.dumps(results), encoding="utf-8")
  assert run_all.main(["--quick", "--only", "span_corruption", "--out", str(doc)]) == 0
  results2 = json.loads(doc.with_suffix(".json").read_text(encoding="utf-8"))
  assert results2["suites"]["denoising"] == results["suites"]["denoising"]
  assert results2["suites"]["permutation_lm"] == results["suites"]["permutation_lm"]
  assert results2["suites"]["span_corruption"]["utc"].startswith("20")
  assert results2["suites"]["span_corruption"]["report"]["results"][0]["tokens_per_s"] > 0
  assert results2["suites"]["span_corruption"]["machine"] == results2["machine"]
  # Quick figures are shown but never judged.
  text = doc.read_text(encoding="utf-8")
  assert "span corruption objective, raw tokens/s on one core (quick settings)" in text
  assert "| not judged |" in text and "| met |" not in text and "NOT met" not in text


def test_failing_suite_keeps_previous_results_and_exits_1(tmp_path, monkeypatch, capsys):
  doc = _doc(tmp_path)
  assert run_all.main(["--quick", "--only", "span_corruption", "--out", str(doc)]) == 0
  before = doc.with_suffix(".json").read_text(encoding="utf-8")
  broken = tuple(dataclasses.replace(s, module="no_such_benchmark")
                 if s.name == "span_corruption" else s for s in run_all.SUITES)
  monkeypatch.setattr(run_all, "SUITES", broken)
  assert run_all.main(["--quick", "--only", "span_corruption", "--out", str(doc)]) == 1
  assert "failed: span_corruption (exit code 1)" in capsys.readouterr().err
  after = json.loads(doc.with_suffix(".json").read_text(encoding="utf-8"))
  assert after["suites"] == json.loads(before)["suites"]


def test_markdown_without_markers_is_refused_unchanged(tmp_path):
  doc = tmp_path / "bench.md"
  doc.write_text("# Benchmarks\n\nno markers here\n", encoding="utf-8")
  with pytest.raises(SystemExit, match="has no '<!-- run_all:begin -->'"):
    run_all.write_markdown(doc, run_all.BEGIN + "\nx\n" + run_all.END + "\n")
  assert doc.read_text(encoding="utf-8") == "# Benchmarks\n\nno markers here\n"


def test_unknown_suite_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as e:
    run_all.main(["--only", "train_gpt"])
  assert e.value.code == 2 and "unknown suites ['train_gpt']" in capsys.readouterr().err


def _train_entry(rows):
  report = {"xla_matmul_peak": 1.9e11, "torch_matmul_peak": 1.8e11, "torch": "2", "transformers":
            "5", "torch_threads": 2, "results": rows}
  return {"command": "python -m benchmarks.bench_train", "quick": False, "exit_code": 0,
          "utc": "2026-11-22 12:00", "wall_s": 60.0, "other_cpu_cores": 0.0,
          "peak_rss_mb": 1500.0, "report": report}


def _row(shape, ratio, mfu):
  return {"shape": shape, "batch_size": 16, "seq_len": 128, "ours_tokens_per_s": 1000.0 * ratio,
          "hf_tokens_per_s": 1000.0, "ratio": ratio, "ours_mfu": mfu, "hf_mfu": 0.3,
          "ours_median_s": 0.5, "hf_median_s": 0.6, "ours_compile_s": 3.0,
          "ours_first_loss": 9.0, "ours_last_loss": 7.0, "hf_first_loss": 9.0,
          "hf_last_loss": 7.0}


def test_targets_judge_each_shape_and_the_bert_small_mfu():
  suite = next(s for s in run_all.SUITES if s.name == "train_bert")
  entry = _train_entry([_row("bert_tiny", 1.25, 0.30), _row("bert_small", 1.24, 0.70)])
  got = {(t.what, t.met) for t in run_all.suite_targets(suite, entry)}
  assert got == {("bert_tiny: train tokens/s vs HF BertForMaskedLM", True),
                 ("bert_small: train tokens/s vs HF BertForMaskedLM", False),
                 ("bert_small: MFU (measured matmul peak)", True)}
  text = run_all.render({"suites": {"train_bert": entry}})
  assert "| bert_small: train tokens/s vs HF BertForMaskedLM | 1.24× | ≥ 1.25× | **NOT met** |" \
      in text
  assert "| bert_small: MFU (measured matmul peak) | 70.0% | ≥ 70% | met |" in text
  assert "| bert_tiny | 16×128 = 2,048 | 1,250 | 1,000 | 1.25× | 30.0% |" in text


def test_missing_hf_packages_are_named_before_anything_runs(tmp_path, monkeypatch):
  real = run_all.importlib.util.find_spec
  monkeypatch.setattr(run_all.importlib.util, "find_spec",
                      lambda name: None if name == "transformers" else real(name))
  doc = _doc(tmp_path)
  before = doc.read_text(encoding="utf-8")
  with pytest.raises(SystemExit, match=r"suites train_t5, mlm_objective compare against HF "
                     r"peers and need transformers, which are not installed: pip install"):
    run_all.main(["--only", "span_corruption,train_t5,mlm_objective", "--out", str(doc)])
  assert doc.read_text(encoding="utf-8") == before
  assert not doc.with_suffix(".json").exists()


def test_a_stored_report_missing_a_field_is_named_not_a_crash():
  entry = _train_entry([_row("bert_small", 1.3, 0.5)])
  del entry["report"]["results"][0]["ours_mfu"]
  del entry["other_cpu_cores"]  # written by older versions of run_all
  text = run_all.render({"suites": {"train_bert": entry}})
  assert "cannot be rendered — KeyError: 'ours_mfu'" in text
  assert "python -m benchmarks.run_all --only train_bert" in text
  assert "| train_bert | 2026-11-22 12:00 | 60 | – | – |" in text
  # Its targets are not dropped silently: one row says they were not judged, and why.
  assert ("| train_bert: stored report unreadable, re-run with --only train_bert | – | – | "
          "not judged |") in text
  # A results file from before `quick` and the machine's package list were recorded renders.
  del entry["quick"]
  text = run_all.render({"suites": {"train_bert": entry}, "machine": {"nproc": 2}})
  assert "Machine (the latest run): 2 CPUs (?), Python ?" in text
  assert "train_bert: package versions not recorded" in text


def test_suites_measured_under_other_versions_are_named():
  facts = {"nproc": 2, "cpu": "x", "python": "3.11", "jax": "0.10.2", "flax": "1",
           "optax": "1", "numpy": "2", "torch": "2.13", "transformers": "5.24"}
  old = _train_entry([_row("bert_small", 1.3, 0.5)])
  old["machine"] = dict(facts, transformers="5.23")
  new = _train_entry([_row("bert_tiny", 2.0, 0.4)])
  new["machine"] = dict(facts)
  suites = {"train_bert": old, "train_xlnet": new}
  text = run_all.render({"suites": suites, "machine": facts})
  assert "Suites measured under other versions than the machine line: train_bert: measured " \
      "with transformers 5.23." in text
  assert "train_xlnet: measured" not in text
  text = run_all.render({"suites": {"train_xlnet": new}, "machine": facts})
  assert "other versions" not in text


def test_objective_and_checkpoint_targets_judge_their_figures():
  def judge(name, report):
    suite = next(s for s in run_all.SUITES if s.name == name)
    return [(t.figure, t.met) for t in run_all.suite_targets(suite, {"report": report})]

  def rate(tokens_per_s):
    return {"target_tokens_per_s": 2e6, "results": [{"tokens_per_s": tokens_per_s}]}
  assert judge("span_corruption", rate(2.0e6)) == [("2.00 M/s", True)]
  assert judge("span_corruption", rate(1.99e6)) == [("1.99 M/s", False)]

  def mlm(vs_hf):
    return {"results": [{"variant": "HF DataCollatorForLanguageModeling", "vs_hf": 1.0},
                        {"variant": "ours make_example, token, rng per record", "vs_hf": vs_hf}]}
  assert judge("mlm_objective", mlm(1.5)) == [("1.50×", True)]
  assert judge("mlm_objective", mlm(1.49)) == [("1.49×", False)]

  every, preset = run_all.smallest_preset_save_interval()
  intervals = {name: config_lib.load_config(name).checkpoint.every
               for name in config_lib.list_presets()}
  assert intervals[preset] == every == min(intervals.values())

  def ckpt(overhead):
    return {"shape": "bert_small", "every": 10, "overhead": {"async": overhead, "sync": 0.3},
            "save_cost_steps": {"async": overhead * 10, "sync": 3.0}}

  def spread(overhead):  # one measured save (overhead x 10 steps) over the preset's interval
    return f"{100 * overhead * 10 / every:+.2f}%"
  assert judge("checkpoint", ckpt(0.049)) == [("+4.9%", True), (spread(0.049), True)]
  assert judge("checkpoint", ckpt(0.05)) == [("+5.0%", False), (spread(0.05), True)]
  assert judge("checkpoint", ckpt(-0.017)) == [("-1.7%", True), (spread(-0.017), True)]
  # an overhead that breaks the 5% bound at the preset's interval too
  assert judge("checkpoint", ckpt(every / 10 * 0.06)) == [
      (f"{100 * every / 10 * 0.06:+.1f}%", False), (spread(every / 10 * 0.06), False)]


def test_quick_run_never_replaces_full_results(tmp_path, monkeypatch):
  doc = _doc(tmp_path)
  stored = {"suites": {"train_bert": _train_entry([_row("bert_small", 1.3, 0.5)])}}
  doc.with_suffix(".json").write_text(json.dumps(stored), encoding="utf-8")
  monkeypatch.setattr(run_all, "run_suite", lambda *a: pytest.fail("a suite ran"))
  with pytest.raises(SystemExit, match="--quick would replace the full-settings results of "
                     "train_bert"):
    run_all.main(["--quick", "--only", "train_bert", "--out", str(doc)])
  assert json.loads(doc.with_suffix(".json").read_text(encoding="utf-8")) == stored


@pytest.mark.parametrize("name, message", [
    ("bench.json", "names the results file itself"),
    ("missing_dir/bench.md", "does not exist"),
    ("no_markers.md", "has no '<!-- run_all:begin -->'"),
])
def test_bad_output_is_refused_before_any_suite_runs(tmp_path, monkeypatch, name, message):
  (tmp_path / "no_markers.md").write_text("# Benchmarks\n", encoding="utf-8")
  monkeypatch.setattr(run_all, "run_suite", lambda *a: pytest.fail("a suite ran"))
  with pytest.raises(SystemExit, match=message):
    run_all.main(["--only", "span_corruption", "--out", str(tmp_path / name)])


def test_render_reruns_nothing_and_rewrites_the_section(tmp_path, monkeypatch):
  doc = _doc(tmp_path)
  stored = {"suites": {"train_bert": _train_entry([_row("bert_small", 1.3, 0.5)])}}
  doc.with_suffix(".json").write_text(json.dumps(stored), encoding="utf-8")
  monkeypatch.setattr(run_all, "run_suite", lambda *a: pytest.fail("a suite ran"))
  assert run_all.main(["--render", "--out", str(doc)]) == 0
  text = doc.read_text(encoding="utf-8")
  assert "\nold\n" not in text and text.startswith(PROSE_BEFORE) and text.endswith(PROSE_AFTER)
  assert "| bert_small: train tokens/s vs HF BertForMaskedLM | 1.30× | ≥ 1.25× | met |" in text
  with pytest.raises(SystemExit):
    run_all.main(["--render", "--only", "train_bert", "--out", str(doc)])
