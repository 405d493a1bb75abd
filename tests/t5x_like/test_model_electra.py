"""ELECTRA's module and export: both towers equal transformers' ElectraForPreTraining /
ElectraForMaskedLM on random weights copied across, through the exported folders."""

from __future__ import annotations

import functools
import json
import os

import flax.core.meta
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from t5x_like.families.electra import export as electra_export
from t5x_like.families.electra.model import ElectraConfig, ElectraForPretraining

TINY = ElectraConfig(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4,
                     intermediate_size=64, embedding_size=16, generator_hidden_size=8,
                     generator_num_heads=2, generator_intermediate_size=16,
                     max_position_embeddings=32, dropout_rate=0.0, attention_dropout_rate=0.0)


def random_params(config: ElectraConfig, seed: int = 0) -> dict:
  """Every tensor random (LayerNorm scales around 1), in our layout; shapes by eval_shape."""
  shapes = jax.eval_shape(functools.partial(ElectraForPretraining(config).init, tower="both"),
                          jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  shapes = flax.core.meta.unbox(shapes)["params"]
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    noise = rng.normal(size=x.shape).astype(np.float32)
    scale = 0.2 if name.endswith("['bias']") else 0.08
    return (1.0 + 0.3 * noise) if name.endswith("['scale']") else scale * noise

  return jax.tree_util.tree_map_with_path(draw, shapes)


def inputs(config: ElectraConfig, batch: int = 3, length: int = 16, seed: int = 0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(6, config.vocab_size, (batch, length)).astype(np.int32)
  mask = np.ones((batch, length), np.int32)
  mask[1, 11:] = 0
  mask[2, 5:] = 0
  ids[mask == 0] = 0
  types = np.zeros((batch, length), np.int32)
  types[:, length // 2:] = 1
  return ids, mask, types


@functools.cache
def _apply(config: ElectraConfig, tower: str):
  return jax.jit(functools.partial(ElectraForPretraining(config).apply, tower=tower))


def _torch(folder: str, cls, ids, mask, types) -> np.ndarray:
  model = cls.from_pretrained(folder).eval()
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                token_type_ids=torch.tensor(types, dtype=torch.long))
  return out.logits.numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  params = random_params(TINY)
  out = str(tmp_path_factory.mktemp("electra") / "export")
  electra_export.export_electra(params, TINY, out)
  return params, out


def test_both_towers_equal_transformers(exported):
  params, out = exported
  ids, mask, types = inputs(TINY)
  valid = mask.astype(bool)
  disc = np.asarray(_apply(TINY, "discriminator")({"params": params}, ids, mask, types))
  theirs = _torch(out, transformers.ElectraForPreTraining, ids, mask, types)
  assert disc.shape == ids.shape
  np.testing.assert_allclose(disc[valid], theirs[valid], atol=1e-4, rtol=1e-4)
  gen = np.asarray(_apply(TINY, "generator")({"params": params}, ids, mask, types))
  theirs = _torch(os.path.join(out, electra_export.GENERATOR_FOLDER),
                  transformers.ElectraForMaskedLM, ids, mask, types)
  assert gen.shape == ids.shape + (TINY.vocab_size,)
  np.testing.assert_allclose(gen[valid], theirs[valid], atol=1e-4, rtol=1e-4)


def test_exported_folders_are_what_save_pretrained_writes(exported):
  _, out = exported
  for folder, arch in ((out, "ElectraForPreTraining"),
                       (os.path.join(out, "generator"), "ElectraForMaskedLM")):
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
      assert json.load(f)["architectures"] == [arch]
    _, info = getattr(transformers, arch).from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
  # the generator shares the embeddings: the same tables in both folders
  disc = transformers.ElectraForPreTraining.from_pretrained(out)
  gen = transformers.ElectraForMaskedLM.from_pretrained(os.path.join(out, "generator"))
  torch.testing.assert_close(disc.electra.embeddings.word_embeddings.weight,
                             gen.electra.embeddings.word_embeddings.weight)
  assert gen.config.hidden_size == TINY.generator_hidden_size


def test_gathered_generator_logits_equal_the_full_ones():
  params = random_params(TINY, seed=1)
  ids, mask, types = inputs(TINY)
  full = _apply(TINY, "generator")({"params": params}, ids, mask, types)
  where = np.array([[1, 3], [0, 7], [4, 2]], np.int32)
  picked = _apply(TINY, "generator")({"params": params}, ids, mask, types,
                                      masked_positions=where)
  np.testing.assert_allclose(np.asarray(picked), np.take_along_axis(
      np.asarray(full), where[:, :, None], axis=1), atol=1e-5)


def test_padding_is_invisible_and_scan_equals_loop():
  params = random_params(TINY, seed=2)
  ids, mask, types = inputs(TINY)
  disc = _apply(TINY, "discriminator")
  base = np.asarray(disc({"params": params}, ids, mask, types))
  ids2 = ids.copy()
  ids2[mask == 0] = 7  # other tokens under the padding
  np.testing.assert_allclose(np.asarray(disc({"params": params}, ids2, mask, types))[mask > 0],
                             base[mask > 0], atol=1e-5)
  scanned_cfg = ElectraConfig(**{**TINY.__dict__, "scan_layers": True})
  stack = lambda enc: {"layers": jax.tree_util.tree_map(
      lambda *x: np.stack(x), *[enc[f"layer_{i}"] for i in range(2)])}
  scanned = {**params}
  for tower in ("generator", "discriminator"):
    scanned[tower] = {**params[tower], "encoder": stack(params[tower]["encoder"])}
  got = _apply(scanned_cfg, "discriminator")({"params": scanned}, ids, mask, types)
  np.testing.assert_allclose(np.asarray(got), base, atol=1e-5)


def test_every_parameter_has_logical_axes():
  boxed = jax.eval_shape(functools.partial(ElectraForPretraining(TINY).init, tower="both"),
                         jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, flax.core.meta.Partitioned))
  assert leaves and all(isinstance(x, flax.core.meta.Partitioned) for x in leaves)
