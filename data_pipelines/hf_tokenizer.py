"""A checkpoint's own HuggingFace tokenizer folder behind the project's tokenizer interface.

`HFTokenizer` reads `tokenizer.json` or a WordPiece `vocab.txt` (e.g. from `pretrain import`)
and serves the checkpoint's special ids where `tokenizer.Tokenizer` has the fixed layout of
`data_pipelines.vocab`; `tokenizer.load_tokenizer` picks one of the two from a spec.
`HF_TOKENIZER_FILES` are the files import and export copy with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

from data_pipelines import storage, vocab
from data_pipelines.errors import DataError

# The files of a HuggingFace tokenizer folder that `pretrain import` and the exporters copy.
# `tokenizer.json` (or else `vocab.txt`) defines the encoding; the configs name the special
# tokens' roles; the rest is for slow loaders.
HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                      "special_tokens_map.json", "added_tokens.json", "spiece.model",
                      "sentencepiece.bpe.model", "vocab.json", "merges.txt")
# Files whose bytes decide the ids or the special roles: the identity of the tokenizer.
_HF_IDENTITY_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                      "special_tokens_map.json", "added_tokens.json")
# Role -> token names tried when the configs do not name one (BERT's, then sentencepiece's).
_ROLE_FALLBACKS = {"pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"),
                   "cls": ("[CLS]", "<cls>"), "sep": ("[SEP]", "<sep>"),
                   "mask": ("[MASK]", "<mask>"), "bos": ("<s>",), "eos": ("</s>",)}
_SENTINEL_RE = re.compile(r"^<extra_id_(\d+)>$")
_BYTE_PIECE_RE = re.compile(r"^<0x[0-9A-F]{2}>$")


def is_hf_tokenizer_dir(path: str) -> bool:
  """A directory holding `tokenizer.json` or a WordPiece `vocab.txt`."""
  return os.path.isdir(path) and any(
      os.path.isfile(os.path.join(path, n)) for n in ("tokenizer.json", "vocab.txt"))


def _read_json_file(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f"tokenizer file {path} is not valid JSON ({e})") from None
  return data if isinstance(data, dict) else {}


def _token_name(value: object) -> str | None:
  """A special-token entry of tokenizer_config.json: a string or {"content": ...}."""
  if isinstance(value, str):
    return value
  if isinstance(value, dict) and isinstance(value.get("content"), str):
    return value["content"]
  return None


class HFTokenizer:
  """A HuggingFace `tokenizers` tokenizer (a checkpoint's own) behind `Tokenizer`'s interface.

  Loaded from a folder with `tokenizer.json` (`tokenizers.Tokenizer.from_file`) or, without
  one, a WordPiece `vocab.txt` (BertWordPiece, lowercasing as `tokenizer_config.json`'s
  `do_lower_case`, default true as BertTokenizer). Padding and truncation stored in
  tokenizer.json are switched off: documents are encoded whole, without special tokens.

  The special ids are the checkpoint's: the roles pad / unk / cls / sep / mask / bos / eos
  come from `tokenizer_config.json` / `special_tokens_map.json` (else the usual names
  `[PAD]`, `<pad>`, ...); `<extra_id_N>` added tokens are T5's sentinels. For the
  objectives (`vocab_info`): bos_id is the CLS token where there is one (BERT's [CLS],
  XLNet's <cls>), else <s>; eos_id is </s>, else [SEP] (the document separator of prepared
  blocks); sep_id is [SEP] / <sep>, else </s>.

  Attributes:
    model_path: the folder (named so for `Tokenizer` compatibility).
    sha256: hex digest over the files that decide ids and special roles.
    vocab_size: ids (1 + the largest id, added tokens included).
    num_sentinels: `<extra_id_N>` tokens.
    special_ids: role -> id, None where the tokenizer has no such token.
    files: the tokenizer files present in the folder (copied by import and export).
  """

  kind = "hf"

  def __init__(self, folder: str):
    import tokenizers  # pylint: disable=g-import-not-at-top

    folder = os.path.abspath(folder)
    if not is_hf_tokenizer_dir(folder):
      raise DataError(f"tokenizer folder {folder} has neither tokenizer.json nor vocab.txt")
    self.model_path = folder
    self.files = tuple(n for n in HF_TOKENIZER_FILES if os.path.isfile(os.path.join(folder, n)))
    config = _read_json_file(os.path.join(folder, "tokenizer_config.json"))
    json_path = os.path.join(folder, "tokenizer.json")
    try:
      if os.path.isfile(json_path):
        tok = tokenizers.Tokenizer.from_file(json_path)
      else:
        from tokenizers.implementations import BertWordPieceTokenizer  # pylint: disable=g-import-not-at-top
        lower = config.get("do_lower_case", True)
        wp = BertWordPieceTokenizer(
            os.path.join(folder, "vocab.txt"), lowercase=bool(lower),
            strip_accents=config.get("strip_accents"),
            handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)))
        tok = wp._tokenizer  # pylint: disable=protected-access
    except Exception as e:  # noqa: BLE001 (tokenizers raises plain Exception on bad files)
      raise DataError(f"tokenizer folder {folder} could not be loaded by tokenizers "
                      f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    tok.no_padding()
    tok.no_truncation()
    self._tok = tok
    self._model_json = json.loads(tok.to_str())
    vocab_map = tok.get_vocab(with_added_tokens=True)
    if not vocab_map:
      raise DataError(f"tokenizer folder {folder} has an empty vocabulary")
    self.vocab_size = max(vocab_map.values()) + 1
    self._pieces = [""] * self.vocab_size
    for piece, i in vocab_map.items():
      self._pieces[i] = piece
    self._added = {int(i): t.content for i, t in tok.get_added_tokens_decoder().items()}
    digest = hashlib.sha256()
    for name in _HF_IDENTITY_FILES:
      path = os.path.join(folder, name)
      if os.path.isfile(path):
        digest.update(name.encode() + b"\0" + storage.file_sha256(path).encode() + b"\0")
    self.sha256 = digest.hexdigest()
    names = {**_read_json_file(os.path.join(folder, "special_tokens_map.json")), **config}
    self.special_ids: dict[str, int | None] = {}
    for role, fallbacks in _ROLE_FALLBACKS.items():
      candidates = [_token_name(names.get(f"{role}_token")), *fallbacks]
      self.special_ids[role] = next((vocab_map[c] for c in candidates
                                     if c is not None and c in vocab_map), None)
    sentinels = {}
    for i, piece in enumerate(self._pieces):
      m = _SENTINEL_RE.match(piece)
      if m:
        sentinels[int(m.group(1))] = i
    if sorted(sentinels) != list(range(len(sentinels))):
      raise DataError(f"tokenizer folder {folder} has sentinels <extra_id_N> with gaps")
    self._sentinel_ids = np.array([sentinels[k] for k in range(len(sentinels))], np.int32)
    self.num_sentinels = len(sentinels)
    self._vocab_info: vocab.VocabInfo | None = None

  @property
  def sentinel_ids(self) -> np.ndarray:
    """int32[num_sentinels]: the id of <extra_id_0>, <extra_id_1>, ..."""
    return self._sentinel_ids.copy()

  def encode(self, text: str) -> np.ndarray:
    """Returns int32[num_tokens] ids, without special tokens ([CLS], </s>, ...)."""
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def __reduce__(self):
    # Worker processes (data preparation) load the folder again.
    return (self.__class__, (self.model_path,))

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Encodes many texts on the `tokenizers` thread pool; one int32 array per text."""
    encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

  def decode(self, ids: Iterable[int] | np.ndarray) -> str:
    """Decodes ids to text; sentinels become `<extra_id_N>`, other specials vanish."""
    info = self.vocab_info()
    sentinel = np.zeros(self.vocab_size, bool)
    sentinel[self._sentinel_ids] = True
    out: list[str] = []
    run: list[int] = []

    def flush() -> None:
      if run:
        text = self._tok.decode(run, skip_special_tokens=False)
        # As Tokenizer.decode: after a sentinel, a word start brings back its space.
        out.append((" " if out and info.word_start[run[0]] else "") + text)
        run.clear()

    for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
      if i < 0 or i >= self.vocab_size:
        raise DataError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
      if sentinel[i]:
        flush()
        out.append(self._pieces[i])
      elif not info.is_special[i]:
        run.append(i)
    flush()
    return "".join(out)

  def id_to_piece(self, i: int) -> str:
    return self._pieces[int(i)]

  def _word_start_rule(self) -> tuple[str, str]:
    """("prefix", marker): pieces starting with marker begin a word (Metaspace `▁`,
    byte-level `Ġ`); ("continuation", "##"): pieces starting with it continue one."""
    model = self._model_json.get("model") or {}
    if model.get("type") == "WordPiece":
      return "continuation", model.get("continuing_subword_prefix") or "##"

    def find(node: object) -> tuple[str, str] | None:
      if isinstance(node, dict):
        if node.get("type") == "Metaspace":
          return "prefix", node.get("replacement") or "\u2581"
        if node.get("type") == "ByteLevel":
          return "prefix", "\u0120"
        for value in node.values():
          found = find(value)
          if found:
            return found
      elif isinstance(node, list):
        for value in node:
          found = find(value)
          if found:
            return found
      return None

    for part in ("pre_tokenizer", "decoder", "normalizer"):
      found = find(self._model_json.get(part))
      if found:
        return found
    if model.get("continuing_subword_prefix"):  # BPE with a WordPiece-style prefix
      return "continuation", model["continuing_subword_prefix"]
    return "prefix", "\u2581"

  def vocab_info(self) -> vocab.VocabInfo:
    """Vocabulary facts for objectives, with this tokenizer's special ids (class docstring)."""
    if self._vocab_info is not None:
      return self._vocab_info
    v = self.vocab_size
    is_special = np.zeros(v, bool)
    is_special[list(self._added)] = True
    is_special[[i for i in self.special_ids.values() if i is not None]] = True
    present = np.array([bool(p) for p in self._pieces], bool)
    is_special |= ~present  # holes in the id space are never produced nor sampled
    is_special[self._sentinel_ids] = True
    is_byte = np.array([bool(_BYTE_PIECE_RE.match(p)) for p in self._pieces], bool)
    how, marker = self._word_start_rule()
    if how == "continuation":
      starts = np.array([not p.startswith(marker) for p in self._pieces], bool)
    else:
      starts = np.array([p.startswith(marker) for p in self._pieces], bool)
    word_start = (starts & ~is_byte) | is_special
    start_piece = word_start | vocab.xlnet_start_pieces(self._pieces, is_byte)
    sentence_end = np.array([bool(vocab.SENTENCE_END_RE.search(p)) for p in self._pieces], bool)
    sentence_end &= ~(is_special | is_byte)
    ids = self.special_ids

    def first(*roles: str) -> int | None:
      return next((ids[r] for r in roles if ids[r] is not None), None)

    pad = first("pad", "unk")
    pad = 0 if pad is None else pad
    unk = first("unk", "pad")
    self._vocab_info = vocab.VocabInfo(
        vocab_size=v, is_special=is_special, word_start=word_start,
        sentinel_ids=self.sentinel_ids, sentence_end=sentence_end, start_piece=start_piece,
        pad_id=pad, unk_id=pad if unk is None else unk,
        bos_id=_or(first("cls", "bos"), pad), eos_id=_or(first("eos", "sep"), pad),
        sep_id=_or(first("sep", "eos"), pad), mask_id=_or(first("mask"), pad))
    return self._vocab_info

  def missing_roles(self, roles: Iterable[str]) -> list[str]:
    """Of `roles` ('pad', 'cls' (or bos), 'sep' (or eos), 'eos' (or sep), 'bos' (or cls),
    'mask'), those this tokenizer has no token for."""
    alternatives = {"cls": ("cls", "bos"), "bos": ("cls", "bos"), "sep": ("sep", "eos"),
                    "eos": ("eos", "sep")}
    return [r for r in roles
            if all(self.special_ids.get(a) is None for a in alternatives.get(r, (r,)))]

  @property
  def sentence_end(self) -> np.ndarray:
    """bool[V]: pieces ending a sentence (last character one of . ! ? 。 ？ ！)."""
    return self.vocab_info().sentence_end

  def hf_config_ids(self) -> dict[str, int]:
    """pad/bos/eos ids for an exported config.json: the tokenizer's pad, its bos (else CLS)
    and its eos (else SEP), as transformers' configs of these checkpoints record them."""
    ids = self.special_ids
    out = {"pad_token_id": ids["pad"], "bos_token_id": _or(ids["bos"], ids["cls"]),
           "eos_token_id": _or(ids["eos"], ids["sep"])}
    return {k: v for k, v in out.items() if v is not None}


def _or(value: int | None, default: int | None) -> int | None:
  return default if value is None else value
