"""Tests for data_pipelines.pipeline: per-record noise, global shuffle, host sharding, resume."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import pipeline, prepare, sources, tokenizer
from data_pipelines.errors import DataError
from tests.data_pipelines.test_tokenizer import tiny_documents, train_tiny

SEED = 7
BLOCK = 32
BATCH = 8


def fake_objective(block: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Echoes the block and draws noise, so tests can see which record and which generator."""
  return {"input_ids": block, "noise": rng.integers(0, 2**31 - 1, size=3).astype(np.int32),
          "flag": np.array(rng.random() < 0.5)}


def _expected_noise(epoch: int, index: int) -> np.ndarray:
  return fake_objective(np.zeros(1, np.int32), np.random.default_rng([SEED, epoch, index]))["noise"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipe")
  tok = train_tiny(str(root / "tiny"))
  corpus = root / "c.jsonl"
  corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in tiny_documents(150, seed=5)))
  manifest = prepare.prepare(str(corpus), tok, BLOCK, str(root / "prepared"),
                             validation_fraction=0.1, shard_size=64)
  assert len(manifest.splits["train"].shards) > 1
  return manifest.directory


@pytest.fixture(scope="module")
def index_of(data):
  """Block content -> record index, to recover which record each row holds."""
  table = {}
  for split in ("train", "validation"):
    for i in range(pipeline.num_records(data, split)):
      table[(split, pipeline.read_block(data, split, i).tobytes())] = i
  assert len(table) == pipeline.num_records(data, "train") + pipeline.num_records(
      data, "validation"), "blocks must be distinct for these tests"
  return lambda split, rows: [table[(split, r.tobytes())] for r in rows]


def _take(it, n):
  return [next(it) for _ in range(n)]


def _iter(data, **kw):
  args = {"split": "train", "objective": fake_objective, "global_batch_size": BATCH,
          "seed": SEED}
  args.update(kw)
  return pipeline.make_iterator(data, **args)


def test_batch_shapes_and_dtypes(data):
  batch = next(_iter(data, process_count=2))
  assert batch["input_ids"].shape == (BATCH // 2, BLOCK) and batch["input_ids"].dtype == np.int32
  assert batch["noise"].shape == (BATCH // 2, 3) and batch["noise"].dtype == np.int32
  assert batch["flag"].shape == (BATCH // 2,) and batch["flag"].dtype == bool


def test_noise_seeded_by_seed_epoch_record(data, index_of):
  it = _iter(data)
  spe = it.steps_per_epoch
  for step, batch in enumerate(_take(it, spe + 3)):
    epoch = step // spe
    for row, index in enumerate(index_of("train", batch["input_ids"])):
      np.testing.assert_array_equal(batch["input_ids"][row], pipeline.read_block(data, "train",
                                                                                 index))
      np.testing.assert_array_equal(batch["noise"][row], _expected_noise(epoch, index))


def test_global_shuffle_per_epoch(data, index_of):
  n = pipeline.num_records(data, "train")
  it = _iter(data)
  spe = it.steps_per_epoch
  assert spe == n // BATCH == pipeline.num_batches(data, "train", BATCH)
  epochs = []
  for epoch in range(2):
    order = [i for b in _take(it, spe) for i in index_of("train", b["input_ids"])]
    np.testing.assert_array_equal(order,
                                  np.random.default_rng([SEED, epoch]).permutation(n)[:spe * BATCH])
    epochs.append(order)
  assert epochs[0] != epochs[1]
  other_seed = _iter(data, seed=SEED + 1)
  assert index_of("train", next(other_seed)["input_ids"]) != epochs[0][:BATCH]


@pytest.mark.parametrize("process_count", [2, 4])
def test_hosts_split_the_same_global_batch(data, process_count):
  single = _take(_iter(data), 5)
  shards = [_take(_iter(data, process_index=p, process_count=process_count), 5)
            for p in range(process_count)]
  for step in range(5):
    for key in single[step]:
      joined = np.concatenate([shards[p][step][key] for p in range(process_count)])
      np.testing.assert_array_equal(joined, single[step][key])


def test_resume_from_start_step_and_state(data):
  it = _iter(data, worker_threads=2)
  reference = _take(it, 12)
  resumed = _take(_iter(data, start_step=7), 5)
  for a, b in zip(reference[7:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  it = _iter(data)
  _take(it, 4)
  state = it.get_state()
  assert state == {"step": 4} and json.loads(json.dumps(state)) == state
  fresh = _iter(data, process_count=2, process_index=1)
  fresh.set_state(state)
  np.testing.assert_array_equal(next(fresh)["noise"], reference[4]["noise"][BATCH // 2:])
  assert fresh.get_state() == {"step": 5}


def test_eval_in_order_one_epoch(data):
  n = pipeline.num_records(data, "validation")
  batch = 2
  batches = list(_iter(data, split="validation", global_batch_size=batch, shuffle=False,
                       num_epochs=1))
  assert len(batches) == n // batch == pipeline.num_batches(data, "validation", batch)
  for step, b in enumerate(batches):
    for row in range(batch):
      np.testing.assert_array_equal(b["input_ids"][row],
                                    pipeline.read_block(data, "validation", step * batch + row))


def test_num_epochs_stops(data):
  it = _iter(data, num_epochs=2)
  assert len(list(it)) == 2 * it.steps_per_epoch


def test_bad_arguments(data, tmp_path):
  with pytest.raises(DataError, match="global batch size 6 must be a positive multiple of the "
                                      "process count 4"):
    _iter(data, global_batch_size=6, process_count=4)
  with pytest.raises(DataError, match="process_index 2 is outside"):
    _iter(data, process_index=2, process_count=2)
  with pytest.raises(DataError, match="fewer than the global batch size 100000"):
    _iter(data, global_batch_size=100000)
  with pytest.raises(DataError, match="has no split 'test'"):
    _iter(data, split="test")
  with pytest.raises(DataError, match="manifest.json is missing"):
    pipeline.make_iterator(str(tmp_path), "train", fake_objective, BATCH, SEED)
  with pytest.raises(DataError, match="out of range"):
    pipeline.read_block(data, "train", 10**6)


def test_data_pipelines_never_imports_jax():
  # grain itself imports jax when it is installed, so the pipeline module is checked by
  # source; everything before it must load without jax or tensorflow.
  code = ("import sys, data_pipelines.prepare, data_pipelines.tokenizer, "
          "data_pipelines.sources; "
          "assert 'jax' not in sys.modules and 'tensorflow' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True)
  for module in (pipeline, prepare, tokenizer, sources):
    with open(module.__file__, encoding="utf-8") as f:
      assert not re.search(r"^\s*(import|from) jax", f.read(), re.MULTILINE)
