"""XLNet permutation LM through the train step: 8-device sharding equals 1 device, gradient
accumulation equals one batch, the loss on the query stream, the FLOP model, config errors
and preset sizes."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import PartitionSpec as P

from data_pipelines.objectives import permutation_lm
from data_pipelines.vocab import VocabInfo
from pretrain import data as data_glue
from t5x_like import config as config_lib
from t5x_like import flops
from t5x_like.objectives import permutation_lm as permutation_objective
from t5x_like.training import step as step_lib
from t5x_like.training import tasks
from tests.t5x_like.test_sharding import _setup, _train, assert_params_close, weight_specs

TINY_XLNET = {
    "model": {"family": "xlnet", "vocab_size": 128, "hidden_size": 32, "num_layers": 2,
              "num_heads": 4, "intermediate_size": 48, "dropout_rate": 0.0},
    "objective": {"name": "permutation_lm"},
    "data": {"seq_len": 32},
    "optim": {"learning_rate": 1e-3, "warmup_steps": 2, "b2": 0.98},
    "train": {"batch_size": 8, "steps": 10, "seed": 0},
    "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
}


def xlnet_config(**sections: dict) -> config_lib.Config:
  tree = {k: dict(v) for k, v in TINY_XLNET.items()}
  for name, values in sections.items():
    tree.setdefault(name, {}).update(values)
  return data_glue.resolve_lengths(config_lib.from_dict(tree))


def xlnet_batches(config: config_lib.Config, n: int, seed: int = 0
                  ) -> list[dict[str, np.ndarray]]:
  vocab = VocabInfo.synthetic(config.model.vocab_size)
  params = permutation_objective.params(config)
  raw = data_glue.block_length(config)
  rng = np.random.default_rng(seed)
  batches = []
  size = config.train.batch_size
  for _ in range(n):  # bi_data: the second half of the batch is reversed text
    rows = [permutation_lm.make_example(rng.choice(vocab.normal_ids, raw).astype(np.int32),
                                        rng, params, vocab,
                                        reverse=config.model.bi_data and 2 * i >= size)
            for i in range(size)]
    batches.append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  return batches


def test_rows_have_the_features_the_task_takes():
  config = xlnet_config()
  assert data_glue.block_length(config) == 29
  batch = xlnet_batches(config, 1)[0]
  task = tasks.make_task(config)
  assert set(batch) == set(task.features)
  assert batch["perm_mask"].shape == (8, 32, 32)
  assert batch["target_mapping"].shape == (8, 5, 32)  # round(32 / 6)
  np.testing.assert_array_equal(
      batch["labels"], np.einsum("bpl,bl->bp", batch["target_mapping"],
                                 batch["input_ids"]).astype(np.int32))


@pytest.fixture(scope="module")
def runs():
  """bi_data on 8 devices with 2 micro-batches against 1 device: sharding,
  gradient accumulation (each micro-batch's halves are the global halves, forward and
  reversed, as the model's negated distances need) and bi_data in one comparison."""
  one = xlnet_config(model={"bi_data": True})
  eight = xlnet_config(model={"bi_data": True}, optim={"grad_accum_steps": 2},
                       mesh={"data": 2, "fsdp": 2, "tensor": 2})
  # One batch four times: on uniform random tokens the loss of four different batches need not
  # fall in four steps (it is ln(V) noise), the loss of a batch seen again must.
  batches = xlnet_batches(one, 1) * 4
  return _train(one, batches, 4), _train(eight, batches, 4)


def test_xlnet_sharded_loss_matches_one_device_and_falls(runs):
  (state_1, losses_1, _, _), (state, losses_8, batch, mesh) = runs
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  np.testing.assert_allclose(losses_8, losses_1, rtol=2e-5)
  assert_params_close(state_1.params, state.params, atol=5e-6)
  assert losses_1[-1] < losses_1[0]
  weight_specs(state.params)
  assert batch["perm_mask"].sharding.spec == P(("data", "fsdp"))


def stream_batches(config: config_lib.Config, n: int, seed: int = 0
                   ) -> list[dict[str, np.ndarray]]:
  """Memory layout in stream order: row j of step s+1 continues row j of step s by reuse_len
  tokens (the pipeline's streams, here over random text)."""
  vocab = VocabInfo.synthetic(config.model.vocab_size)
  params = permutation_objective.params(config)
  reuse, text = config.model.reuse_len, config.data.seq_len - 3
  rng = np.random.default_rng(seed)
  size = config.train.batch_size
  streams = rng.choice(vocab.normal_ids, (size, reuse * (n + 1))).astype(np.int32)
  return [{k: np.stack([r[k] for r in rows]) for k in rows[0]}
          for rows in ([permutation_lm.make_example(streams[j, s * reuse:s * reuse + text], rng,
                                                    params, vocab) for j in range(size)]
                       for s in range(n))]


MEMORY = {"mem_len": 24, "reuse_len": 16}


def test_memory_is_carried_sharded_accumulated_and_holds_the_reuse_part():
  """Memory in the train state: after each step layer 0's memory ends with the embeddings
  (dropout 0) of the first reuse_len tokens of each row, shifted in behind the previous ones
  (initial memory zeros); 8 devices with 2 micro-batches equal 1 device (losses, params and
  memory), so the memory's rows follow their batch rows."""
  one = xlnet_config(model=MEMORY)
  batches = stream_batches(one, 3)
  task, tx, schedule, mesh, _, state_sh, batch_sh = _setup(one)
  fn = step_lib.jit_train_step(step_lib.make_train_step(task, tx, schedule, one.train.seed, 1),
                               state_sh, batch_sh, mesh)
  losses_1, mems_seen = [], []
  with step_lib.mesh_context(mesh):
    state = step_lib.init_state(task, tx, mesh, one.train.seed, state_sh, 8)
    assert state.mems.shape == (2, 8, 24, 32) and not np.any(np.asarray(state.mems))
    for batch in batches:
      emb = np.asarray(state.params["word_embedding"]["embedding"])
      state, metrics = fn(state, {k: jax.device_put(v, batch_sh[k]) for k, v in batch.items()})
      losses_1.append(float(metrics["loss"]))
      mems = np.asarray(state.mems)
      np.testing.assert_allclose(mems[0, :, -16:], emb[batch["input_ids"][:, :16]], atol=1e-6)
      if mems_seen:  # the previous memory's last 8 rows moved to the front
        np.testing.assert_array_equal(mems[:, :, :8], mems_seen[-1][:, :, -8:])
      mems_seen.append(mems)
  assert not np.any(mems_seen[0][:, :, :8])  # 24 - 16 rows of the initial zeros remain
  eight = xlnet_config(model=MEMORY, optim={"grad_accum_steps": 2},
                       mesh={"data": 2, "fsdp": 2, "tensor": 2})
  state_8, losses_8, _, _ = _train(eight, batches, 3)
  np.testing.assert_allclose(losses_8, losses_1, rtol=2e-5)
  assert state_8.mems.sharding.spec == P(None, ("data", "fsdp"), None, None)
  np.testing.assert_allclose(np.asarray(state_8.mems), mems_seen[-1], atol=2e-5)
  assert_params_close(state.params, state_8.params, atol=2e-6)


def test_loss_is_cross_entropy_of_the_query_stream_at_the_targets():
  config = xlnet_config()
  task = tasks.make_task(config)
  params = jax.jit(task.init)(jax.random.key(0))["params"]
  batch = xlnet_batches(config, 1, seed=2)[0]
  batch["labels"][:, -1] = tasks.IGNORE
  (loss_sum, aux), logits = jax.jit(lambda p, b: (
      task.loss(p, b, None, deterministic=True),
      task.model.apply({"params": p}, b["input_ids"], b["token_type_ids"], b["perm_mask"],
                       b["target_mapping"])))(params, batch)
  logits = np.asarray(logits, np.float64)
  valid = batch["labels"] != tasks.IGNORE
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  target = np.take_along_axis(logits, np.where(valid, batch["labels"], 0)[..., None], -1)[..., 0]
  assert int(aux["count"]) == valid.sum() == 8 * 4
  np.testing.assert_allclose(float(loss_sum), np.sum((lse - target) * valid), rtol=1e-5)


@pytest.mark.parametrize("extra", [{}, {**MEMORY, "bi_data": True}], ids=["plain", "memory"])
def test_flops_model_counts_xlnet_matmuls(extra):
  """Analytic two-stream count within 10% of XLA's forward count on a matmul-heavy shape,
  also with memory (keys over memory + tokens) and bi_data."""
  config = xlnet_config(model={"hidden_size": 256, "intermediate_size": 1024, **extra})
  task = tasks.make_task(config)
  batch = xlnet_batches(config, 1)[0] if not extra else stream_batches(config, 1)[0]
  params = jax.eval_shape(task.init, jax.random.key(0))["params"]  # shapes suffice
  mems = None if not extra else np.zeros((2, 8, 24, 256), np.float32)
  fwd = jax.jit(lambda p, b, m: task.model.apply(
      {"params": p}, b["input_ids"], b["token_type_ids"], b["perm_mask"], b["target_mapping"],
      mems=m, return_mems=m is not None))
  cost = fwd.lower(params, batch, mems).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  assert flops.train_flops_per_step(config) / 3 == pytest.approx(cost["flops"], rel=0.10)


@pytest.mark.parametrize("overrides,needle", [
    ({"objective": {"perm_size": 5}}, "objective.perm_size (5) must divide data.seq_len (32)"),
    ({"objective": {"num_predict": 40}}, "objective.num_predict must be in [0, data.seq_len - 3)"),
    ({"data": {"pack_documents": True}}, "data.pack_documents is not supported"),
    ({"objective": {"name": "mlm"}}, "does not train model.family 'xlnet'"),
    ({"objective": {"max_span": 0}}, "objective.max_span must be >= 1, got 0"),
    ({"model": {"mem_len": 8}}, "model.mem_len (8) and model.reuse_len (0) must both be 0"),
    ({"model": {"mem_len": 8, "reuse_len": 12}}, "data.seq_len - 5] = [15, 27]"),
    ({"model": {"mem_len": 8, "reuse_len": 18}, "objective": {"perm_size": 4}},
     "objective.perm_size (4) must divide model.reuse_len (18) and data.seq_len - reuse_len"),
    ({"model": {"bi_data": True}, "train": {"batch_size": 6}, "optim": {"grad_accum_steps": 2}},
     ("model.bi_data needs train.batch_size (6) even with half of it divisible by "
      "optim.grad_accum_steps (2)")),
])
def test_bad_permutation_settings_are_refused(overrides, needle):
  with pytest.raises(config_lib.ConfigError) as e:
    xlnet_config(**overrides)
  assert needle in str(e.value)


def _hf_param_count(config: config_lib.Config) -> int:
  m = config.model
  hf = transformers.XLNetConfig(vocab_size=m.vocab_size, d_model=m.hidden_size,
                                n_layer=m.num_layers, n_head=m.num_heads,
                                d_inner=m.intermediate_size)
  with torch.device("meta"):
    model = transformers.XLNetLMHeadModel(hf)
  return model.num_parameters()


@pytest.mark.parametrize("preset", ["xlnet_base", "xlnet_large"])
def test_presets_have_the_published_sizes(preset):
  """With XLNet's 32000-id vocabulary the presets have transformers' parameter counts for
  xlnet-base-cased / xlnet-large-cased (tied head counted once)."""
  config = config_lib.load_config(preset, ["model.vocab_size=32000"])
  task = tasks.make_task(config)
  shapes = jax.eval_shape(task.init, jax.random.key(0))["params"]
  assert tasks.param_count(shapes) == _hf_param_count(config)
