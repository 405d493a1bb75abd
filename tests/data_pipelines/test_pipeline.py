"""Tests for data_pipelines.pipeline: per-record noise, global shuffle, host sharding, resume."""

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import packing, pipeline, prepare
from data_pipelines.errors import DataError
from data_pipelines.objectives import span_corruption
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


def _reversed_objective(block: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
  return fake_objective(block[::-1].copy(), rng)


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_second_half_objective_makes_the_second_half_of_every_global_batch(data,
                                                                           process_count):
  """bi_data: global rows B/2.. come from the second objective (same records and noise as
  without it), whatever the process count."""
  plain = _take(_iter(data), 3)
  shards = [_take(_iter(data, process_index=p, process_count=process_count,
                        second_half_objective=_reversed_objective), 3)
            for p in range(process_count)]
  for step in range(3):
    ids = np.concatenate([shards[p][step]["input_ids"] for p in range(process_count)])
    np.testing.assert_array_equal(ids[:BATCH // 2], plain[step]["input_ids"][:BATCH // 2])
    np.testing.assert_array_equal(ids[BATCH // 2:], plain[step]["input_ids"][BATCH // 2:, ::-1])
    noise = np.concatenate([shards[p][step]["noise"] for p in range(process_count)])
    np.testing.assert_array_equal(noise, plain[step]["noise"])
  with pytest.raises(DataError, match="needs an even global batch size, got 5"):
    _iter(data, global_batch_size=5, second_half_objective=_reversed_objective)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_stream_order_continues_each_row(data, bidirectional):
  """streams: row j's text at step s+1 follows its text at step s (forward rows by one block;
  second-half rows go backwards), every row reads consecutive blocks, hosts agree."""
  second = _reversed_objective if bidirectional else None
  it = _iter(data, streams=True, second_half_objective=second)
  n = pipeline.num_records(data, "train")
  streams = BATCH // 2 if bidirectional else BATCH
  assert it.steps_per_epoch == (n - 1) // streams
  batches = _take(it, 4)
  half = BATCH // 2 if bidirectional else BATCH
  for b in range(4):
    ids = batches[b]["input_ids"]
    assert ids.shape == (BATCH, 2 * BLOCK)
    for j in range(half):  # forward: records j*S + b, j*S + b + 1
      first = j * it.steps_per_epoch + b
      np.testing.assert_array_equal(ids[j], np.concatenate(
          [pipeline.read_block(data, "train", first), pipeline.read_block(data, "train",
                                                                         first + 1)]))
    for j in range(half, BATCH):  # reversed text of records k*S + S-1-b, k*S + S-b
      first = (j - half) * it.steps_per_epoch + it.steps_per_epoch - 1 - b
      np.testing.assert_array_equal(ids[j][::-1], np.concatenate(
          [pipeline.read_block(data, "train", first), pipeline.read_block(data, "train",
                                                                         first + 1)]))
  for b in range(3):  # continuity seen from the rows alone
    now, nxt = batches[b]["input_ids"], batches[b + 1]["input_ids"]
    np.testing.assert_array_equal(nxt[:half, :BLOCK], now[:half, BLOCK:])
    np.testing.assert_array_equal(nxt[half:, :BLOCK], now[half:, BLOCK:])
  shards = [_take(_iter(data, streams=True, second_half_objective=second, process_index=p,
                        process_count=2), 4) for p in range(2)]
  for b in range(4):
    np.testing.assert_array_equal(np.concatenate([s[b]["input_ids"] for s in shards]),
                                  batches[b]["input_ids"])


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
  # Every module of the package, so that code moved into a new module stays checked.
  package = pathlib.Path(pipeline.__file__).parent
  for path in sorted(package.rglob("*.py")):
    assert not re.search(r"^\s*(import|from) jax", path.read_text(encoding="utf-8"),
                         re.MULTILINE), path


# Documents mode: one record = one packed row of document chunks.

CHUNK = 16
CAP = 40
TOY_SPEC = packing.PackSpec("toy(+2)", lambda r: (r + 2,), (CAP,))


def toy_objective(segment: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """[CLS] segment [SEP] with per-token noise: r raw tokens -> r + 2, like MLM."""
  ids = np.concatenate([[3], segment, [4]]).astype(np.int32)
  return {"input_ids": ids, "noise": rng.integers(1, 2**31 - 1, size=len(ids)).astype(np.int32)}


def toy_pack_row(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return packing.pack_one(examples, {"input_ids": CAP, "noise": CAP})


def _expected_row(data: str, split: str, epoch: int, index: int) -> dict[str, np.ndarray]:
  """The documented semantics: the objective on each segment in order with the record's one
  generator, then pack_row."""
  rng = np.random.default_rng([SEED, epoch, index])
  return toy_pack_row([toy_objective(s, rng)
                       for s in pipeline.read_segments(data, split, index)])


@pytest.fixture(scope="module")
def packed_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("packed")
  tok = train_tiny(str(root / "tiny"))
  corpus = root / "c.jsonl"
  corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in tiny_documents(150, seed=5)))
  manifest = prepare.prepare(str(corpus), tok, CHUNK, str(root / "prepared"),
                             validation_fraction=0.1, shard_size=64, pack=TOY_SPEC)
  assert len(manifest.splits["train"].shards) > 1 and manifest.splits["validation"].num_blocks
  return manifest.directory


def _packed_iter(data, **kw):
  args = {"split": "train", "objective": toy_objective, "global_batch_size": BATCH,
          "seed": SEED, "pack_row": toy_pack_row}
  args.update(kw)
  return pipeline.make_iterator(data, **args)


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_packed_rows_follow_the_documented_semantics(packed_data):
  n = pipeline.num_records(packed_data, "train")
  it = _packed_iter(packed_data)
  spe = it.steps_per_epoch
  assert spe == n // BATCH
  multi_segment = 0
  for step, batch in enumerate(_take(it, spe + 2)):  # across an epoch boundary
    assert set(batch) == {"input_ids", "noise", "segment_ids", "positions"}
    for key in batch:
      assert batch[key].shape == (BATCH, CAP) and batch[key].dtype == np.int32
    epoch, b = divmod(step, spe)
    order = np.random.default_rng([SEED, epoch]).permutation(n)
    for row in range(BATCH):
      index = int(order[b * BATCH + row])
      _assert_batches_equal({k: v[row] for k, v in batch.items()},
                            _expected_row(packed_data, "train", epoch, index))
      multi_segment += batch["segment_ids"][row].max() > 1
  assert multi_segment  # some rows hold several chunks, so the shared generator is exercised


def test_packed_deterministic_and_resumes_exactly(packed_data):
  reference = _take(_packed_iter(packed_data, worker_threads=2), 10)
  for a, b in zip(reference, _take(_packed_iter(packed_data), 10)):
    _assert_batches_equal(a, b)
  for a, b in zip(reference[6:], _take(_packed_iter(packed_data, start_step=6), 4)):
    _assert_batches_equal(a, b)
  it = _packed_iter(packed_data)
  _take(it, 3)
  state = it.get_state()
  assert state == {"step": 3}
  fresh = _packed_iter(packed_data, seed=SEED)
  _take(fresh, 7)
  fresh.set_state(state)
  for a, b in zip(reference[3:], _take(fresh, 4)):
    _assert_batches_equal(a, b)
  assert fresh.get_state() == {"step": 7}


def test_packed_two_processes_read_disjoint_rows(packed_data):
  n = pipeline.num_records(packed_data, "train")
  single = _take(_packed_iter(packed_data), 4)
  hosts = [_take(_packed_iter(packed_data, process_index=p, process_count=2), 4) for p in (0, 1)]
  order = np.random.default_rng([SEED, 0]).permutation(n)
  for step in range(4):
    for key in single[step]:
      joined = np.concatenate([hosts[0][step][key], hosts[1][step][key]])
      np.testing.assert_array_equal(joined, single[step][key])
    records = [order[step * BATCH + p * BATCH // 2: step * BATCH + (p + 1) * BATCH // 2]
               for p in (0, 1)]
    assert not set(records[0]) & set(records[1])
    for p in (0, 1):
      for row, index in enumerate(records[p]):
        _assert_batches_equal({k: v[row] for k, v in hosts[p][step].items()},
                              _expected_row(packed_data, "train", 0, int(index)))


def test_packed_eval_in_order(packed_data):
  n = pipeline.num_records(packed_data, "validation")
  batches = list(_packed_iter(packed_data, split="validation", global_batch_size=1,
                              shuffle=False, num_epochs=1))
  assert len(batches) == n
  for index, batch in enumerate(batches):
    _assert_batches_equal({k: v[0] for k, v in batch.items()},
                          _expected_row(packed_data, "validation", 0, index))


def test_read_segments_both_modes(data, packed_data):
  assert [s.tolist() for s in pipeline.read_segments(data, "train", 3)] == [
      pipeline.read_block(data, "train", 3).tolist()]
  segments = pipeline.read_segments(packed_data, "train", 0)
  assert segments and all(s.dtype == np.int32 and 2 <= len(s) <= CHUNK for s in segments)
  assert sum(len(s) + 2 for s in segments) <= CAP
  with pytest.raises(DataError, match="holds packed rows of documents, not blocks; use "
                                      "read_segments"):
    pipeline.read_block(packed_data, "train", 0)
  with pytest.raises(DataError, match="out of range"):
    pipeline.read_segments(packed_data, "train", 10**6)


def test_pack_row_must_match_the_mode(data, packed_data):
  with pytest.raises(DataError, match="holds documents packed for 'toy\\(\\+2\\)'; the iterator "
                                      "needs a pack_row"):
    _packed_iter(packed_data, pack_row=None)
  with pytest.raises(DataError, match="holds blocks \\(no packing\\), but a pack_row was given"):
    _iter(data, pack_row=toy_pack_row)
  with pytest.raises(DataError, match="has \\d+ rows, fewer than the global batch size 100000"):
    _packed_iter(packed_data, global_batch_size=100000)


def test_packed_rows_that_do_not_fit_fail_loudly(packed_data):
  def longer(segment, rng):  # an objective whose lengths disagree with the prepared packing
    return toy_objective(np.concatenate([segment, segment]), rng)

  it = _packed_iter(packed_data, objective=longer, shuffle=False, global_batch_size=1)
  with pytest.raises(DataError, match="do not fit in one row"):
    for _ in range(pipeline.num_records(packed_data, "train")):
      next(it)


def test_span_corruption_rows_end_to_end(tmp_path):
  """T5 rows: the real objective's lengths match the spec, decoder inputs shift per segment."""
  params = span_corruption.SpanCorruptionParams()
  tok = train_tiny(str(tmp_path / "tiny"))
  vocab_info = tok.vocab_info()

  def lengths(r):
    n = min(max(round(r * 0.15), 1), r - 1)
    s = min(max(round(n / 3), 1), n, r - n)
    return r - n + s + 1, n + s + 1

  spec = packing.PackSpec("span_corruption(0.15,3.0)", lengths, (48, 12))
  corpus = tmp_path / "c.jsonl"
  corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in tiny_documents(60, seed=9)))
  manifest = prepare.prepare(str(corpus), tok, 24, str(tmp_path / "prepared"), pack=spec)
  seen = []

  def objective(segment, rng):
    example = span_corruption.make_example(segment, rng, params, vocab_info)
    seen.append(((len(example["input_ids"]), len(example["labels"])), lengths(len(segment))))
    return example

  def pack_row(examples):
    row = packing.pack_one(examples, {"input_ids": 48, "labels": 12},
                           groups={"input_ids": "", "labels": "decoder_"})
    row["decoder_input_ids"] = packing.shift_right_per_segment(row["labels"],
                                                               row["decoder_segment_ids"])
    return row

  it = pipeline.make_iterator(manifest.directory, "train", objective, 4, SEED, pack_row=pack_row)
  for batch in _take(it, 3):
    assert batch["input_ids"].shape == (4, 48) and batch["decoder_input_ids"].shape == (4, 12)
    np.testing.assert_array_equal(batch["segment_ids"].max(1), batch["decoder_segment_ids"].max(1))
    starts = (batch["decoder_positions"] == 0) & (batch["decoder_segment_ids"] > 0)
    assert np.all(batch["decoder_input_ids"][starts] == 0)
  assert seen and all(got == want for got, want in seen)
