"""Packing is usable by every objective: masked LM rows of whole documents, packed with segment
ids and positions, train through `pretrain train`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pretrain import cli
from pretrain import data as data_lib
from t5x_like.config import load_config
from tests.pretrain.conftest import tiny_overrides

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def test_packed_mlm_rows_and_training(tmp_path, corpus, cache_dir):
  overrides = tiny_overrides(corpus, cache_dir, **{"data.pack_documents": "true",
                                                   "data.seq_len": 128,
                                                   "model.max_position_embeddings": 128})
  config = load_config("bert_tiny", overrides)
  run = data_lib.build(config)
  batch = next(run.hooks.train)
  seg, pos, ids = batch["segment_ids"], batch["positions"], batch["input_ids"]
  assert seg.shape == pos.shape == ids.shape == (8, 128)
  assert seg.max() >= 2  # corpus documents are shorter than a row: rows hold several
  vocab = run.tokenizer.vocab_info()
  for row in range(8):
    for k in range(1, int(seg[row].max()) + 1):
      where = np.flatnonzero(seg[row] == k)
      np.testing.assert_array_equal(pos[row, where], np.arange(len(where)))
      # every packed example is framed [CLS] ... [SEP]
      assert ids[row, where[0]] == vocab.cls_id and ids[row, where[-1]] == vocab.sep_id
    pad = seg[row] == 0
    assert not np.any(batch["attention_mask"][row][pad])
    assert np.all(batch["labels"][row][pad] == -100)

  workdir = str(tmp_path / "run")
  assert cli.main(["train", "--config", "bert_tiny", "--workdir", workdir, *overrides]) == 0
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  train = [r for r in rows if r["split"] == "train"]
  assert all(r["dropped_predictions"] == 0 and r["predicted_tokens"] > 0 for r in train)
  assert np.isfinite([r["loss"] for r in train]).all()
