"""Document embeddings for the In-Context Pretraining order from a checkpoint of ours
(data.icp_embedding=<run directory or checkpoint>): mean-pooled final hidden states.

"Final hidden states" are the last `[batch, length, hidden_size]` output the model computes
before its vocabulary head (Flax `capture_intermediates`): the final norm of a decoder, the
MLM head's transform of an encoder. Encoder-decoder families need decoder inputs for their
logits and are refused. Documents are cut to the checkpoint's `data.seq_len` tokens.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.config import ConfigError

_BATCH = 32


def checkpoint_embedder(path: str, tokenizer
                        ) -> tuple[str, Callable[[Sequence[np.ndarray]], np.ndarray]]:
  """(fingerprint name, documents -> float32[N, hidden]) for the checkpoint at `path`.

  Raises:
    ConfigError: no run directory or checkpoint at `path`, another tokenizer, or an
      encoder-decoder family.
  """
  from t5x_like import pretrained

  where = os.path.abspath(path)
  try:
    run = pretrained.run_config(where)
  except ConfigError:
    raise ConfigError(f"data.icp_embedding: {path} is not a run directory or checkpoint of "
                      f"ours (no config.yaml there); expected 'tfidf' or one made by "
                      f"`pretrain train` / `pretrain import`") from None
  if run.model.vocab_size != tokenizer.vocab_size:
    raise ConfigError(f"data.icp_embedding: {path} has a vocabulary of {run.model.vocab_size} "
                      f"ids, data.tokenizer {tokenizer.model_path} {tokenizer.vocab_size}; "
                      f"the checkpoint must read the run's token ids")
  state: dict = {}

  def embed(docs: Sequence[np.ndarray]) -> np.ndarray:
    if "model" not in state:
      state["model"] = pretrained.load_pretrained(where)
    model = state["model"]
    if "decoder_input_ids" in model.family.required:
      raise ConfigError(f"data.icp_embedding: {path} is a {run.model.family} "
                        f"(encoder-decoder) checkpoint; name an encoder or decoder-only one")
    length = model.config.data.seq_len
    hidden = model.config.model.hidden_size
    apply = jax.jit(lambda p, ids, mask: _pooled(model, p, ids, mask, hidden))
    out = []
    for start in range(0, len(docs), _BATCH):
      chunk = [np.asarray(d[:length], np.int32) for d in docs[start:start + _BATCH]]
      ids = np.zeros((_BATCH, length), np.int32)
      mask = np.zeros((_BATCH, length), np.int32)
      for i, d in enumerate(chunk):
        ids[i, :len(d)], mask[i, :len(d)] = d, 1
      out.append(np.asarray(apply(model.params, ids, mask))[:len(chunk)])
    return np.concatenate(out).astype(np.float32)

  return f"checkpoint:{where}", embed


class _Capture:
  """Stands in for the family's module in its `logits` call, keeping every module's output."""

  def __init__(self, module):
    self.module, self.intermediates = module, {}

  def apply(self, variables, *args, **kwargs):
    out, state = self.module.apply(variables, *args, capture_intermediates=True,
                                   mutable=["intermediates"], **kwargs)
    self.intermediates = state["intermediates"]
    return out


def _last_hidden(tree, hidden: int):
  """The last [B, L, hidden] output in call order (dicts keep insertion order; jax's tree
  functions would sort the keys)."""
  found = None
  for value in tree.values():
    if isinstance(value, dict) or hasattr(value, "values") and not hasattr(value, "shape"):
      inner = _last_hidden(value, hidden)
      found = inner if inner is not None else found
    elif isinstance(value, tuple):
      for leaf in value:
        if getattr(leaf, "ndim", 0) == 3 and leaf.shape[-1] == hidden:
          found = leaf
  return found


def _pooled(model, params, ids_BL, mask_BL, hidden: int):
  """float32[B, hidden]: the final hidden states averaged over each row's tokens."""
  names = model.family.logits_features
  batch = {"input_ids": ids_BL}
  if "attention_mask" in names:
    batch["attention_mask"] = mask_BL
  if "segment_ids" in names:  # one segment per row; 0 marks padding
    batch["segment_ids"] = mask_BL
    batch["positions"] = jnp.broadcast_to(jnp.arange(ids_BL.shape[1]), ids_BL.shape)
  capture = _Capture(model.model)
  model.family.logits(capture, params, batch)
  h_BLD = _last_hidden(capture.intermediates, hidden).astype(jnp.float32)
  m_BL1 = mask_BL[..., None].astype(jnp.float32)
  return (h_BLD * m_BL1).sum(1) / jnp.maximum(m_BL1.sum(1), 1.0)
