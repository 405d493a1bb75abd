"""T5 span corruption through the train step: 8-device sharding equals 1 device, gradient
accumulation equals one batch, Adafactor's factored statistics, z-loss, the rsqrt schedule,
loss normalisation, and packed rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from data_pipelines import packing
from data_pipelines.objectives import span_corruption
from data_pipelines.vocab import VocabInfo
from t5x_like import config as config_lib
from t5x_like import flops
from t5x_like.training import optimizer, tasks
from t5x_like.training import step as step_lib
from tests.t5x_like.test_sharding import _setup, _train, assert_params_close, weight_specs

TINY_T5 = {
    "model": {"family": "t5", "vocab_size": 128, "hidden_size": 32, "num_layers": 2,
              "num_decoder_layers": 2, "num_heads": 4, "head_dim": 8, "intermediate_size": 48,
              "hidden_act": "gelu_new", "layer_norm_eps": 1e-6, "dropout_rate": 0.0},
    "objective": {"name": "span_corruption", "z_loss": 1e-4},
    "data": {"seq_len": 32, "target_len": 0},
    "optim": {"name": "adafactor", "learning_rate": 0.01, "schedule": "rsqrt",
              "warmup_steps": 10, "b1": 0.0, "weight_decay": 0.0, "grad_clip_norm": 0.0,
              "adafactor_min_dim_size_to_factor": 16},
    "train": {"batch_size": 8, "steps": 10, "seed": 0},
    "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
}
NUM_SENTINELS = 20


def t5_config(**sections: dict) -> config_lib.Config:
  tree = {k: dict(v) for k, v in TINY_T5.items()}
  for name, values in sections.items():
    tree.setdefault(name, {}).update(values)
  _, targets = span_corruption.random_spans_helper(tree["data"]["seq_len"])
  tree["data"]["target_len"] = targets
  return config_lib.from_dict(tree)


def _shift(labels: np.ndarray) -> np.ndarray:
  out = np.zeros_like(labels)
  out[1:] = labels[:-1]
  return out


def span_batches(config: config_lib.Config, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """n global batches made by the real span-corruption objective from random full blocks."""
  vocab = VocabInfo.synthetic(config.model.vocab_size, num_sentinels=NUM_SENTINELS)
  params = span_corruption.SpanCorruptionParams()
  raw, targets = span_corruption.random_spans_helper(config.data.seq_len)
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(n):
    rows = []
    for _ in range(config.train.batch_size):
      block = rng.integers(6, config.model.vocab_size - NUM_SENTINELS, raw)
      ex = span_corruption.make_example(block, rng, params, vocab)
      assert ex["input_ids"].shape == (config.data.seq_len,)
      assert ex["labels"].shape == (targets,)
      rows.append({**ex, "decoder_input_ids": _shift(ex["labels"])})
    batches.append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  return batches


@pytest.fixture(scope="module")
def runs():
  # 8 devices with 2 micro-batches against 1 device, one batch: sharding and gradient
  # accumulation in one comparison (the accumulation itself: test_sharding.py).
  one = t5_config()
  eight = t5_config(mesh={"data": 2, "fsdp": 2, "tensor": 2}, optim={"grad_accum_steps": 2})
  batches = span_batches(one, 4)
  return _train(one, batches, 4), _train(eight, batches, 4)


def test_t5_params_and_adafactor_state_are_sharded(runs):
  _, (state, _, batch, mesh) = runs
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  matrices = weight_specs(state.params)  # every weight matrix split over fsdp or tensor
  assert any(spec == P("fsdp", "tensor") for spec in matrices.values())  # wi: [embed, mlp]
  # Adafactor: factored row/column statistics exist (dims >= 16) and are replicated
  stats = jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
  factored = [x for path, x in stats
              if any(getattr(k, "name", None) in ("v_row", "v_col") for k in path) and x.size > 1]
  assert factored and all(x.sharding.spec == P() for x in factored)
  # unfactored second moments (vectors, small matrices) keep their parameter's sharding
  full = [x for path, x in stats
          if any(getattr(k, "name", None) == "v" for k in path) and x.ndim == 2]
  assert full and any(x.sharding.spec != P() for x in full)
  assert batch["input_ids"].sharding.spec == P(("data", "fsdp"))


def test_t5_loss_matches_single_device_and_falls(runs):
  (state_1, losses_1, _, _), (state_8, losses_8, _, _) = runs
  np.testing.assert_allclose(losses_8, losses_1, rtol=2e-5)
  assert losses_1[-1] < losses_1[0]
  assert_params_close(state_1.params, state_8.params, atol=5e-6)


def _reference_losses(logits: np.ndarray, labels: np.ndarray, z_loss: float):
  logits = logits.astype(np.float64)
  valid = labels != tasks.IGNORE
  lse = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
  target = np.take_along_axis(logits, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  nll = np.sum((lse - target) * valid)
  return nll, z_loss * np.sum(lse ** 2 * valid), int(valid.sum())


def test_seq2seq_loss_and_z_loss_match_numpy():
  config = t5_config()
  task = tasks.make_task(config)
  params = jax.jit(task.init)(jax.random.key(0))["params"]
  batch = span_batches(config, 1, seed=3)[0]
  batch["labels"][:, -3:] = tasks.IGNORE  # padded targets are not scored
  (loss_sum, aux), logits = jax.jit(lambda p, b: (
      task.loss(p, b, None, deterministic=True),
      task.model.apply({"params": p}, b["input_ids"], b["decoder_input_ids"])))(params, batch)
  nll, z, count = _reference_losses(np.asarray(logits), batch["labels"], 1e-4)
  assert int(aux["count"]) == count == config.train.batch_size * (config.data.target_len - 3)
  np.testing.assert_allclose(float(aux["z_loss"]), z, rtol=1e-5)
  np.testing.assert_allclose(float(loss_sum), nll + z, rtol=1e-5)
  assert 0 <= int(aux["correct"]) <= count


def test_constant_loss_normalizing_factor_scales_the_gradient():
  """T5X's loss_normalizing_factor: grads = summed-loss grads / constant, not / tokens."""
  config = t5_config(optim={"name": "adamw", "schedule": "constant", "learning_rate": 1e-3,
                            "b1": 0.9, "warmup_steps": 0})
  batch = span_batches(config, 1, seed=4)[0]
  task = tasks.make_task(config)
  tx = optimizer.make_optimizer(config.optim, 10)
  sched = optimizer.make_schedule(config.optim, 10)
  params = jax.jit(task.init)(jax.random.key(0))["params"]
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              opt_state=jax.jit(tx.init)(params))
  tokens = int(np.sum(batch["labels"] != tasks.IGNORE))
  _, by_tokens = jax.jit(step_lib.make_train_step(task, tx, sched, 0, 1))(state, batch)
  _, by_const = jax.jit(step_lib.make_train_step(
      task, tx, sched, 0, 1, loss_normalizing_factor=1000.0))(state, batch)
  np.testing.assert_allclose(float(by_const["grad_norm"]) * 1000.0,
                             float(by_tokens["grad_norm"]) * tokens, rtol=1e-4)
  # the logged loss is the per-token cross-entropy either way
  np.testing.assert_allclose(float(by_const["loss"]), float(by_tokens["loss"]), rtol=1e-6)


