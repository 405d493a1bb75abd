"""Bad input to `pretrain`: exit code 2, one `error: ...` line naming the culprit, and nothing
already saved is changed."""

from __future__ import annotations

import json
import os

import pytest

from tests.pretrain.conftest import (
  run_cli,
  run_console_script,
  snapshot,
  tiny_overrides,
  write_jsonl,
)

EXIT_BAD_INPUT = 2


def assert_one_error(err: str, *needles: str) -> str:
  """stderr is exactly one line, `error: ...`, mentioning every needle; returns it."""
  lines = err.splitlines()
  assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
  line = lines[0]
  assert line.startswith("error: "), line
  for needle in needles:
    assert needle in line, f"{needle!r} not in {line!r}"
  return line


def train_argv(workdir: str, corpus: str, cache_dir: str, *extra: str) -> list[str]:
  return ["train", "--config", "bert_tiny", "--workdir", workdir,
          *tiny_overrides(corpus, cache_dir), *extra]


def assert_train_refused(capsys: pytest.CaptureFixture[str], tmp_path, corpus: str,
                         cache_dir: str, extra: list[str], needles: list[str]) -> str:
  """`pretrain train` with `extra` overrides fails cleanly without writing anything."""
  workdir = str(tmp_path / "run")
  before = snapshot(str(tmp_path)), snapshot(cache_dir)
  code, out, err = run_cli(capsys, train_argv(workdir, corpus, cache_dir, *extra))
  assert code == EXIT_BAD_INPUT
  assert out == ""
  line = assert_one_error(err, *needles)
  assert not os.path.exists(workdir)
  assert (snapshot(str(tmp_path)), snapshot(cache_dir)) == before
  return line


# --------------------------------------------------------------------------- corpus


def test_missing_corpus_console_script(tmp_path, cache_dir):
  """The installed console script itself exits 2 with one line, no traceback."""
  missing = str(tmp_path / "no_such_corpus.jsonl")
  workdir = str(tmp_path / "run")
  before = snapshot(cache_dir)
  proc = run_console_script(train_argv(workdir, missing, cache_dir), cwd=str(tmp_path))
  assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
  assert proc.stdout == ""
  line = assert_one_error(proc.stderr, missing, "does not exist")
  assert "Traceback" not in line
  assert not os.path.exists(workdir)
  assert snapshot(cache_dir) == before


def test_missing_corpus_in_process(capsys, tmp_path, cache_dir):
  missing = str(tmp_path / "gone" / "corpus.txt")
  assert_train_refused(capsys, tmp_path, missing, cache_dir, [], [missing, "does not exist"])


@pytest.mark.parametrize("content", ["", "\n\n", '{"text": ""}\n{"text": "   \\n\\t "}\n\n'],
                         ids=["empty", "blank_lines", "blank_documents"])
def test_corpus_without_text(capsys, tmp_path, cache_dir, content):
  path = tmp_path / "empty.jsonl"
  path.write_text(content, encoding="utf-8")
  assert_train_refused(capsys, tmp_path, str(path), cache_dir, [],
                       [str(path), "contains no text"])


@pytest.mark.parametrize("name", ["bad.txt", "bad.jsonl"])
def test_corpus_not_utf8(capsys, tmp_path, cache_dir, name):
  path = tmp_path / name
  path.write_bytes(b"\xff\xfe bad")
  line = assert_train_refused(capsys, tmp_path, str(path), cache_dir, [],
                              [str(path), "UTF-8"])
  assert f"{path}:1:" in line  # the line number of the bad bytes


# --------------------------------------------------------------------------- config values


@pytest.mark.parametrize("override, needles", [
  ("train.stepz=3", ["train.stepz", "did you mean train.steps?"]),
  ("model.hiden_size=32", ["model.hiden_size", "did you mean model.hidden_size?"]),
  ("trian.steps=3", ["trian", "did you mean train?"]),
])
def test_unknown_key_on_command_line(capsys, tmp_path, corpus, cache_dir, override, needles):
  assert_train_refused(capsys, tmp_path, corpus, cache_dir, [override],
                       ["unknown config key", *needles])


