"""Export a SentencePiece model (plus T5-style sentinels) as a HuggingFace fast tokenizer.

The result loads offline with `transformers.AutoTokenizer.from_pretrained(out_dir)` and
encodes plain text to exactly the ids `sentencepiece.SentencePieceProcessor.encode` gives.
We build `tokenizer.json` ourselves with the `tokenizers` library rather than rely on a
slow->fast converter because (a) our sentinels live above the sp model and must keep their
ids, (b) the stock converters ignore byte fallback or the whitespace flags of the model.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tokenizers import (
  AddedToken,
  Regex,
  Tokenizer,
  decoders,
  normalizers,
  pre_tokenizers,
  processors,
)
from tokenizers.models import BPE, Unigram

from data_pipelines import tokenizer as tokenizer_sidecar
from data_pipelines import vocab as vocab_lib

# SentencePiece piece types (sentencepiece_model.proto).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
# sp model types.
_UNIGRAM, _BPE = 1, 2
_SPACE = "\u2581"  # "▁", SentencePiece's whitespace symbol



def sentinel_token(i: int) -> str:
  """The piece name of sentinel `i` (`<extra_id_0>` is the top id of the vocabulary)."""
  return f"<extra_id_{i}>"


def paradigm_tokens(sp_model_path: str) -> tuple[str, ...]:
  """The paradigm tokens (UL2's `[NLU]` ...) the model's sidecar reserves right above its
  pieces; exported as special added tokens at those ids."""
  return tokenizer_sidecar.sidecar_paradigm_tokens(sp_model_path)


def _load_proto(sp_model_path: str) -> sp_pb2.ModelProto:
  proto = sp_pb2.ModelProto()
  with open(sp_model_path, "rb") as f:
    proto.ParseFromString(f.read())
  return proto


def _check_special_pieces(proto: sp_pb2.ModelProto) -> None:
  """Our objectives hard-code the special ids; a model that disagrees must not be exported."""
  pieces = [p.piece for p in proto.pieces]
  for want_id, want in enumerate(vocab_lib.SPECIAL_PIECES):
    got = pieces[want_id] if want_id < len(pieces) else None
    if got != want:
      raise ValueError(f"sentencepiece id {want_id} is {got!r}, expected {want!r}; this model "
                       "does not follow the project's special-id layout (data_pipelines/vocab.py)")


def _unigram_vocab(proto: sp_pb2.ModelProto) -> list[tuple[str, float]]:
  """(piece, score) in id order; pieces sp never produces from text get a losing score.

  sp matches only NORMAL (and user-defined) pieces against text, but a `tokenizers` Unigram
  matches every piece in its vocabulary: text like "<0xE3>" or "<s>" would otherwise come
  out as one byte/control id. A score far below any normal path keeps them unreachable,
  while byte fallback still finds the byte pieces by name.

  Caveat: `tokenizers` prices an unknown character at (lowest score in the vocab) - 10, so
  if the characters spelling a byte piece ("<", "0"-"9", "A"-"F", "x", ">") are themselves
  unknown to the model, the literal text "<0x41>" still becomes one id where sp emits
  bytes. Any model trained on real text knows these ASCII characters.
  """
  normal = [p.score for p in proto.pieces if p.type == _NORMAL]
  floor = min(normal) if normal else 0.0
  vocab = []
  for p in proto.pieces:
    score = p.score
    if p.type not in (_NORMAL, _USER_DEFINED):
      # Beats-nothing score: lower than spelling the piece out with the worst normal pieces.
      score = (len(p.piece) + 1) * min(floor, -1.0) - 10.0
    vocab.append((p.piece, score))
  return vocab


def _bpe_merges(proto: sp_pb2.ModelProto) -> list[tuple[str, str]]:
  """Merges for a `tokenizers` BPE that reproduces sp's BPE encoding.

  sp BPE repeatedly joins the adjacent pair whose concatenation is the highest-scoring
  piece; HF BPE joins the lowest-ranked merge. So every split `a + b` of a normal piece
  into two known pieces becomes a merge ranked by the piece's score (ties by id).
  """
  ids = {p.piece: i for i, p in enumerate(proto.pieces)
         if p.type in (_NORMAL, _USER_DEFINED, _UNKNOWN)}
  merges = []
  for i, p in enumerate(proto.pieces):
    if p.type != _NORMAL or len(p.piece) < 2:
      continue
    for cut in range(1, len(p.piece)):
      left, right = p.piece[:cut], p.piece[cut:]
      if left in ids and right in ids:
        # Secondary key: prefer merges of longer-lived (lower id) parts, as HF's extractor.
        merges.append((-p.score, i, ids[left], ids[right], left, right))
  merges.sort()
  return [(left, right) for *_, left, right in merges]


def _normalizer(proto: sp_pb2.ModelProto) -> normalizers.Normalizer:
  """sp's normalizer: charsmap, then whitespace handling on the *normalized* text.

  With remove_extra_whitespaces sp drops leading/trailing ASCII spaces and collapses runs
  of them (other whitespace only counts once the charsmap mapped it to ' ', so this must
  not be tokenizers' Unicode-aware Strip). add_dummy_prefix puts one ▁ in front of
  non-empty text; escape_whitespaces turns ' ' into ▁.
  """
  spec = proto.normalizer_spec
  steps: list[normalizers.Normalizer] = []
  if spec.precompiled_charsmap:
    steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
  if spec.remove_extra_whitespaces:
    steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""),
              normalizers.Replace(Regex(r" {2,}"), " ")]
  if spec.add_dummy_prefix:
    # Prepend leaves empty strings alone, like sp (which returns no pieces for "").
    steps.append(normalizers.Prepend(_SPACE))
  if spec.escape_whitespaces:
    steps.append(normalizers.Replace(" ", _SPACE))
  return normalizers.Sequence(steps)


def _decoder(proto: sp_pb2.ModelProto) -> decoders.Decoder:
  steps: list[decoders.Decoder] = [decoders.Replace(_SPACE, " ")]
  if proto.trainer_spec.byte_fallback:
    steps.append(decoders.ByteFallback())
  steps.append(decoders.Fuse())
  if proto.normalizer_spec.add_dummy_prefix:
    steps.append(decoders.Strip(" ", 1, 0))  # the dummy prefix of the first word
  return decoders.Sequence(steps)


def _spec(family: str) -> Any:
  from t5x_like import families  # the family records import the exporters, which import this
  spec = families.get(family).tokenizer
  if spec is None:
    raise ValueError(f"model family {family!r} declares no tokenizer template")
  return spec


def _post_processor(family: str, ids: dict[str, int]) -> processors.TemplateProcessing:
  spec = _spec(family)
  return processors.TemplateProcessing(single=spec.single, pair=spec.pair,
                                       special_tokens=[(t, ids[t]) for t in spec.specials])


def build_fast_tokenizer(sp_model_path: str, num_sentinels: int,
                         family: str) -> Tokenizer:
  """A `tokenizers.Tokenizer` equivalent to the sp model, sentinels added on top.

  Args:
    sp_model_path: a SentencePiece unigram or BPE model following data_pipelines/vocab.py.
    num_sentinels: `<extra_id_*>` tokens appended above the sp pieces.
    family: a registered model family; its `TokenizerSpec` gives the special-token template.

  Returns:
    The tokenizer; `get_vocab_size()` is the sp piece count + num_sentinels.
  """
  _spec(family)  # an unregistered family is refused before any work
  if num_sentinels < 0:
    raise ValueError(f"num_sentinels must be >= 0, got {num_sentinels}")
  proto = _load_proto(sp_model_path)
  _check_special_pieces(proto)
  trainer = proto.trainer_spec
  byte_fallback = trainer.byte_fallback
  if trainer.model_type == _UNIGRAM:
    model = Unigram(_unigram_vocab(proto), unk_id=trainer.unk_id, byte_fallback=byte_fallback)
  elif trainer.model_type == _BPE:
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    model = BPE(vocab, _bpe_merges(proto), unk_token=trainer.unk_piece, fuse_unk=True,
                byte_fallback=byte_fallback, dropout=None)
  else:
    raise ValueError(f"unsupported sentencepiece model_type {trainer.model_type} "
                     "(only unigram and bpe)")
  tok = Tokenizer(model)
  tok.normalizer = _normalizer(proto)
  # Text is already ▁-escaped by the normalizer; this only cuts words at each ▁ as sp does
  # with split_by_whitespace (pieces never span a word boundary).
  tok.pre_tokenizer = pre_tokenizers.Metaspace(
      replacement=_SPACE, prepend_scheme="never", split=trainer.split_by_whitespace)
  tok.decoder = _decoder(proto)

  # Control pieces are specials in HF (never split, skipped by decode(skip_special_tokens));
  # user-defined pieces are matched verbatim, as sp does, but are ordinary text.
  special = [AddedToken(p.piece, special=True, normalized=False)
             for p in proto.pieces if p.type in (_CONTROL, _UNKNOWN)]
  user = [AddedToken(p.piece, special=False, normalized=False)
          for p in proto.pieces if p.type == _USER_DEFINED]
  tok.add_special_tokens(special)
  if user:
    tok.add_tokens(user)
  # Paradigm tokens at sp_size .., then the sentinels: <extra_id_{n-1}> .. <extra_id_0>.
  modes = paradigm_tokens(sp_model_path)
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in modes])
  for k, t in enumerate(modes):
    if tok.token_to_id(t) != len(proto.pieces) + k:
      raise AssertionError(f"{t} got id {tok.token_to_id(t)}")
  sp_size = len(proto.pieces) + len(modes)
  tok.add_special_tokens([AddedToken(sentinel_token(num_sentinels - 1 - k), special=True,
                                     normalized=False) for k in range(num_sentinels)])
  for i in range(num_sentinels):
    got = tok.token_to_id(sentinel_token(i))
    if got != sp_size + num_sentinels - 1 - i:  # defensive: ids are our on-disk contract
      raise AssertionError(f"{sentinel_token(i)} got id {got}")
  ids = {p: vocab_lib.SPECIAL_PIECES.index(p) for p in vocab_lib.SPECIAL_PIECES}
  tok.post_processor = _post_processor(family, ids)
  return tok


def _tokenizer_config(family: str, num_sentinels: int, model_max_length: int,
                      modes: tuple[str, ...] = ()) -> dict:
  spec = _spec(family)
  specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
              "bos_token": "<s>", "mask_token": "<mask>", **spec.roles}
  sentinels = [sentinel_token(i) for i in range(num_sentinels)] + list(modes)
  return dict(specials, tokenizer_class="PreTrainedTokenizerFast",
              model_max_length=model_max_length, clean_up_tokenization_spaces=False,
              # Both spellings: transformers 5 reads extra_special_tokens, 4.x the other.
              extra_special_tokens=sentinels, additional_special_tokens=sentinels,
              padding_side=spec.padding_side, truncation_side="right",
              model_input_names=(["input_ids", "token_type_ids", "attention_mask"]
                                 if spec.token_type_ids else ["input_ids", "attention_mask"]))


def export_sentencepiece_tokenizer(sp_model_path: str, num_sentinels: int, out_dir: str,
                                   family: str, model_max_length: int = 512) -> None:
  """Writes tokenizer.json, tokenizer_config.json, special_tokens_map.json, spiece.model.

  Args:
    sp_model_path: the trained SentencePiece model.
    num_sentinels: sentinels appended above the sp pieces (`<extra_id_0>` = last id).
    out_dir: existing directory to write into (files of the same name are replaced).
    family: a registered model family; its `TokenizerSpec` picks the special-token template.
    model_max_length: recorded in tokenizer_config.json (the model's max positions).
  """
  tok = build_fast_tokenizer(sp_model_path, num_sentinels, family)
  # Cross-check on a probe string before writing anything a user could trust.
  sp = spm.SentencePieceProcessor(model_file=sp_model_path)
  probe = "Hello, world! 123  한국어\tabc"
  if tok.encode(probe, add_special_tokens=False).ids != sp.encode(probe):
    raise AssertionError("exported tokenizer disagrees with sentencepiece on a probe string")
  tok.save(os.path.join(out_dir, "tokenizer.json"))
  config = _tokenizer_config(family, num_sentinels, model_max_length,
                             paradigm_tokens(sp_model_path))
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, ensure_ascii=False)
  special_map = {k: v for k, v in config.items() if k.endswith("_token")}
  special_map["additional_special_tokens"] = config["additional_special_tokens"]
  with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
    json.dump(special_map, f, indent=2, ensure_ascii=False)
  # The raw model, for users (and T5Tokenizer-style slow loaders) that want sentencepiece.
  shutil.copyfile(sp_model_path, os.path.join(out_dir, "spiece.model"))


def copy_hf_tokenizer(folder: str, out_dir: str, vocab_size: int) -> list[str]:
  """Copies a checkpoint's own HuggingFace tokenizer files (`tokenizer.json`, `vocab.txt`,
  their configs; see `data_pipelines.hf_tokenizer.HF_TOKENIZER_FILES`) into `out_dir` as they
  are, so `AutoTokenizer.from_pretrained(out_dir)` encodes as the training data did.

  Raises:
    ValueError: the folder is not a HF tokenizer, or it has more ids than vocab_size.
  """
  from data_pipelines.errors import DataError  # pylint: disable=g-import-not-at-top
  from data_pipelines.hf_tokenizer import HFTokenizer  # pylint: disable=g-import-not-at-top

  try:
    tok = HFTokenizer(folder)
  except DataError as e:
    raise ValueError(str(e)) from None
  if tok.vocab_size > vocab_size:
    raise ValueError(f"tokenizer {folder} has {tok.vocab_size} ids, more than "
                     f"config.vocab_size {vocab_size}")
  for name in tok.files:
    shutil.copyfile(os.path.join(folder, name), os.path.join(out_dir, name))
  return list(tok.files)
