"""T5 span corruption through the real data path (docs/objectives.md): blocks of the bundled
corpus concatenated without separators, so no target holds an EOS before its end; T5's block
lengths at noise_density 0.5; the `objective.random_roll` config key."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.objectives import mlm
from pretrain import data as data_lib
from t5x_like.config import ConfigError, load_config
from t5x_like.objectives import span_corruption as span_objective


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


@pytest.mark.parametrize("seq_len,raw,targets", [(128, 190, 128), (512, 766, 512)])
def test_half_density_blocks_are_t5s(seq_len, raw, targets):
  # T5's random_spans_helper takes one raw token off at d == 0.5 so targets == inputs.
  config = load_config("t5_tiny", ["objective.noise_density=0.5", f"data.seq_len={seq_len}"])
  assert data_lib.block_length(config) == raw
  assert data_lib.resolve_lengths(config).data.target_len == targets


def test_random_roll_config_key():
  assert load_config("t5_tiny").objective.random_roll is False  # T5's default
  assert span_objective.params(load_config("t5_tiny")).random_roll is False
  config = load_config("t5_tiny", ["objective.random_roll=true"])
  assert span_objective.params(config).random_roll is True
  with pytest.raises(ConfigError, match="objective.random_roll: expected bool"):
    load_config("t5_tiny", ["objective.random_roll=sometimes"])
  with pytest.raises(ConfigError, match="objective.random_roll applies to decoder_span_corruption, span_corruption only"):
    load_config("bert_tiny", ["objective.random_roll=true"])
  # Wired into the objective: a 20-token document's single span moves with the seed.
  config = load_config("t5_tiny", ["objective.random_roll=true", "data.pack_documents=true",
                                   "model.vocab_size=8000"])
  tokenizer = data_lib.load_tokenizer(config.data.tokenizer)
  objective = data_lib.make_objective(data_lib.resolve_lengths(config), tokenizer)
  block = np.arange(100, 120, dtype=np.int32)
  sentinel = tokenizer.vocab_info().sentinel_ids[0]
  where = {int(np.argmax(objective(block, np.random.default_rng(i))["input_ids"] == sentinel))
           for i in range(40)}
  assert len(where) > 5 and 0 in where  # without the roll: always 17, after 17 kept tokens


def test_blocks_that_cannot_fill_seq_len_are_refused():
  # mu = 1 with d > 1/2 caps s at L - n: inputs 2 (L - n) + 1 are always odd, never 128.
  config = load_config("t5_tiny", ["objective.noise_density=0.9",
                                   "objective.mean_noise_span_length=1.0"])
  with pytest.raises(ConfigError, match=r"no block length corrupts to exactly data.seq_len "
                                        r"\(128\) inputs .*\(the nearest gives 127\)"):
    data_lib.block_length(config)
  packed = load_config("t5_tiny", ["objective.noise_density=0.9",
                                   "objective.mean_noise_span_length=1.0",
                                   "data.pack_documents=true"])
  assert data_lib.block_length(packed) >= 2  # packed rows pad their inputs instead