def test_unknown_key_in_yaml_file_with_preset_base(capsys, tmp_path, corpus, cache_dir):
  config = tmp_path / "mine.yaml"
  config.write_text("base: bert_tiny\ntrain:\n  stepz: 3\n", encoding="utf-8")
  before = snapshot(str(tmp_path))
  code, _, err = run_cli(capsys, ["train", "--config", str(config), "--workdir",
                                  str(tmp_path / "run"), *tiny_overrides(corpus, cache_dir)])
  assert code == EXIT_BAD_INPUT
  assert_one_error(err, "train.stepz", "did you mean train.steps?")
  assert snapshot(str(tmp_path)) == before


@pytest.mark.parametrize("override, needles", [
  ("train.steps=abc", ["train.steps", "int", "'abc'"]),
  ("train.steps=2.5", ["train.steps", "int", "2.5"]),
  ("model.dropout_rate=high", ["model.dropout_rate", "float", "'high'"]),
  ("train.export_at_end=maybe", ["train.export_at_end", "bool", "'maybe'"]),
  ("model=3", ["model", "mapping", "3"]),
])
def test_wrong_value_type(capsys, tmp_path, corpus, cache_dir, override, needles):
  assert_train_refused(capsys, tmp_path, corpus, cache_dir, [override], needles)


@pytest.mark.parametrize("override, needles", [
  ("model.dtype=float16", ["model.dtype", "'float16'", "float32", "bfloat16"]),
  ("optim.schedule=step", ["optim.schedule", "'step'", "linear", "cosine", "constant"]),
])
def test_value_outside_choices(capsys, tmp_path, corpus, cache_dir, override, needles):
  assert_train_refused(capsys, tmp_path, corpus, cache_dir, [override], needles)


def test_out_of_range_value_names_key_and_limit(capsys, tmp_path, corpus, cache_dir):
  assert_train_refused(capsys, tmp_path, corpus, cache_dir, ["data.seq_len=64"],
                       ["data.seq_len (64)", "model.max_position_embeddings (32)"])


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_vocab_differs_from_model(capsys, tmp_path, corpus, cache_dir):
  line = assert_train_refused(capsys, tmp_path, corpus, cache_dir, ["model.vocab_size=1234"],
                              ["model.vocab_size", "1234", "8000"])
  assert "bundled_8k.model" in line  # which tokenizer has 8000 ids


def test_missing_tokenizer_file(capsys, tmp_path, corpus, cache_dir):
  missing = str(tmp_path / "tok" / "absent.model")
  assert_train_refused(capsys, tmp_path, corpus, cache_dir, [f"data.tokenizer={missing}"],
                       [missing, "does not exist"])


# --------------------------------------------------------------------------- resume


def test_resume_with_other_model_shape_changes_nothing(capsys, trained_workdir, corpus,
                                                       cache_dir):
  before = snapshot(trained_workdir)
  assert "config.yaml" in before and os.path.join("checkpoints", "3") in before
  code, out, err = run_cli(capsys, train_argv(trained_workdir, corpus, cache_dir,
                                              "model.hidden_size=64", "model.num_heads=2"))
  assert code == EXIT_BAD_INPUT
  assert out == ""
  assert_one_error(err, trained_workdir, "model.hidden_size 32 -> 64")
  after = snapshot(trained_workdir)
  assert after == before  # checkpoints/, config.yaml, metrics.jsonl: byte-identical


# --------------------------------------------------------------------------- config files


def test_unknown_preset_lists_presets_console_script(tmp_path):
  proc = run_console_script(["train", "--config", "bert_tiy", "--workdir",
                             str(tmp_path / "run")], cwd=str(tmp_path))
  assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
  assert_one_error(proc.stderr, "'bert_tiy'", "bert_base", "bert_tiny", "roberta_base")
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content, needles", [
  (b"- bert_tiny\n- train.steps=3\n", ["must hold a mapping", "list"]),
  (b"just a string\n", ["must hold a mapping", "str"]),
  (b"model: {hidden_size: 32\ntrain: [\n", ["is not valid YAML"]),
  (b"model:\n  hidden_size: 32\n bad_indent: 1\n", ["is not valid YAML"]),
  (b"model:\n  family: \xff\xfe\n", ["is not valid YAML"]),
], ids=["list", "scalar", "unclosed", "indentation", "not_utf8"])
def test_config_file_not_a_mapping_or_invalid(capsys, tmp_path, content, needles):
  config = tmp_path / "broken.yaml"
  config.write_bytes(content)
  before = snapshot(str(tmp_path))
  code, _, err = run_cli(capsys, ["train", "--config", str(config), "--workdir",
                                  str(tmp_path / "run")])
  assert code == EXIT_BAD_INPUT
  assert_one_error(err, str(config), *needles)
  assert snapshot(str(tmp_path)) == before


