"""`pretrain import`: a HF folder becomes a run directory that `pretrain train` resumes from
step 0; bad input is one `error:` line, exit code 2, and the target left untouched."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import transformers

from t5x_like import hf_import, hf_layouts, load_pretrained
from tests.pretrain.conftest import run_cli, snapshot

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

BUNDLED_VOCAB = 8000  # the bundled tokenizer's ids, so `pretrain train` accepts the model
RUN = ["data.seq_len=32", "train.batch_size=8", "train.eval_steps=0", "train.log_every=1",
       "checkpoint.every=2", "train.export_at_end=false"]


def _read_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)



@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> str:
  """A tiny random BertForMaskedLM (HF), every tensor moved off its init."""
  cfg = transformers.BertConfig(vocab_size=BUNDLED_VOCAB, hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=32)
  model = transformers.BertForMaskedLM(cfg)
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=gen))
  path = str(tmp_path_factory.mktemp("hf") / "bert")
  model.save_pretrained(path)
  return path


def _error_line(code: int, err: str) -> str:
  assert code == 2, err
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0]


def test_import_then_train_resumes_from_step_0(tmp_path, capsys, bert_folder, corpus,
                                               cache_dir):
  out = str(tmp_path / "run")
  code, stdout, err = run_cli(capsys, ["import", "--from", bert_folder, "--workdir", out,
                                       *RUN, f"data.corpus={corpus}",
                                       f"data.cache_dir={cache_dir}"])
  assert code == 0, err
  summary = json.loads(stdout)
  assert summary["step"] == 0 and summary["family"] == "bert"
  assert "warning" not in err  # the vocabulary matches the bundled tokenizer
  assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["0"]
  restored = load_pretrained(out)
  assert restored.step == 0 and restored.config.model.vocab_size == BUNDLED_VOCAB
  imported = hf_import.import_hf(bert_folder)
  flat_ref = hf_layouts.flatten_params(imported.params)
  flat = hf_layouts.flatten_params(restored.params)
  assert set(flat) == set(flat_ref)
  for path, value in flat.items():
    np.testing.assert_array_equal(value, flat_ref[path], err_msg=path)

  # Refused: a second import into the same run.
  code, _, err = run_cli(capsys, ["import", "--from", bert_folder, "--workdir", out, *RUN])
  assert "already has checkpoints" in _error_line(code, err)

  code, stdout, err = run_cli(capsys, ["train", "--config", os.path.join(out, "config.yaml"),
                                       "--workdir", out, "train.steps=2"])
  assert code == 0, err
  assert f"resumed from {os.path.join(out, 'checkpoints')}/0" in err
  assert json.loads(stdout.strip().splitlines()[-1])["step"] == 2
  with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records if r["split"] == "train"] == [2]  # 1 is the compile
  assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["0", "2"]


def _bad_folders(root: str, bert_folder: str) -> dict[str, str]:
  import shutil

  import safetensors.numpy
  folders = {}
  gpt2 = os.path.join(root, "gpt2")
  os.makedirs(gpt2)
  with open(os.path.join(gpt2, "config.json"), "w", encoding="utf-8") as f:
    json.dump({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, f)
  folders["model_type 'gpt2' (GPT2LMHeadModel) is not supported"] = gpt2
  pickle_only = os.path.join(root, "pickle")
  os.makedirs(pickle_only)
  shutil.copy(os.path.join(bert_folder, "config.json"), pickle_only)
  tensors = safetensors.numpy.load_file(os.path.join(bert_folder, "model.safetensors"))
  torch.save({k: torch.from_numpy(v) for k, v in tensors.items()},
             os.path.join(pickle_only, "pytorch_model.bin"))
  folders["pass --allow-pickle"] = pickle_only
  mismatch = os.path.join(root, "mismatch")
  shutil.copytree(bert_folder, mismatch)
  config = _read_json(os.path.join(mismatch, "config.json"))
  with open(os.path.join(mismatch, "config.json"), "w", encoding="utf-8") as f:
    json.dump({**config, "hidden_size": 48, "num_attention_heads": 2}, f)
  folders["config.json and model.safetensors disagree"] = mismatch
  return folders


def test_bad_input_is_one_error_line_and_leaves_workdir_untouched(tmp_path, capsys,
                                                                   bert_folder):
  out = tmp_path / "existing"
  out.mkdir()
  (out / "notes.txt").write_text("keep me")
  before = snapshot(str(out))
  for expected, folder in _bad_folders(str(tmp_path / "bad"), bert_folder).items():
    for workdir in (str(out), str(tmp_path / "absent")):
      code, stdout, err = run_cli(capsys, ["import", "--from", folder, "--workdir", workdir,
                                           *RUN])
      assert expected in _error_line(code, err) and stdout == ""
      assert not os.path.exists(tmp_path / "absent")
  # A model key the checkpoint fixes cannot be overridden.
  code, _, err = run_cli(capsys, ["import", "--from", bert_folder, "--workdir", str(out),
                                  *RUN, "model.hidden_size=64"])
  assert "model.hidden_size=32: the checkpoint's tensors fix" in _error_line(code, err)
  assert snapshot(str(out)) == before
