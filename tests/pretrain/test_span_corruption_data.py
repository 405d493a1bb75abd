"""T5 span corruption through the real data path (OBJECTIVES.md §2): blocks of the bundled
corpus concatenated without separators, so no target holds an EOS before its end."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.objectives import mlm
from pretrain import data as data_lib
from t5x_like.config import load_config


def _assert_eos_only_last(labels: np.ndarray, segment_ids: np.ndarray, eos_id: int) -> int:
  """Checks every target (a row's segment of real labels) has EOS at its last position only.

  Returns the number of targets checked."""
  checked = 0
  for row in range(labels.shape[0]):
    for seg in np.unique(segment_ids[row][segment_ids[row] > 0]):
      target = labels[row][segment_ids[row] == seg]
      where = np.flatnonzero(target == eos_id).tolist()
      assert where == [len(target) - 1], (row, int(seg), where, len(target))
      checked += 1
  return checked


@pytest.mark.parametrize("pack", ["false", "true"], ids=["blocks", "documents"])
def test_no_target_holds_eos_before_its_end(tmp_path, pack):
  # bundled_all: 1500 documents (the Korean ones short), so many blocks cross a boundary.
  config = load_config("t5_tiny", [f"data.cache_dir={tmp_path}", "data.corpus=bundled_all",
                                   f"data.pack_documents={pack}", "train.batch_size=64"])
  run = data_lib.build(config)
  eos = run.tokenizer.vocab_info().eos_id
  checked = 0
  # Every validation row and the first train epoch's worth of rows.
  batches = list(run.hooks.make_eval())
  batches += [next(run.hooks.train) for _ in range(run.hooks.train.steps_per_epoch)]
  for batch in batches:
    labels = batch["labels"]
    real = labels != mlm.IGNORE_INDEX
    segments = batch.get("decoder_segment_ids", real.astype(np.int32))
    checked += _assert_eos_only_last(labels, np.where(real, segments, 0), eos)
  # The encoder inputs end each example with EOS too, and hold none elsewhere.
  for batch in batches:
    inputs = batch["input_ids"]
    _assert_eos_only_last(inputs, batch.get("segment_ids", np.ones_like(inputs)), eos)
  assert checked > 3000
  if pack == "false":  # T5's reduce_concat_tokens: documents back to back
    assert run.manifest.separator_id is None and run.manifest.packing is None

