"""ALBERT's module and tensor map: MLM and SOP logits equal transformers'
AlbertForPreTraining on random weights copied across; one shared layer, so the parameter
count does not depend on the depth."""

from __future__ import annotations

import dataclasses
import functools
import json
import types

import flax.core.meta
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from t5x_like import hf_import
from t5x_like.families.albert import export as albert_export
from t5x_like.families.albert import flops as albert_flops
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


def test_flops_count_matches_xla():
  """The analytic forward count (shared layer x depth, E -> H mapping, gather-first MLM head,
  SOP head) within 10% of XLA's on a matmul-heavy shape."""
  config = dataclasses.replace(TINY, vocab_size=512, hidden_size=256, num_heads=4,
                               intermediate_size=1024, embedding_size=64, num_layers=3,
                               max_position_embeddings=128)
  batch, length, predicted = 2, 128, 20
  objective = types.SimpleNamespace(predictions_per_row=lambda run: predicted)
  run = types.SimpleNamespace(model=config, train=types.SimpleNamespace(batch_size=batch),
                              data=types.SimpleNamespace(seq_len=length), objective=objective)
  model = AlbertForPreTraining(config)
  ids = jnp.zeros((batch, length), jnp.int32)
  positions = jnp.zeros((batch, predicted), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), ids)["params"]
  cost = jax.jit(lambda p, x, m: model.apply({"params": p}, x, masked_positions=m, sop=True)
                 ).lower(flax.core.meta.unbox(params), ids, positions).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  assert albert_flops.train_flops_per_step(run) / 3 == pytest.approx(cost["flops"], rel=0.10)


@pytest.mark.parametrize("architecture", ["AlbertForPreTraining", "AlbertForMaskedLM"])
def test_import_from_transformers_gives_the_same_logits(tmp_path, architecture):
  hf_config = transformers.AlbertConfig(
      vocab_size=96, embedding_size=16, hidden_size=32, num_hidden_layers=3,
      num_attention_heads=4, intermediate_size=64, max_position_embeddings=32)
  torch.manual_seed(0)
  hf = getattr(transformers, architecture)(hf_config).eval()
  hf.save_pretrained(str(tmp_path))
  imported = hf_import.import_hf(str(tmp_path))
  assert imported.family == "albert"
  params = hf_import.full_params(imported)
  ids = np.random.default_rng(0).integers(6, 96, (2, 12)).astype(np.int32)
  ours = AlbertForPreTraining(imported.model_config).apply({"params": params}, ids)
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(ids, dtype=torch.long))
  logits = getattr(theirs, "prediction_logits", None)
  logits = theirs.logits if logits is None else logits
  np.testing.assert_allclose(np.asarray(ours), logits.numpy(), atol=1e-4, rtol=1e-4)
  if architecture == "AlbertForMaskedLM":
    assert any("sop_classifier" in p for p in imported.new_params)
