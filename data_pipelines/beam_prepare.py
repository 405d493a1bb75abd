"""`pretrain data prepare --runner beam`: the preparation of `prepare.prepare` (blocks mode) as
an Apache Beam pipeline, for corpora too big for one machine; the ArrayRecord shards and the
manifest are the same bytes as the local preparation makes (the manifest's `created` aside).

The pipeline:

  units (sources.units)  --Reshuffle-->  read + split + encode every piece of a unit
                                         (prepare_workers.encode_piece), keyed (unit, piece)
  piece sizes  --ToList-->  the plan: where each piece's ids start in its split's stream of
                            documents joined with the separator, the block count, which
                            train blocks move to validation (`prepare._ensure_validation`),
                            the shard count of each split
  each piece's stream cut at block and shard boundaries --GroupByKey (split, shard)-->
  one worker writes one shard: fragments in stream order -> blocks -> ArrayRecord

Only the plan is sequential, and it holds a few numbers per piece. The launcher then writes
the manifest from the plan, last: locally into a temporary directory renamed into place; on
gs:// in place (a remote directory with a manifest is complete). Documents mode
(data.pack_documents) and the ICP order pack or order documents sequentially; they run with
the local runner only.

Workers get the tokenizer as its files' bytes (a Dataflow worker does not see the launcher's
disk) and must read the corpus (gs:// on Dataflow) and this package (`--setup_file
./setup.py`); see docs/preparing_data.md for the exact command.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence

import numpy as np

from data_pipelines import prepare_workers, readers, sources, storage
from data_pipelines.errors import DataError
from data_pipelines.manifest import FORMAT_VERSION, MANIFEST_NAME, SPLITS, Manifest, SplitInfo
from data_pipelines.shards import block_dtype

_LOG = logging.getLogger(__name__)
_PLAN_NAME = "_beam_plan.json"
_FALLBACK_VALIDATION_FRACTION = 0.01  # as prepare._ensure_validation


def import_beam():
  """apache_beam, or one DataError saying how to install it."""
  logging.disable(logging.WARNING)  # its import warns on the root logger about GCP clients
  try:
    import apache_beam  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise DataError("--runner beam needs Apache Beam, which is not installed: pip install "
                    "'apache-beam' (or this project's [beam] extra), or use --runner local"
                    ) from None
  finally:
    logging.disable(logging.NOTSET)
  return apache_beam


@dataclasses.dataclass(frozen=True)
class TokenizerFiles:
  """A tokenizer as its files' bytes, loaded again on a worker that cannot see our disk."""
  kind: str
  files: dict[str, bytes]
  sha256: str

  @classmethod
  def of(cls, tokenizer) -> TokenizerFiles:
    if tokenizer.kind == "hf":
      folder = tokenizer.model_path
      names = [n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))]
      paths = {n: os.path.join(folder, n) for n in names}
    else:
      prefix = os.path.splitext(tokenizer.model_path)[0]
      paths = {"tokenizer.model": tokenizer.model_path}
      if os.path.isfile(prefix + ".json"):
        paths["tokenizer.json"] = prefix + ".json"
    files = {}
    for name, path in paths.items():
      with open(path, "rb") as f:
        files[name] = f.read()
    return cls(tokenizer.kind, files, tokenizer.sha256)

  def load(self, directory: str):
    from data_pipelines.tokenizer import HFTokenizer, Tokenizer  # pylint: disable=import-outside-toplevel
    for name, data in self.files.items():
      with open(os.path.join(directory, name), "wb") as f:
        f.write(data)
    if self.kind == "hf":
      tokenizer = HFTokenizer(directory)
    else:
      tokenizer = Tokenizer.load(os.path.join(directory, "tokenizer.model"))
    if tokenizer.sha256 != self.sha256:  # the sp sha256 is of the .model bytes alone
      raise DataError(f"the tokenizer rebuilt on a Beam worker differs ({tokenizer.sha256[:12]}"
                      f" vs {self.sha256[:12]})")
    return tokenizer


def _encode_unit(item, tokenizer_files: TokenizerFiles, args: tuple) -> Iterator:
  """(unit index, unit) -> ((unit index, piece index), EncodedPiece) for each piece."""
  index, unit = item
  tokenizer = _worker_tokenizer(tokenizer_files)
  for k, piece in enumerate(readers.pieces(unit, args[0])):
    yield (index, k), prepare_workers.encode_piece(piece, tokenizer, *args)


_TOKENIZERS: dict = {}


def _worker_tokenizer(files: TokenizerFiles):
  if files.sha256 not in _TOKENIZERS:
    directory = tempfile.mkdtemp(prefix="beam_tokenizer_")
    tokenizer = files.load(directory)
    if hasattr(tokenizer, "encode_threads"):
      tokenizer.encode_threads = 1
    _TOKENIZERS[files.sha256] = tokenizer
  return _TOKENIZERS[files.sha256]


