"""SentencePiece tokenizers with this project's fixed special ids and T5-style sentinels.

Id layout for a tokenizer of `vocab_size` V with S sentinels:

  0..5          <pad> </s> <unk> <s> <sep> <mask>   (data_pipelines.vocab constants)
  6..N-1        the SentencePiece pieces (bytes, if byte fallback, then learned pieces)
  N..N+P-1      paradigm tokens, if the sidecar names any (UL2's [NLU] [NLG] [S2S])
  V-S..V-1      sentinels; <extra_id_0> = V-1, <extra_id_1> = V-2, ...

Sentinels and paradigm tokens live outside the SentencePiece model so that text can never
produce them; the sidecar `<prefix>.json` records how many sentinels there are and which
paradigm tokens (`"paradigm_tokens": ["[NLU]", "[NLG]", "[S2S]"]`, absent = none).
`bundled_ul2` is the bundled model with UL2's three paradigm tokens and 161 sentinels (X
denoisers cut up to 128 spans from inputs of 512): `bundled_8k_ul2.model` is a link to the
same SentencePiece model, so text encodes to the same ids.

`HFTokenizer` (hf_tokenizer.py) wraps a checkpoint's own HuggingFace tokenizer
(`tokenizer.json` or a WordPiece `vocab.txt`, e.g. from `pretrain import`) behind the same
interface, with the checkpoint's special ids instead of the fixed ones; `load_tokenizer` picks
one from a spec. `train_tokenizer` trains the SentencePiece model this module loads.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm

from data_pipelines import storage, vocab
from data_pipelines.errors import DataError
from data_pipelines.hf_tokenizer import HF_TOKENIZER_FILES, HFTokenizer, is_hf_tokenizer_dir

# The public names, with those of hf_tokenizer that callers have always imported from here.
__all__ = ["BUNDLED_NAME", "BUNDLED_UL2_NAME", "HF_TOKENIZER_FILES", "MIN_LEARNED_PIECES",
           "TOKENIZER_DIR", "UL2_PARADIGM_TOKENS", "AnyTokenizer", "HFTokenizer", "Tokenizer",
           "bundled_tokenizer_path", "is_hf_tokenizer_dir", "load_tokenizer",
           "sidecar_paradigm_tokens", "train_tokenizer"]

TOKENIZER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpora", "tokenizer")
BUNDLED_NAME = "bundled_8k"
BUNDLED_UL2_NAME = "bundled_8k_ul2"
# UL2's mode-switching tokens (Tay et al. 2022): R-, X- and S-denoising.
UL2_PARADIGM_TOKENS = ("[NLU]", "[NLG]", "[S2S]")
# Learned pieces required beyond specials, sentinels and byte pieces: fewer than this cannot
# cover even the characters of a small corpus.
MIN_LEARNED_PIECES = 16
_LOG = logging.getLogger(__name__)


def bundled_tokenizer_path() -> str:
  """Path of the committed 8k unigram tokenizer trained on the bundled corpora."""
  return os.path.join(TOKENIZER_DIR, BUNDLED_NAME + ".model")


def _sidecar_path(model_path: str) -> str:
  return os.path.splitext(model_path)[0] + ".json"


def sidecar_paradigm_tokens(model_path: str) -> tuple[str, ...]:
  """The paradigm tokens the sidecar of a `.model` reserves (ids right above its pieces)."""
  sidecar = _sidecar_path(model_path)
  if not os.path.isfile(sidecar):
    return ()
  with open(sidecar, encoding="utf-8") as f:
    tokens = json.load(f).get("paradigm_tokens", [])
  if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens) or (
      len(set(tokens)) != len(tokens)):
    raise DataError(f"tokenizer sidecar {sidecar}: 'paradigm_tokens' must be a list of "
                    f"distinct non-empty strings, got {tokens!r}")
  return tuple(tokens)


class Tokenizer:
  """A loaded SentencePiece model plus sentinels above its vocabulary.

  Attributes:
    model_path: the `.model` file.
    sha256: hex digest of the `.model` bytes (identifies the tokenizer in caches).
    num_sentinels: number of `<extra_id_N>` ids on top.
    paradigm_tokens: names of the ids right above the pieces (UL2's `[NLU]` ...), or ().
    vocab_size: total ids, paradigm tokens and sentinels included.
    special_ids: role -> id (the fixed layout of data_pipelines.vocab).
  """

  kind = "sentencepiece"

  def __init__(self, model_path: str, num_sentinels: int = 0,
               paradigm_tokens: tuple[str, ...] = ()):
    if not os.path.isfile(model_path):
      raise DataError(f"tokenizer model {model_path} does not exist")
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.Load(model_path)
    except (OSError, RuntimeError) as e:
      raise DataError(f"tokenizer model {model_path} is not a sentencepiece model "
                      f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    pieces = tuple(self._sp.id_to_piece(i) for i in range(min(6, self._sp.get_piece_size())))
    if pieces != vocab.SPECIAL_PIECES:
      raise DataError(f"tokenizer model {model_path} has special pieces {list(pieces)} at ids "
                      f"0..5; expected {list(vocab.SPECIAL_PIECES)}")
    self.model_path = model_path
    self.sha256 = storage.file_sha256(model_path)
    self.num_sentinels = num_sentinels
    self.paradigm_tokens = tuple(paradigm_tokens)
    self.sp_vocab_size = self._sp.get_piece_size()
    self.vocab_size = self.sp_vocab_size + len(self.paradigm_tokens) + num_sentinels
    self.special_ids = {"pad": vocab.PAD_ID, "unk": vocab.UNK_ID, "cls": vocab.BOS_ID,
                        "sep": vocab.SEP_ID, "mask": vocab.MASK_ID, "bos": vocab.BOS_ID,
                        "eos": vocab.EOS_ID}
    self.encode_threads = os.cpu_count() or 1  # SentencePiece threads of encode_batch

  def __reduce__(self):
    # Worker processes (data preparation) load the model from its file again.
    return (self.__class__, (self.model_path, self.num_sentinels, self.paradigm_tokens))

  @classmethod
  def load(cls, model_path: str) -> Tokenizer:
    """Loads `<prefix>.model`, reading sentinels from `<prefix>.json` (absent = 0 sentinels)."""
    if not os.path.isfile(model_path):
      raise DataError(f"tokenizer model {model_path} does not exist")
    sidecar = _sidecar_path(model_path)
    num_sentinels = 0
    if os.path.isfile(sidecar):
      try:
        with open(sidecar, encoding="utf-8") as f:
          meta = json.load(f)
        num_sentinels = int(meta["num_sentinels"])
      except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"tokenizer sidecar {sidecar} is invalid ({e!r}); expected JSON with "
                        f"an integer 'num_sentinels'") from None
      if meta.get("sha256") and meta["sha256"] != storage.file_sha256(model_path):
        raise DataError(f"tokenizer sidecar {sidecar} records sha256 {meta['sha256'][:12]}… "
                        f"but {model_path} has {storage.file_sha256(model_path)[:12]}…; retrain or fix it")
    return cls(model_path, num_sentinels, sidecar_paradigm_tokens(model_path))

  def encode(self, text: str) -> np.ndarray:
    """Returns int32[num_tokens] ids, without BOS or EOS."""
    return np.asarray(self._sp.encode(text, out_type=int), dtype=np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Encodes many texts on SentencePiece's own threads; one int32 array per text."""
    ids = self._sp.encode(list(texts), out_type=int, num_threads=self.encode_threads)
    return [np.asarray(x, dtype=np.int32) for x in ids]

  def decode(self, ids: Iterable[int] | np.ndarray) -> str:
    """Decodes ids to text; sentinels become `<extra_id_N>`, other specials vanish."""
    out: list[str] = []
    run: list[int] = []

    def flush() -> None:
      if run:
        # SentencePiece drops the leading space of the text it decodes; after a sentinel
        # that space is real.
        space = " " if out and self._sp.id_to_piece(run[0]).startswith("▁") else ""
        out.append(space + self._sp.decode(run))
        run.clear()

    for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
      if i < 0 or i >= self.vocab_size:
        raise DataError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
      if i >= self.sp_vocab_size:
        flush()
        out.append(self.id_to_piece(i))
      else:
        run.append(i)
    flush()
    return "".join(out)

  def id_to_piece(self, i: int) -> str:
    if i >= self.sp_vocab_size + len(self.paradigm_tokens):
      return f"<extra_id_{self.vocab_size - 1 - i}>"
    if i >= self.sp_vocab_size:
      return self.paradigm_tokens[i - self.sp_vocab_size]
    return self._sp.id_to_piece(int(i))

  @property
  def sentinel_ids(self) -> np.ndarray:
    """int32[num_sentinels]: <extra_id_0> first, i.e. V-1, V-2, ..."""
    return np.arange(self.vocab_size - 1, self.vocab_size - 1 - self.num_sentinels, -1,
                     dtype=np.int32)

  @property
  def paradigm_ids(self) -> dict[str, int]:
    """Paradigm token -> its id (right above the SentencePiece pieces)."""
    return {t: self.sp_vocab_size + k for k, t in enumerate(self.paradigm_tokens)}

  def _sp_flags(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
    pieces = [self._sp.id_to_piece(i) for i in range(self.sp_vocab_size)]
    is_control = np.array([self._sp.is_control(i) or self._sp.is_unknown(i)
                           for i in range(self.sp_vocab_size)], bool)
    is_byte = np.array([self._sp.is_byte(i) for i in range(self.sp_vocab_size)], bool)
    return is_control, is_byte, pieces

  def vocab_info(self) -> vocab.VocabInfo:
    """Vocabulary facts for objectives: specials, word starts ([V] bool each), sentinels."""
    is_control, is_byte, pieces = self._sp_flags()
    is_special = np.zeros(self.vocab_size, bool)
    is_special[: len(vocab.SPECIAL_PIECES)] = True
    is_special[: self.sp_vocab_size] |= is_control
    is_special[self.sp_vocab_size:] = True
    word_start = is_special.copy()
    word_start[: self.sp_vocab_size] |= np.array([p.startswith("▁") for p in pieces], bool)
    # Byte pieces continue whatever character they encode; they never open a word themselves.
    word_start[: self.sp_vocab_size] &= ~is_byte
    start_piece = word_start.copy()
    start_piece[: self.sp_vocab_size] |= vocab.xlnet_start_pieces(pieces, is_byte)
    return vocab.VocabInfo(vocab_size=self.vocab_size, is_special=is_special,
                           word_start=word_start, sentinel_ids=self.sentinel_ids,
                           sentence_end=self.sentence_end, start_piece=start_piece,
                           paradigm_ids=tuple(self.paradigm_ids.items()))

  def missing_roles(self, roles: Iterable[str]) -> list[str]:
    """Every role has its fixed id here."""
    del roles
    return []

  @property
  def sentence_end(self) -> np.ndarray:
    """bool[V]: pieces ending a sentence (last character one of . ! ? 。 ？ ！)."""
    is_control, is_byte, pieces = self._sp_flags()
    ends = np.zeros(self.vocab_size, bool)
    ends[: self.sp_vocab_size] = [bool(vocab.SENTENCE_END_RE.search(p)) for p in pieces]
    ends[: self.sp_vocab_size] &= ~(is_control | is_byte)
    return ends


AnyTokenizer = Tokenizer | HFTokenizer


def load_tokenizer(spec: str) -> AnyTokenizer:
  """`bundled` (the committed 8k model), `bundled_ul2` (the same with UL2's paradigm tokens),
  a path to a `.model` file, or a HuggingFace tokenizer: a folder with `tokenizer.json` or
  `vocab.txt` (or the path of either file)."""
  if spec == "bundled_ul2":
    return Tokenizer.load(os.path.join(TOKENIZER_DIR, BUNDLED_UL2_NAME + ".model"))
  if spec != "bundled":
    if os.path.isfile(spec) and os.path.basename(spec) in ("tokenizer.json", "vocab.txt"):
      spec = os.path.dirname(os.path.abspath(spec))
    if os.path.isdir(spec):
      return HFTokenizer(spec)
  return Tokenizer.load(bundled_tokenizer_path() if spec == "bundled" else spec)


def _training_lines(documents: Iterable[str]) -> Iterator[str]:
  """SentencePiece trains on lines; a document's paragraphs are its lines."""
  for doc in documents:
    for line in doc.split("\n"):
      line = line.strip()
      if line:
        yield line


def _strip_output_location(model_path: str) -> None:
  """Keeps only the basename of `model_prefix` in the model's stored trainer spec.

  SentencePiece records the output path in the model, so identical training would otherwise
  give different bytes (and a different sha256 cache key) in different directories.
  """
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top

  proto = sentencepiece_model_pb2.ModelProto()
  with open(model_path, "rb") as f:
    proto.ParseFromString(f.read())
  proto.trainer_spec.model_prefix = os.path.basename(proto.trainer_spec.model_prefix)
  with open(model_path, "wb") as f:
    f.write(proto.SerializeToString())


def train_tokenizer(documents: Iterable[str], model_prefix: str, vocab_size: int = 8000,
                    model_type: str = "unigram", num_sentinels: int = 100,
                    character_coverage: float = 0.9995, byte_fallback: bool = True,
                    input_sentence_size: int = 2_000_000, seed: int = 0,
                    trained_on: str = "") -> Tokenizer:
  """Trains a SentencePiece model with fixed specials and writes `<prefix>.{model,vocab,json}`.

  The SentencePiece model gets `vocab_size - num_sentinels` pieces; sentinels are added on
  top at load time. Training is single-threaded with a fixed seed so that the same input
  gives the same model bytes.

  Args:
    documents: texts; each line of a document is one training sentence.
    model_prefix: output path without extension; its directory is created.
    vocab_size: total ids including specials and sentinels.
    model_type: "unigram" or "bpe".
    num_sentinels: `<extra_id_N>` ids reserved at the top of the vocabulary.
    character_coverage: fraction of characters the model must cover (rest -> bytes/unk).
    byte_fallback: encode uncovered characters as UTF-8 byte pieces instead of <unk>.
    input_sentence_size: at most this many lines are sampled for training (0 = all).
    seed: SentencePiece's random seed (sentence sampling).
    trained_on: free text recorded in the sidecar (e.g. the corpus spec).

  Raises:
    DataError: a bad model_type or vocab_size, no training text, or SentencePiece refusing.
  """
  if model_type not in ("unigram", "bpe"):
    raise DataError(f"model_type {model_type!r} is not supported; expected 'unigram' or 'bpe'")
  if num_sentinels < 0:
    raise DataError(f"num_sentinels must be >= 0, got {num_sentinels}")
  minimum = (len(vocab.SPECIAL_PIECES) + num_sentinels + MIN_LEARNED_PIECES
             + (256 if byte_fallback else 0))
  if vocab_size < minimum:
    raise DataError(f"vocab_size {vocab_size} is too small: {len(vocab.SPECIAL_PIECES)} "
                    f"specials + {num_sentinels} sentinels"
                    f"{' + 256 byte pieces' if byte_fallback else ''} + {MIN_LEARNED_PIECES} "
                    f"learned pieces need at least {minimum}")
  lines = _training_lines(documents)
  first = next(lines, None)
  if first is None:
    raise DataError(f"no text to train tokenizer {model_prefix} on (the input is empty)")
  os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
  spm.set_random_generator_seed(seed)
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=itertools.chain([first], lines),
        model_prefix=model_prefix,
        vocab_size=vocab_size - num_sentinels,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=byte_fallback,
        split_digits=True,
        normalization_rule_name="nmt_nfkc",
        pad_id=vocab.PAD_ID, eos_id=vocab.EOS_ID, unk_id=vocab.UNK_ID, bos_id=vocab.BOS_ID,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", bos_piece="<s>",
        control_symbols=["<sep>", "<mask>"],
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        max_sentence_length=16384,
        num_threads=1,  # multi-threaded EM makes the model bytes depend on scheduling
        minloglevel=2,
    )
  except RuntimeError as e:
    raise DataError(f"sentencepiece could not train {model_prefix}: "
                    f"{str(e).strip().splitlines()[-1]}") from None
  model_path = model_prefix + ".model"
  _strip_output_location(model_path)
  meta = {"num_sentinels": num_sentinels, "vocab_size": vocab_size, "model_type": model_type,
          "trained_on": trained_on, "sha256": storage.file_sha256(model_path)}
  with open(_sidecar_path(model_path), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
    f.write("\n")
  _LOG.info("trained tokenizer %s: %d ids (%d sentinels)", model_path, vocab_size,
            num_sentinels)
  return Tokenizer.load(model_path)
