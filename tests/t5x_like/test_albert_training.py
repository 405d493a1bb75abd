"""ALBERT's MLM + SOP step: the same losses and parameters on a data x fsdp x tensor mesh of 8
devices as on one, with the shared layer's weights really sharded; the loss is MLM + weighted
SOP; the SOP head learns a planted label."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from data_pipelines.objectives import sentence_order as sop
from data_pipelines.vocab import VocabInfo
from t5x_like import config as config_lib
from t5x_like.objectives import sentence_order as sop_objective
from tests.t5x_like.test_sharding import _train, assert_params_close

SMALL = ("model.hidden_size=32", "model.num_heads=4", "model.intermediate_size=64",
         "model.embedding_size=16", "model.vocab_size=512", "model.max_position_embeddings=32",
         "data.seq_len=32", "train.batch_size=8", "optim.warmup_steps=1", "train.steps=8")


def _config(*extra: str) -> config_lib.Config:
  return config_lib.load_config("albert_tiny", [*SMALL, *extra])


def _batches(config: config_lib.Config, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """n global batches of the real objective on random blocks with sentence ends."""
  vocab = VocabInfo.synthetic(config.model.vocab_size, sentence_end_every=8)
  params = sop_objective.params(config)
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    rows = [sop.make_example(rng.integers(6, config.model.vocab_size, config.data.seq_len - 3),
                             rng, params, vocab) for _ in range(config.train.batch_size)]
    out.append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  return out


def test_sharded_2x2x2_equals_one_device():
  one = _config("mesh.data=1")
  eight = _config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
  batches = _batches(one, 3)
  state_1, losses_1, _, _ = _train(one, batches, 3)
  state_8, losses_8, _, mesh = _train(eight, batches, 3)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  layer = state_8.params["shared_layer"]
  assert layer["intermediate"]["kernel"].sharding.spec == P("fsdp", "tensor")
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  assert_params_close(state_1.params, state_8.params, atol=1e-5)


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_the_total_loss_is_mlm_plus_weighted_sop(weight):
  config = _config("mesh.data=1", f"objective.sop_weight={weight}")
  _, losses, _, _ = _train(config, _batches(config, 1), 1)
  assert np.isfinite(losses[0])
  # MLM over V=512 starts near ln 512; SOP adds ~ln 2 with weight 1
  assert abs(losses[0] - np.log(512) - weight * np.log(2)) < 0.5


def test_the_sop_head_learns_a_planted_order_cue():
  """The label is written in the first token (the one the pooler reads): the SOP loss falls
  far below ln 2, so the task's SOP gradient reaches the head and its labels line up.
  (A cue elsewhere in the row needs attention to find it first: on this tiny model that
  takes ~100 steps or more, one reason SOP stays at chance in short runs.)"""
  config = _config("mesh.data=1")
  task = sop_objective.SentenceOrderTask(config)
  params = task.init(jax.random.key(0))["params"]
  tx = optax.adam(1e-3)
  opt = tx.init(params)
  rng = np.random.default_rng(0)

  @jax.jit
  def step(params, opt, batch):
    (_, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(params, batch, None, True)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, aux["ratios"]["sop_loss"][0]

  losses = []
  for _ in range(60):
    label = rng.integers(0, 2, 16).astype(np.int32)
    ids = rng.integers(10, 512, (16, 32)).astype(np.int32)
    ids[:, 0] = np.where(label == 1, 50, 60)
    mlm_labels = np.full_like(ids, -100)
    mlm_labels[:, 7] = ids[:, 7]
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "token_type_ids": np.zeros_like(ids), "labels": mlm_labels,
             sop_objective.LABEL: label}
    params, opt, sop_sum = step(params, opt, batch)
    losses.append(float(sop_sum) / 16)
  assert np.mean(losses[:10]) > 0.6 and np.mean(losses[-10:]) < 0.1, losses[::10]