def test_missing_config_file(capsys, tmp_path):
  config = str(tmp_path / "nowhere.yaml")
  code, _, err = run_cli(capsys, ["data", "prepare", "--config", config])
  assert code == EXIT_BAD_INPUT
  assert_one_error(err, config, "does not exist")


# --------------------------------------------------------------------------- eval/export/plot


@pytest.mark.parametrize("make_dir", [True, False], ids=["plain_dir", "absent"])
def test_eval_on_a_directory_that_is_not_a_run(capsys, tmp_path, make_dir):
  workdir = tmp_path / "not_a_run"
  if make_dir:
    workdir.mkdir()
    (workdir / "notes.txt").write_text("keep me\n", encoding="utf-8")
  before = snapshot(str(tmp_path))
  code, out, err = run_cli(capsys, ["eval", "--workdir", str(workdir)])
  assert code == EXIT_BAD_INPUT
  assert out == ""
  assert_one_error(err, str(workdir), "not a run directory", "config.yaml")
  assert snapshot(str(tmp_path)) == before


def test_export_refuses_unrelated_non_empty_folder(capsys, tmp_path, trained_workdir):
  target = tmp_path / "my_documents"
  target.mkdir()
  (target / "thesis.txt").write_text("years of work\n", encoding="utf-8")
  (target / "data").mkdir()
  (target / "data" / "table.json").write_text(json.dumps({"a": 1}), encoding="utf-8")
  before, run_before = snapshot(str(tmp_path)), snapshot(trained_workdir)
  code, out, err = run_cli(capsys, ["export", "--workdir", trained_workdir,
                                    "--out", str(target)])
  assert code == EXIT_BAD_INPUT
  assert out == ""
  assert_one_error(err, str(target), "not empty")
  assert snapshot(str(tmp_path)) == before  # no temporary sibling left behind either
  assert snapshot(trained_workdir) == run_before


def test_export_refuses_a_file_target(capsys, tmp_path, trained_workdir):
  target = tmp_path / "model.bin"
  target.write_bytes(b"\x00\x01")
  code, _, err = run_cli(capsys, ["export", "--workdir", trained_workdir,
                                  "--out", str(target)])
  assert code == EXIT_BAD_INPUT
  assert_one_error(err, str(target), "not a directory")
  assert target.read_bytes() == b"\x00\x01"
  assert os.listdir(tmp_path) == ["model.bin"]


def test_plot_without_metrics(capsys, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.yaml").write_text("model:\n  hidden_size: 32\n", encoding="utf-8")
  before = snapshot(str(tmp_path))
  code, out, err = run_cli(capsys, ["plot", "--workdir", str(workdir)])
  assert code == EXIT_BAD_INPUT
  assert out == ""
  assert_one_error(err, str(workdir / "metrics.jsonl"), "does not exist")
  assert snapshot(str(tmp_path)) == before  # no loss.png


def test_plot_with_corrupt_metrics_line(capsys, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  metrics = workdir / "metrics.jsonl"
  metrics.write_text('{"step": 1, "split": "train", "loss": 2.0, "accuracy": 0.1}\n{"step": 2,\n',
                     encoding="utf-8")
  code, _, err = run_cli(capsys, ["plot", "--workdir", str(workdir)])
  assert code == EXIT_BAD_INPUT
  assert_one_error(err, f"{metrics}:2")
  assert sorted(os.listdir(workdir)) == ["metrics.jsonl"]


def test_tokenizer_train_on_corpus_without_text(capsys, tmp_path):
  corpus = write_jsonl(str(tmp_path / "blank.jsonl"), ["   ", "\n"])
  out_prefix = tmp_path / "tok" / "spm"
  code, out, err = run_cli(capsys, ["tokenizer", "train", "--corpus", corpus, "--out",
                                    str(out_prefix), "--vocab-size", "400"])
  assert code == EXIT_BAD_INPUT
  assert out == ""
  assert_one_error(err, "no text")
  assert not os.path.exists(str(out_prefix) + ".model")
