"""Reading and tokenizing a corpus's pieces in worker processes, handed back in corpus order.

`prepare.prepare` consumes `encode_corpus`: one `EncodedPiece` per piece of the corpus (see
`readers`), in the order of the corpus whatever the number of workers, so everything after
tokenizing (cutting blocks, packing, shards, the manifest) runs once in the parent exactly as
with one worker and the prepared data is the same byte for byte. A worker reads its piece
(decodes JSON, a parquet row group, an Arrow slice, TFDS records), strips the documents,
assigns each to a split by its text's hash and encodes them; the parent only reads raw bytes
(line files, to cut them between documents) and writes shards. At most `2 * workers` pieces
are in flight, so memory does not grow with the corpus.

Workers are forked from a fresh fork server (which imports this module once), never from the
parent, which may hold JAX's threads (`pretrain train`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import dataclasses
import hashlib
import itertools
import multiprocessing
import os
import time
from collections.abc import Iterator

import numpy as np

from data_pipelines import readers, sources
from data_pipelines.errors import DataError
from data_pipelines.tokenizer import AnyTokenizer

_WORKER: dict = {}


def is_validation(text: str, validation_fraction: float) -> bool:
  """Stable split assignment from the document's text, independent of corpus order."""
  h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")
  return h < validation_fraction * 2.0**64


def default_workers() -> int:
  """The cores this process may run on."""
  if hasattr(os, "sched_getaffinity"):
    return max(1, len(os.sched_getaffinity(0)))
  return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class EncodedPiece:
  """One piece's documents, by split: their ids back to back (`dtype`) and their lengths."""
  tokens: dict[str, np.ndarray]
  lengths: dict[str, np.ndarray]

  @property
  def num_documents(self) -> int:
    return sum(len(v) for v in self.lengths.values())

  @property
  def num_tokens(self) -> int:
    return sum(len(v) for v in self.tokens.values())

  def documents(self, split: str) -> list[np.ndarray]:
    """The split's documents' ids, one array (a view) each."""
    return np.split(self.tokens[split], np.cumsum(self.lengths[split])[:-1])


def encode_piece(piece: readers.Piece, tokenizer: AnyTokenizer, text_field: str,
                 validation_fraction: float, dtype: np.dtype) -> EncodedPiece:
  """Reads, splits and tokenizes one piece (what a worker does)."""
  texts = readers.documents(piece, text_field)
  ids = tokenizer.encode_batch(texts) if texts else []
  validation = np.array([is_validation(t, validation_fraction) for t in texts], bool)
  lengths = np.array([len(x) for x in ids], np.int64)
  tokens, counts = {}, {}
  for split, chosen in (("train", ~validation), ("validation", validation)):
    picked = [x for x, c in zip(ids, chosen) if c]
    tokens[split] = (np.concatenate(picked).astype(dtype) if picked else np.zeros(0, dtype))
    counts[split] = lengths[chosen]
  return EncodedPiece(tokens, counts)


def _init_worker(tokenizer: AnyTokenizer, args: tuple) -> None:
  # One tokenizer thread per worker process: the workers are the parallelism.
  os.environ["RAYON_NUM_THREADS"] = "1"
  _WORKER["tokenizer"], _WORKER["args"] = tokenizer, args
  if hasattr(tokenizer, "encode_threads"):
    tokenizer.encode_threads = 1


def _encode_in_worker(piece: readers.Piece) -> EncodedPiece:
  return encode_piece(piece, _WORKER["tokenizer"], *_WORKER["args"])


def corpus_pieces(corpus_spec: str, text_field: str) -> Iterator[readers.Piece]:
  """Every piece of the corpus, in order (units are listed, and checked, first)."""
  for unit in sources.units(corpus_spec, text_field):
    yield from readers.pieces(unit, text_field)


def encode_corpus(corpus_spec: str, tokenizer: AnyTokenizer, text_field: str,
                  validation_fraction: float, dtype: np.dtype, workers: int = 1
                  ) -> Iterator[EncodedPiece]:
  """The corpus's pieces read, split and encoded by `workers` processes (1: in this one, on
  one tokenizer thread; also when the corpus has no more pieces than workers), in corpus order.

  Raises:
    DataError: whatever reading the corpus raises (in corpus order), or a corpus without text.
  """
  if workers < 1:
    raise DataError(f"data.prepare_workers must be >= 1 (0: one per core), got {workers}")
  args = (text_field, validation_fraction, dtype)
  documents = 0
  pieces = corpus_pieces(corpus_spec, text_field)
  # A corpus of a few pieces (tests, the bundled corpora) is not worth starting processes.
  head = list(itertools.islice(pieces, workers + 1))
  pieces = itertools.chain(head, pieces)
  if workers == 1 or len(head) <= workers:
    local = copy.copy(tokenizer)
    if hasattr(local, "encode_threads"):
      local.encode_threads = 1
    for piece in pieces:
      encoded = encode_piece(piece, local, *args)
      documents += encoded.num_documents
      yield encoded
  else:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # imported once, in the server
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(tokenizer, args))
    window: collections.deque = collections.deque()
    try:
      for piece in pieces:
        window.append(pool.submit(_encode_in_worker, piece))
        if len(window) >= 2 * workers:
          encoded = window.popleft().result()
          documents += encoded.num_documents
          yield encoded
      while window:
        encoded = window.popleft().result()
        documents += encoded.num_documents
        yield encoded
    finally:
      pool.shutdown(wait=True, cancel_futures=True)
  if not documents:
    raise DataError(f"corpus {corpus_spec} contains no text")


class Progress:
  """A progress bar of documents and tokens per second on stderr (only on a terminal)."""

  def __init__(self, what: str):
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    self._bar = tqdm(desc=what, unit=" tokens", unit_scale=True, disable=None, mininterval=1.0,
                     smoothing=0.1)
    self._start = time.perf_counter()
    self.documents = 0
    self.tokens = 0

  def update(self, documents: int, tokens: int) -> None:
    self.documents += documents
    self.tokens += tokens
    seconds = max(time.perf_counter() - self._start, 1e-9)
    self._bar.set_postfix_str(f"{self.documents} docs, {self.documents / seconds:,.0f} docs/s",
                              refresh=False)
    self._bar.update(tokens)

  def close(self) -> None:
    self._bar.close()
