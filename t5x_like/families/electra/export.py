"""Export ELECTRA as two HuggingFace folders: the discriminator as
`transformers.ElectraForPreTraining` (OUT) and the generator as
`transformers.ElectraForMaskedLM` (OUT/generator), each with the shared embeddings copied in.

Each state dict has exactly the keys `save_pretrained` writes: the generator's tied
`generator_lm_head.weight` is left out (re-tied on load to the word embeddings).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipelines import vocab as vocab_lib
from t5x_like.export.common import _unbox, check_target, layer_trees, put_checked, write_export
from t5x_like.families.electra.model import ElectraConfig

FAMILY = "electra"
GENERATOR_FOLDER = "generator"
# Our activation names are HF's ACT2FN keys with the same meaning ("gelu" is the erf form).
HF_ACTIVATIONS = ("gelu", "gelu_new", "relu")


def _put_dense(out: dict[str, np.ndarray], hf: str, tree: Mapping[str, Any], path: str,
               shape: tuple[int, ...]) -> None:
  """A Dense as `hf.weight` [out, in] and `hf.bias`; `shape` is our kernel's [*in, *out]
  (two input axes for the attention output [heads, kv, D], one elsewhere)."""
  n_in = 2 if path.endswith("attention_output") else 1
  put_checked(out, f"{hf}.weight", tree, f"{path}/kernel", shape,
              lambda k: k.reshape(int(np.prod(k.shape[:n_in])), -1).T)
  put_checked(out, f"{hf}.bias", tree, f"{path}/bias", shape[n_in:],
              lambda b: b.reshape(-1))


def _put_norm(out: dict[str, np.ndarray], hf: str, tree: Mapping[str, Any], path: str,
              width: int) -> None:
  put_checked(out, f"{hf}.weight", tree, f"{path}/scale", (width,))
  put_checked(out, f"{hf}.bias", tree, f"{path}/bias", (width,))


def _tower(out: dict[str, np.ndarray], p: Mapping[str, Any], c: ElectraConfig,
           name: str) -> None:
  """`electra.embeddings*` and `electra.encoder.*` of one tower (its width and layers)."""
  t = c.tower(name)
  d, f, e = t.hidden_size, t.intermediate_size, c.embedding_size
  h, k = t.num_heads, t.head_dim
  emb = {"embeddings": p["embeddings"]}
  put_checked(out, "electra.embeddings.word_embeddings.weight", emb,
              "embeddings/word_embeddings/embedding", (c.vocab_size, e))
  put_checked(out, "electra.embeddings.position_embeddings.weight", emb,
              "embeddings/position_embeddings/embedding", (c.max_position_embeddings, e))
  put_checked(out, "electra.embeddings.token_type_embeddings.weight", emb,
              "embeddings/token_type_embeddings/embedding", (c.type_vocab_size, e))
  _put_norm(out, "electra.embeddings.LayerNorm", emb, "embeddings/layer_norm", e)
  tower = p[name]
  if e != d:
    _put_dense(out, "electra.embeddings_project", tower, "embeddings_project", (e, d))
  for i, layer in enumerate(layer_trees(tower["encoder"], t.num_layers, f"{name} encoder")):
    pre = f"electra.encoder.layer.{i}."
    for proj in ("query", "key", "value"):
      _put_dense(out, f"{pre}attention.self.{proj}", layer, f"attention/{proj}", (d, h, k))
    _put_dense(out, f"{pre}attention.output.dense", layer, "attention_output", (h, k, d))
    _put_norm(out, f"{pre}attention.output.LayerNorm", layer, "attention_layer_norm", d)
    _put_dense(out, f"{pre}intermediate.dense", layer, "intermediate", (d, f))
    _put_dense(out, f"{pre}output.dense", layer, "output", (f, d))
    _put_norm(out, f"{pre}output.LayerNorm", layer, "output_layer_norm", d)


def discriminator_state_dict(params: Mapping[str, Any], config: ElectraConfig
                             ) -> dict[str, np.ndarray]:
  """Our params -> the `ElectraForPreTraining` state dict (float32, torch layouts)."""
  p = _unbox(params)
  out: dict[str, np.ndarray] = {}
  _tower(out, p, config, "discriminator")
  d = config.hidden_size
  _put_dense(out, "discriminator_predictions.dense", p, "discriminator_head/dense", (d, d))
  _put_dense(out, "discriminator_predictions.dense_prediction", p,
             "discriminator_head/dense_prediction", (d, 1))
  return out


def generator_state_dict(params: Mapping[str, Any], config: ElectraConfig
                         ) -> dict[str, np.ndarray]:
  """Our params -> the `ElectraForMaskedLM` state dict, without the tied lm-head weight."""
  p = _unbox(params)
  out: dict[str, np.ndarray] = {}
  _tower(out, p, config, "generator")
  e = config.embedding_size
  _put_dense(out, "generator_predictions.dense", p, "generator_head/dense",
             (config.generator_hidden_size, e))
  _put_norm(out, "generator_predictions.LayerNorm", p, "generator_head/layer_norm", e)
  put_checked(out, "generator_lm_head.bias", p, "generator_head/bias", (config.vocab_size,))
  return out


def hf_config_dict(config: ElectraConfig, tower: str = "discriminator",
                   pad_token_id: int = vocab_lib.PAD_ID) -> dict[str, Any]:
  """`config.json` of the discriminator (`ElectraForPreTraining`) or the generator
  (`ElectraForMaskedLM`)."""
  if config.hidden_act not in HF_ACTIVATIONS:
    raise ValueError(f"hidden_act {config.hidden_act!r} has no HF equivalent here")
  t = config.tower(tower)
  return {
      "architectures": ["ElectraForMaskedLM" if tower == "generator"
                        else "ElectraForPreTraining"],
      "model_type": "electra",
      "vocab_size": config.vocab_size,
      "embedding_size": config.embedding_size,
      "hidden_size": t.hidden_size,
      "num_hidden_layers": t.num_layers,
      "num_attention_heads": t.num_heads,
      "intermediate_size": t.intermediate_size,
      "hidden_act": config.hidden_act,
      "hidden_dropout_prob": config.dropout_rate,
      "attention_probs_dropout_prob": config.attention_dropout_rate,
      "max_position_embeddings": config.max_position_embeddings,
      "type_vocab_size": config.type_vocab_size,
      "initializer_range": config.initializer_range,
      "layer_norm_eps": config.layer_norm_eps,
      "summary_type": "first",
      "summary_use_proj": True,
      "summary_activation": "gelu",
      "summary_last_dropout": 0.1,
      "position_embedding_type": "absolute",
      "classifier_dropout": None,
      "pad_token_id": pad_token_id,
      "tie_word_embeddings": True,
      "dtype": "float32",
  }


def export_electra(params: Mapping[str, Any], config: ElectraConfig, out_dir: str,
                   tokenizer_model: str | None = None, num_sentinels: int = 0,
                   special_ids: Mapping[str, int] | None = None) -> str:
  """Writes the discriminator folder at `out_dir` and the generator's at
  `out_dir/generator`, each with the tokenizer files. Both state dicts are converted (and
  checked) before anything is written; each folder is written atomically, the generator's
  first, inside the discriminator's before that is moved into place."""
  out_dir = os.path.abspath(out_dir)
  check_target(out_dir)
  pad = {"pad_token_id": int(special_ids["pad_token_id"])} if (
      special_ids and special_ids.get("pad_token_id") is not None) else {}
  disc = discriminator_state_dict(params, config)
  gen = generator_state_dict(params, config)
  disc_cfg = hf_config_dict(config, "discriminator", **pad)
  gen_cfg = hf_config_dict(config, "generator", **pad)
  stage = out_dir.rstrip("/") + ".generator-tmp"
  write_export(stage, FAMILY, gen, gen_cfg, config.vocab_size, tokenizer_model, num_sentinels,
               model_max_length=config.max_position_embeddings)
  try:
    write_export(out_dir, FAMILY, disc, disc_cfg, config.vocab_size, tokenizer_model,
                 num_sentinels, model_max_length=config.max_position_embeddings)
    os.rename(stage, os.path.join(out_dir, GENERATOR_FOLDER))
  except BaseException:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(stage, ignore_errors=True)
    raise
  return out_dir