def _sizes(item) -> tuple:
  key, encoded = item
  return key, {s: (len(encoded.lengths[s]), len(encoded.tokens[s])) for s in SPLITS}


def make_plan(sizes: list, corpus_spec: str, block_length: int, shard_size: int,
              separator_id: int | None) -> dict:
  """Where every piece's stream starts and which shard each block goes to (module docstring).

  Raises:
    DataError: a corpus without text, or too few tokens for one train and one validation block.
  """
  offsets: dict = {}
  totals = {s: {"num_documents": 0, "num_tokens": 0} for s in SPLITS}
  for key, by_split in sorted(sizes):
    for split, (documents, tokens) in by_split.items():
      if not documents:
        continue
      total = totals[split]
      before = separator_id is not None and total["num_documents"] > 0
      offsets[(tuple(key), split)] = total["num_tokens"]
      total["num_tokens"] += tokens + before + (documents - 1 if separator_id is not None else 0)
      total["num_documents"] += documents
  if not any(t["num_documents"] for t in totals.values()):
    raise DataError(f"corpus {corpus_spec} contains no text")
  blocks = {s: totals[s]["num_tokens"] // block_length for s in SPLITS}
  train, validation = blocks["train"], blocks["validation"]
  if train + validation < 2 or train == 0:
    raise DataError(f"corpus {corpus_spec} has {sum(t['num_tokens'] for t in totals.values())} "
                    f"tokens, too few to fill one train and one validation block of length "
                    f"{block_length}")
  borrowed = 0
  if not validation:  # the sequential writer's last, unwritten shard holds 1..S blocks
    last_shard = train - shard_size * ((train - 1) // shard_size)
    borrowed = min(max(1, math.ceil(_FALLBACK_VALIDATION_FRACTION * train)), last_shard,
                   train - 1)
  kept = {"train": train - borrowed, "validation": validation + borrowed}
  return {"offsets": offsets, "totals": totals, "blocks": blocks, "borrowed": borrowed,
          "kept": kept, "block_length": block_length, "shard_size": shard_size,
          "separator_id": separator_id,
          "num_shards": {s: math.ceil(kept[s] / shard_size) for s in SPLITS}}


def _destination(plan: dict, split: str, position: int) -> tuple[str, int, int]:
  """(split, shard, end position in `split`'s stream) of the block holding `position`."""
  length, size = plan["block_length"], plan["shard_size"]
  block = position // length
  kept = plan["kept"]["train"]
  if split == "validation" or block < kept:
    limit = plan["kept"][split] if split == "validation" else kept
    shard = block // size
    return split, shard, min((shard + 1) * size, limit) * length
  shard = (block - kept) // size  # a train block moved to validation (which has none)
  return "validation", shard, (kept + min((shard + 1) * size, plan["borrowed"])) * length


def _fragments(item, plan: dict) -> Iterator:
  """A piece's stream of each split cut at shard boundaries: ((split, shard), (stream split,
  start, ids))."""
  key, encoded = item
  length, separator = plan["block_length"], plan["separator_id"]
  for split in SPLITS:
    lengths = encoded.lengths[split]
    if not len(lengths):
      continue
    start = plan["offsets"][(tuple(key), split)]
    joined = encoded.tokens[split]
    if separator is not None:
      joined = np.insert(joined, np.cumsum(lengths)[:-1], separator)
      if start > 0:
        joined = np.concatenate([np.array([separator], joined.dtype), joined])
    end = min(start + len(joined), plan["blocks"][split] * length)
    position = start
    while position < end:
      target, shard, shard_end = _destination(plan, split, position)
      stop = min(end, shard_end)
      yield (target, shard), (split, position, joined[position - start:stop - start])
      position = stop


def _write_shard(item, plan: dict, out_dir: str, dtype_name: str) -> str:
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  (split, shard), fragments = item
  fragments = sorted(fragments, key=lambda f: (f[0] != split, f[1]))
  ids = np.concatenate([f[2] for f in fragments])
  blocks = ids.reshape(-1, plan["block_length"]).astype(np.dtype(dtype_name))
  name = f"{split}-{shard:05d}-of-{plan['num_shards'][split]:05d}.array_record"
  with tempfile.TemporaryDirectory(prefix="beam_shard_") as tmp:
    local = os.path.join(tmp, name) if storage.is_remote(out_dir) else os.path.join(out_dir,
                                                                                   name)
    writer = array_record_module.ArrayRecordWriter(local, "group_size:1")
    for block in blocks:
      writer.write(block.tobytes())
    writer.close()
    if storage.is_remote(out_dir):
      storage.upload(local, storage.join(out_dir, name))
  return name


def _write_plan(plan: dict, out_dir: str) -> None:
  public = {k: v for k, v in plan.items() if k != "offsets"}
  storage.write_text(storage.join(out_dir, _PLAN_NAME), json.dumps(public))


def run_pipeline(corpus_spec: str, tokenizer, block_length: int, out_dir: str,
                 validation_fraction: float, shard_size: int, separator_id: int | None,
                 text_field: str, beam_options: Sequence[str]) -> dict:
  """Runs the pipeline writing the shards and the plan into `out_dir`; returns the plan."""
  beam = import_beam()
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel

  units = sources.units(corpus_spec, text_field)  # checks the corpus before any job starts
  dtype = block_dtype(tokenizer.vocab_size)
  args = (text_field, validation_fraction, dtype)
  files = TokenizerFiles.of(tokenizer)
  options = PipelineOptions(list(beam_options))
  # The runner logs a failing step's traceback before raising it; the exception (below) is
  # the one report: a DataError becomes the command's one `error:` line.
  runner_log = logging.getLogger("apache_beam.runners")
  level = runner_log.level
  runner_log.setLevel(logging.CRITICAL)
  try:
    with beam.Pipeline(options=options) as p:
      encoded = (p | "Units" >> beam.Create(list(enumerate(units)))
                 | "Spread" >> beam.Reshuffle()
                 | "Encode" >> beam.FlatMap(_encode_unit, files, args))
      plan = (encoded | "Sizes" >> beam.Map(_sizes)
              | "AllSizes" >> beam.combiners.ToList()
              | "Plan" >> beam.Map(make_plan, corpus_spec, block_length, shard_size,
                                   separator_id))
      _ = plan | "WritePlan" >> beam.Map(_write_plan, out_dir)
      _ = (encoded
           | "Cut" >> beam.FlatMap(_fragments, beam.pvalue.AsSingleton(plan))
           | "ByShard" >> beam.GroupByKey()
           | "WriteShards" >> beam.Map(_write_shard, beam.pvalue.AsSingleton(plan), out_dir,
                                       dtype.name))
  except DataError as e:  # Beam appends " [while running 'Step']" to a DoFn's message
    raise DataError(str(e).split(" [while running")[0].strip()) from None
  finally:
    runner_log.setLevel(level)
  return json.loads(storage.read_text(storage.join(out_dir, _PLAN_NAME)))


def prepare_beam(corpus_spec: str, tokenizer, block_length: int, out_dir: str,
                 validation_fraction: float = 0.02, shard_size: int = 4096,
                 separator_id: int | None = 1, text_field: str = "text",
                 beam_options: Sequence[str] | str = ()) -> Manifest:
  """`prepare.prepare` (blocks mode) on Beam; `out_dir` local or gs://. beam_options: Beam's
  pipeline flags (a list, or one string split like a shell), e.g. `--runner=DataflowRunner
  --project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py`; none:
  DirectRunner."""
  if isinstance(beam_options, str):
    beam_options = shlex.split(beam_options)
  import_beam()
  start = time.time()
  fingerprint = sources.fingerprint(corpus_spec)
  remote = storage.is_remote(out_dir)
  work = out_dir if remote else f"{out_dir.rstrip(os.sep)}.tmp-{os.getpid()}"
  if not remote:
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
  try:
    plan = run_pipeline(corpus_spec, tokenizer, block_length, work, validation_fraction,
                        shard_size, separator_id, text_field, beam_options)
    manifest = _manifest(plan, corpus_spec, fingerprint, tokenizer, block_length,
                         separator_id, validation_fraction)
    storage.write_text(storage.join(work, MANIFEST_NAME),
                       json.dumps(manifest.to_json(), indent=2) + "\n")
    if remote:
      storage.filesystem(work).rm(storage.join(work, _PLAN_NAME))
    else:
      os.remove(os.path.join(work, _PLAN_NAME))
      from data_pipelines.prepare import _replace_dir  # pylint: disable=import-outside-toplevel
      _replace_dir(work, out_dir)
  except BaseException:
    if not remote:
      shutil.rmtree(work, ignore_errors=True)
    raise
  manifest = dataclasses.replace(manifest, directory=out_dir)
  _LOG.info("%s in %.1f s (Beam)", manifest.summary(), time.time() - start)
  return manifest


def _manifest(plan: dict, corpus_spec: str, fingerprint: str, tokenizer, block_length: int,
              separator_id: int | None, validation_fraction: float) -> Manifest:
  splits = {}
  for split in SPLITS:
    n = plan["num_shards"][split]
    splits[split] = SplitInfo(
        shards=[f"{split}-{i:05d}-of-{n:05d}.array_record" for i in range(n)],
        num_blocks=plan["kept"][split],
        borrowed_from_train=plan["borrowed"] if split == "validation" else 0,
        **plan["totals"][split])
  return Manifest(
      format_version=FORMAT_VERSION, corpus=corpus_spec, corpus_fingerprint=fingerprint,
      tokenizer_sha256=tokenizer.sha256, tokenizer_path=os.path.abspath(tokenizer.model_path),
      vocab_size=tokenizer.vocab_size, block_length=block_length,
      dtype=block_dtype(tokenizer.vocab_size).name, separator_id=separator_id,
      validation_fraction=validation_fraction, splits=splits,
      created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
