"""ALBERT's module and tensor map: MLM and SOP logits equal transformers'
AlbertForPreTraining on random weights copied across; one shared layer, so the parameter
count does not depend on the depth."""

from __future__ import annotations

import dataclasses
import functools
import json

import flax.core.meta
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
import torch
import transformers

from t5x_like.families.albert import export as albert_export
from t5x_like.families.albert.model import AlbertConfig, AlbertForPreTraining

TINY = AlbertConfig(vocab_size=96, hidden_size=32, num_layers=3, num_heads=4,
                    intermediate_size=64, embedding_size=16, max_position_embeddings=32)


def _shapes(config: AlbertConfig) -> dict:
  return flax.core.meta.unbox(jax.eval_shape(AlbertForPreTraining(config).init,
                                             jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))


def _random_params(config: AlbertConfig, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    noise = rng.normal(size=x.shape).astype(np.float32)
    return (1.0 + 0.3 * noise) if name.endswith("['scale']") else 0.1 * noise

  return jax.tree_util.tree_map_with_path(draw, _shapes(config)["params"])


def test_parameter_count_is_the_same_for_2_and_12_layers():
  count = lambda n: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
      _shapes(dataclasses.replace(TINY, num_layers=n))))
  assert count(2) == count(12)


def test_mlm_and_sop_logits_equal_transformers(tmp_path):
  params = _random_params(TINY)
  state = albert_export.albert_to_hf_state_dict(params, TINY)
  safetensors.numpy.save_file(state, str(tmp_path / "model.safetensors"),
                              metadata={"format": "pt"})
  (tmp_path / "config.json").write_text(json.dumps(albert_export.hf_config_dict(TINY)))
  hf, info = transformers.AlbertForPreTraining.from_pretrained(str(tmp_path),
                                                               output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  rng = np.random.default_rng(0)
  ids = rng.integers(6, 96, (3, 16)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 10:] = 0
  types = np.zeros_like(ids)
  types[:, 8:] = 1
  apply = jax.jit(functools.partial(AlbertForPreTraining(TINY).apply, sop=True))
  mlm, sop = apply({"params": params}, ids, mask, types)
  with torch.no_grad():
    out = hf.eval()(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    token_type_ids=torch.tensor(types, dtype=torch.long))
  real = mask > 0
  np.testing.assert_allclose(np.asarray(mlm)[real], out.prediction_logits.numpy()[real],
                             atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(sop), out.sop_logits.numpy(), atol=1e-4, rtol=1e-4)
