"""ELECTRA's training task (t5x_like/objectives/replaced_token_detection.py): the
discriminator's labels, Gumbel-max sampling, the gradient paths and the loss formula."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.vocab import IGNORE_INDEX, MASK_ID
from t5x_like import config as config_lib
from t5x_like.objectives import replaced_token_detection as rtd
from t5x_like.training import tasks

SMALL = ["model.vocab_size=96", "model.hidden_size=32", "model.num_heads=2",
         "model.intermediate_size=64", "model.embedding_size=16",
         "model.generator_hidden_size=16", "model.generator_intermediate_size=32",
         "model.max_position_embeddings=16", "data.seq_len=16", "objective.max_predictions=4"]
SAMPLED = 42  # the token the rigged generator always samples


@pytest.fixture(scope="module")
def task():
  return tasks.make_task(config_lib.load_config("electra_tiny", SMALL))


@pytest.fixture(scope="module")
def params(task):
  return jax.jit(lambda k: jax.tree_util.tree_map(
      lambda x: x.unbox() if hasattr(x, "unbox") else x, task.init(k)["params"],
      is_leaf=lambda x: hasattr(x, "unbox")))(jax.random.key(0))


def _batch() -> dict[str, np.ndarray]:
  """Two rows; selected positions 2, 5, 9 (row 0) and 3, 4 (row 1); row 1 is padded."""
  ids = (np.arange(32).reshape(2, 16) % 50 + 10).astype(np.int32)
  ids[0, 5] = SAMPLED  # a selected position whose original is the token that will be drawn
  mask = np.ones((2, 16), np.int32)
  mask[1, 12:] = 0
  ids[1, 12:] = 0
  labels = np.full((2, 16), IGNORE_INDEX, np.int32)
  for row, cols in ((0, (2, 5, 9)), (1, (3, 4))):
    labels[row, list(cols)] = ids[row, list(cols)]
    ids[row, list(cols)[:-1]] = MASK_ID  # the last one stays unchanged (the 15%)
  return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
          "labels": labels}


def _rigged(params):
  """The generator's bias makes SAMPLED overwhelmingly likely: every draw is SAMPLED."""
  bias = np.zeros(96, np.float32)
  bias[SAMPLED] = 1e4
  return {**params, "generator_head": {**params["generator_head"], "bias": jnp.asarray(bias)}}


def test_discriminator_labels_only_at_selected_positions(task, params):
  batch = _batch()
  g = jax.jit(functools.partial(task.replace, deterministic=True))(
      _rigged(params), batch, jax.random.key(1))
  selected = batch["labels"] != IGNORE_INDEX
  fake, replaced = np.asarray(g["fake_BL"]), np.asarray(g["replaced_BL"])
  np.testing.assert_array_equal(fake[selected], SAMPLED)
  np.testing.assert_array_equal(fake[~selected], batch["input_ids"][~selected])
  assert not replaced[~selected].any()  # outside the selection: always original (0)
  assert not replaced[0, 5]  # the generator drew the original token: labelled original
  np.testing.assert_array_equal(replaced[selected], batch["labels"][selected] != SAMPLED)
  assert replaced.sum() == selected.sum() - 1


def test_discriminator_loss_reaches_the_generator_only_through_the_embeddings(task, params):
  batch = _batch()

  def disc_loss(p):
    g = task.replace(p, batch, jax.random.key(1), deterministic=True)
    return task.discriminator_loss(p, batch, g, jax.random.key(2), deterministic=True)[0]

  grads = jax.jit(jax.grad(disc_loss))(params)
  for tower in ("generator", "generator_head"):
    leaves = jax.tree_util.tree_leaves(grads[tower])
    assert leaves and all(not np.any(np.asarray(x)) for x in leaves), tower
  for shared in ("word_embeddings", "position_embeddings", "layer_norm"):
    assert np.any(np.asarray(jax.tree_util.tree_leaves(grads["embeddings"][shared])[0]))
  assert all(np.any(np.asarray(x)) for x in
             jax.tree_util.tree_leaves(grads["discriminator_head"]))


def test_gumbel_max_draws_from_the_softmax_at_temperature_one():
  logits = jnp.array([0.0, 1.0, 2.0, -1.0, 0.5])
  n = 40000
  draws = jax.jit(lambda k: rtd.gumbel_sample(jnp.broadcast_to(logits, (n, 5)), k))(
      jax.random.key(3))
  freq = np.bincount(np.asarray(draws), minlength=5) / n
  p = np.asarray(jax.nn.softmax(logits))
  sd = np.sqrt(p * (1 - p) / n)
  assert np.all(np.abs(freq - p) < 4 * sd), (freq, p)


def test_loss_is_generator_mean_plus_50_discriminator_mean_over_real_tokens(task, params):
  batch = _batch()
  total, aux = jax.jit(functools.partial(task.loss, deterministic=True))(
      params, batch, jax.random.key(4))
  ratios = {k: (float(n), float(d)) for k, (n, d) in aux["ratios"].items()}
  count = float(aux["count"])
  assert count == 5
  assert ratios["discriminator_loss"][1] == batch["attention_mask"].sum()  # non-pad only
  gen = ratios["generator_loss"][0] / count
  disc = ratios["discriminator_loss"][0] / ratios["discriminator_loss"][1]
  assert math.isclose(float(total) / count, gen + 50.0 * disc, rel_tol=1e-5)
  # the padding's logits never enter: changing the ids under it changes nothing
  padded = {**batch, "input_ids": np.where(batch["attention_mask"] > 0, batch["input_ids"], 7)}
  total2, _ = jax.jit(functools.partial(task.loss, deterministic=True))(
      params, padded, jax.random.key(4))
  np.testing.assert_allclose(float(total2), float(total), rtol=1e-5)


def test_precision_recall_and_sampled_accuracy_count_what_they_say(task, params):
  """The reference's eval metrics, recomputed from the discriminator's logits: with the rigged
  generator every draw is SAMPLED, so 1 of the 5 draws is right and 4 tokens are replaced."""
  batch = _batch()
  p = _rigged(params)
  # a discriminator bias of +b flags every real token (b > 0) or none (b < 0)
  for bias, flagged in ((50.0, int(batch["attention_mask"].sum())), (-50.0, 0)):
    head = p["discriminator_head"]
    q = {**p, "discriminator_head": {**head, "dense_prediction": {
        **head["dense_prediction"],
        "bias": jnp.full_like(head["dense_prediction"]["bias"], bias)}}}
    _, aux = jax.jit(functools.partial(task.loss, deterministic=True))(q, batch,
                                                                       jax.random.key(4))
    r = {k: (int(n), int(d)) for k, (n, d) in aux["ratios"].items()}
    assert r["sampled_accuracy"] == (1, 5)
    assert r["discriminator_recall"] == ((4, 4) if flagged else (0, 4))
    assert r["discriminator_precision"] == ((4, flagged) if flagged else (0, 0))
    assert r["replaced_fraction"] == (4, int(batch["attention_mask"].sum()))
