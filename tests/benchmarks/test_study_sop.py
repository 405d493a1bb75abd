"""benchmarks/study_sop.py runs both arms end to end on the bundled corpus, and its `edge`
rows carry the order cue that the objective's own (`whole`) rows leave out."""

from __future__ import annotations

import json

import pytest

from benchmarks import study_sop


def test_two_steps_of_both_arms_write_their_curves_and_the_cue(tmp_path, capsys):
  out = tmp_path / "study.json"
  study_sop.main(["--steps", "2", "--batch", "8", "--log-every", "1", "--json", str(out),
                  f"data.cache_dir={tmp_path / 'cache'}"])
  results = {r["arm"]: r for r in json.loads(out.read_text())["results"]}
  assert set(results) == {"whole", "edge"}
  for r in results.values():
    assert [row["step"] for row in r["log"]] == [1, 2]
    assert all(0.0 <= row["heldout_sop_accuracy"] <= 1.0 for row in r["log"])
    assert r["heldout_rows"] > 0 and 0.5 <= r["heldout_majority"] <= 1.0
  # the cue gives the edge rows' order away; in whole rows only the `partial` ones keep it
  assert results["edge"]["edge_cue_accuracy"] > 0.9
  assert results["whole"]["edge_cue_accuracy"] < 0.8
  assert "edge: edge cue predicts" in capsys.readouterr().out


def test_an_unknown_arm_is_refused(capsys):
  with pytest.raises(SystemExit) as e:
    study_sop.main(["--arms", "whole,shuffled"])
  assert e.value.code != 0 and "unknown arm(s) ['shuffled']" in capsys.readouterr().err
