"""The facts about a vocabulary that objectives need, independent of the tokenizer library.

Objectives take a `VocabInfo` rather than a tokenizer so they stay pure NumPy functions that
tests can drive with a synthetic vocabulary.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

# Fixed special ids shared by every tokenizer this project trains (T5 puts pad/eos/unk at
# 0/1/2; the others follow). Sentinels for span corruption sit at the top of the vocabulary.
PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
BOS_ID = 3  # also the [CLS] of the encoder families
SEP_ID = 4
MASK_ID = 5
# The label value every loss skips (HF's convention): objectives write it, packing pads
# labels with it, the tasks mask it out.
IGNORE_INDEX = -100
SPECIAL_PIECES = ("<pad>", "</s>", "<unk>", "<s>", "<sep>", "<mask>")
# The one-character pieces XLNet's `_is_start_piece` (zihangdai/xlnet data_utils.py) counts as
# word starts: ASCII punctuation less `'`, `=` and `>` (its literal spells `"` twice where `'`
# would be; `<` is covered by its `<` prefix rule).
XLNET_START_PUNCTUATION = frozenset('!"#$%&()*+,-./:;?@[\\]^_`{|}~')
# Pieces whose last character is a full stop end a sentence (`VocabInfo.sentence_end`); one
# pattern, so that the SentencePiece and the HF tokenizers agree.
SENTENCE_END_RE = re.compile(r"[.!?。？！]$")


def xlnet_start_pieces(pieces: Sequence[str], is_byte: np.ndarray) -> np.ndarray:
  """bool[len(pieces)]: XLNet's `_is_start_piece` over a vocabulary's piece strings.

  A piece starts a word if it begins with `▁` (`▁` alone included), begins with `<`, or is one
  character of XLNET_START_PUNCTUATION. Byte-fallback pieces `<0x..>` (is_byte, bool[len]) are
  left out: XLNet's vocabulary has none, and read literally the `<` rule would make every byte
  of a multi-byte character a word of its own. The tokenizers OR this with their `word_start`,
  which carries the specials and the word marker of non-`▁` vocabularies (`Ġ`, `##`).
  """
  starts = np.array([p.startswith(("\u2581", "<")) or p in XLNET_START_PUNCTUATION
                     for p in pieces], bool)
  return starts & ~np.asarray(is_byte, bool)


@dataclasses.dataclass(frozen=True)
class VocabInfo:
  """Vocabulary facts for objectives.

  Attributes:
    vocab_size: total number of ids, sentinels included.
    is_special: bool[vocab_size]; True for pad/eos/unk/bos/sep/mask and every sentinel.
      Objectives never select these and never sample them as random replacements.
    word_start: bool[vocab_size]; True for pieces that begin a word (SentencePiece `▁`
      prefix). Specials count as word starts; a piece following a special also starts a
      word, which objectives derive positionally.
    sentinel_ids: int32[num_sentinels], `<extra_id_0>` first, i.e. vocab_size-1, -2, ...
    sentence_end: bool[vocab_size] or None; True for pieces that end a sentence (`.`, `?`,
      ...; never a special). BART's sentence permutation splits at these and at EOS; None
      means the vocabulary marks none, so only EOS ends a sentence.
    paradigm_ids: (name, id) pairs of the UL2 paradigm tokens the tokenizer reserves
      (`[NLU]`, `[NLG]`, `[S2S]`: single special ids, like the sentinels never produced by
      text); empty when it reserves none.
    start_piece: bool[vocab_size] or None; XLNet's word starts (`xlnet_start_pieces`, plus the
      specials): `word_start` and also bare punctuation pieces (`,`, `.`) and pieces beginning
      with `<`. Only the permutation-LM objective reads it (BERT whole-word masking and BART
      keep `word_start`); None means `word_start`.
  """

  vocab_size: int
  is_special: np.ndarray
  word_start: np.ndarray
  sentinel_ids: np.ndarray
  pad_id: int = PAD_ID
  eos_id: int = EOS_ID
  unk_id: int = UNK_ID
  bos_id: int = BOS_ID
  sep_id: int = SEP_ID
  mask_id: int = MASK_ID
  sentence_end: np.ndarray | None = None
  start_piece: np.ndarray | None = None
  paradigm_ids: tuple[tuple[str, int], ...] = ()

  @property
  def cls_id(self) -> int:
    return self.bos_id

  @property
  def normal_ids(self) -> np.ndarray:
    """int32 ids that are not special: the pool random replacements are drawn from."""
    return np.flatnonzero(~self.is_special).astype(np.int32)

  @classmethod
  def synthetic(cls, vocab_size: int, num_sentinels: int = 0,
                word_start_every: int = 3, seed: int = 0,
                sentence_end_every: int = 0) -> VocabInfo:
    """A made-up vocabulary for tests: fixed specials, sentinels on top, random word starts.

    With `sentence_end_every` = n > 0, about 1/n of the non-special ids end a sentence (drawn
    after the word starts, so those do not depend on n); with 0, `sentence_end` is None.
    """
    rng = np.random.default_rng(seed)
    is_special = np.zeros(vocab_size, bool)
    is_special[: len(SPECIAL_PIECES)] = True
    sentinel_ids = np.arange(vocab_size - 1, vocab_size - 1 - num_sentinels, -1, dtype=np.int32)
    is_special[sentinel_ids] = True
    word_start = rng.random(vocab_size) < 1.0 / word_start_every
    word_start[is_special] = True
    sentence_end = None
    if sentence_end_every > 0:
      sentence_end = rng.random(vocab_size) < 1.0 / sentence_end_every
      sentence_end[is_special] = False
    return cls(vocab_size=vocab_size, is_special=is_special, word_start=word_start,
               sentinel_ids=sentinel_ids, sentence_end=sentence_end)
