"""`pretrain export` of a trained run loads in transformers (model + tokenizer), and its logits
match `t5x_like.load_pretrained(...).logits` within 1e-4 on random inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import sentencepiece as spm
import torch
import transformers

from t5x_like import load_pretrained
from tests.pretrain.conftest import run_cli

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def test_export_matches_load_pretrained(trained_workdir, tmp_path, capsys):
  out = str(tmp_path / "hf")
  code, stdout, _ = run_cli(capsys, ["export", "--workdir", trained_workdir, "--out", out])
  assert code == 0 and '"step": 6' in stdout
  ours = load_pretrained(trained_workdir)
  hf = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
  assert type(hf).__name__ == "BertForMaskedLM"

  rng = np.random.default_rng(0)
  vocab = ours.config.model.vocab_size
  input_ids = rng.integers(0, vocab, (3, 32)).astype(np.int64)
  attention_mask = np.ones_like(input_ids)
  attention_mask[2, 20:] = 0
  token_type_ids = rng.integers(0, 2, input_ids.shape).astype(np.int64)
  batch = {"input_ids": input_ids, "attention_mask": attention_mask,
           "token_type_ids": token_type_ids}
  expected = ours.logits(batch)
  with torch.no_grad():
    got = hf(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
  keep = attention_mask.astype(bool)  # padded query rows are not defined the same way
  assert np.max(np.abs(got[keep] - expected[keep])) < 1e-4
  assert np.std(expected) > 0.01  # real logits, not zeros

  tok = transformers.AutoTokenizer.from_pretrained(out)
  sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "spiece.model"))
  for text in ["Pretraining a small BERT on Python docs.", "서울은 대한민국의 수도이다."]:
    assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
  assert tok.mask_token_id == 5 and tok.pad_token_id == 0