def test_rsqrt_schedule_is_t5s_inverse_square_root():
  config = t5_config(optim={"learning_rate": 0.01, "warmup_steps": 10_000})
  schedule = optimizer.make_schedule(config.optim, 100)
  for step in (0, 1, 5_000, 10_000):
    np.testing.assert_allclose(float(schedule(step)), 0.01, rtol=1e-6)
  for step in (40_000, 250_000, 1_000_000):
    np.testing.assert_allclose(float(schedule(step)), 1.0 / np.sqrt(step), rtol=1e-5)


def test_packed_rows_train_and_isolate_segments():
  """Packed rows through the task: a change in example 2 leaves example 1's loss unchanged."""
  config = t5_config(data={"pack_documents": True})
  task = tasks.make_task(config)
  assert set(task.features) >= {"segment_ids", "decoder_segment_ids", "positions",
                                "decoder_positions"}
  vocab = VocabInfo.synthetic(config.model.vocab_size, num_sentinels=NUM_SENTINELS)
  sc = span_corruption.SpanCorruptionParams()

  def random_block(n, seed):
    return np.random.default_rng(seed + 100).integers(6, 100, n)

  def row(second_seed):
    first = span_corruption.make_example(random_block(11, 0), np.random.default_rng(0), sc,
                                         vocab)
    second = span_corruption.make_example(random_block(9, second_seed),
                                          np.random.default_rng(second_seed), sc, vocab)
    packed = packing.pack_one([first, second], {"input_ids": config.data.seq_len,
                                                "labels": config.data.target_len},
                              groups={"input_ids": "", "labels": "decoder_"})
    targets = np.where(packed["labels"] == tasks.IGNORE, 0, packed["labels"])
    packed["decoder_input_ids"] = packing.shift_right_per_segment(
        targets, packed["decoder_segment_ids"])
    return {k: v[None] for k, v in packed.items()}

  params = jax.jit(task.init)(jax.random.key(0))["params"]
  a, b = row(1), row(2)
  assert not np.array_equal(a["input_ids"], b["input_ids"])
  loss = jax.jit(lambda p, batch: task.loss(p, batch, None, deterministic=True)[0])

  def loss_of_first(batch):
    only_first = dict(batch)
    only_first["labels"] = np.where(batch["decoder_segment_ids"] == 1, batch["labels"],
                                    tasks.IGNORE)
    return float(loss(params, only_first))

  assert loss_of_first(a) == pytest.approx(loss_of_first(b), rel=1e-6, abs=1e-6)


def test_flops_model_counts_encoder_decoder_matmuls():
  """The analytic count is within 10% of XLA's own count for the forward pass."""
  config = t5_config()
  task = tasks.make_task(config)
  batch = span_batches(config, 1)[0]
  params = jax.eval_shape(task.init, jax.random.key(0))["params"]  # shapes suffice
  fwd = jax.jit(lambda p, b: task.model.apply({"params": p}, b["input_ids"],
                                              b["decoder_input_ids"]))
  cost = fwd.lower(params, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  m, d = config.model, config.data
  ours = flops.encoder_decoder_forward_flops(
      config.train.batch_size, d.seq_len, d.target_len, m.hidden_size, m.num_heads * m.head_dim,
      m.intermediate_size, m.num_layers, m.num_decoder_layers, m.vocab_size)
  assert ours == pytest.approx(cost["flops"], rel=0.10)


def test_mixed_family_and_objective_is_refused():
  with pytest.raises(config_lib.ConfigError, match="does not train model.family"):
    t5_config(objective={"name": "mlm"})


def test_setup_shardings_use_the_factored_fix():
  config = t5_config(mesh={"data": 2, "fsdp": 2, "tensor": 2})
  _, _, _, _, abstract, state_sh, _ = _setup(config)
  # all shardings have the rank of their arrays (factored stats were unboxed)
  for a, s in zip(jax.tree_util.tree_leaves(abstract), jax.tree_util.tree_leaves(state_sh)):
    assert len(s.spec) <= a.ndim


@pytest.mark.parametrize("preset,expected", [("t5_small", 76_961_152), ("t5_base", 247_577_856)])
def test_presets_have_the_published_v1_1_sizes(preset, expected):
  """With T5's 32128-id vocabulary the presets have exactly google/t5-v1_1-{small,base}'s
  parameter counts (HF's num_parameters of T5ForConditionalGeneration, shared counted once)."""
  config = config_lib.load_config(preset, ["model.vocab_size=32128", "data.target_len=114"])
  task = tasks.make_task(config)
  shapes = jax.eval_shape(task.init, jax.random.key(0))["params"]
  assert tasks.param_count(shapes) == expected
