"""8 virtual devices: params and batch really sharded (data=2, fsdp=2, tensor=2); the loss
matches the 1-device run; checkpoints restore onto a different mesh."""

from __future__ import annotations

import logging

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from t5x_like import checkpointing, flops, sharding
from t5x_like.config import ConfigError, MeshConfig
from t5x_like.training import optimizer, tasks
from t5x_like.training import step as step_lib
from tests.t5x_like.conftest import mlm_batches, tiny_config


def _setup(config):
  task = tasks.make_task(config)
  tx = optimizer.make_optimizer(config.optim, config.train.steps)
  schedule = optimizer.make_schedule(config.optim, config.train.steps)
  n = config.mesh.data * config.mesh.fsdp * config.mesh.tensor
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:n])
  _, abstract, state_sh = step_lib.state_shardings(task, tx, mesh, config.train.batch_size)
  batch_sh = step_lib.batch_shardings(task.features, mesh)
  return task, tx, schedule, mesh, abstract, state_sh, batch_sh


def _train(config, batches, steps):
  task, tx, schedule, mesh, _, state_sh, batch_sh = _setup(config)
  fn = step_lib.jit_train_step(
      step_lib.make_train_step(task, tx, schedule, config.train.seed,
                               config.optim.grad_accum_steps), state_sh, batch_sh, mesh)
  losses = []
  with step_lib.mesh_context(mesh):
    state = step_lib.init_state(task, tx, mesh, config.train.seed, state_sh,
                                config.train.batch_size)
    for i in range(steps):
      batch = {k: jax.make_array_from_process_local_data(batch_sh[k], v)
               for k, v in batches[i].items()}
      state, metrics = fn(state, batch)
      losses.append(float(metrics["loss"]))
  return state, losses, batch, mesh


def assert_params_close(a, b, atol: float) -> None:
  """Two parameter trees (e.g. 1 device vs 8 devices) agree leaf by leaf within atol."""
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=atol)


def weight_specs(params) -> dict[str, P]:
  """The PartitionSpec of every weight matrix (kernels and embeddings), by path; asserts
  there are some and each is split over fsdp or tensor somewhere."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  specs = {"/".join(str(getattr(k, "key", k)) for k in path): leaf.sharding.spec
           for path, leaf in leaves}
  matrices = {name: spec for name, spec in specs.items()
              if "kernel" in name or "embedding" in name}
  assert matrices and all("fsdp" in spec or "tensor" in spec for spec in matrices.values())
  return matrices


@pytest.fixture(scope="module")
def runs():
  assert jax.device_count() == 8
  one = tiny_config()
  eight = tiny_config(mesh={"data": 2, "fsdp": 2, "tensor": 2})
  batches = mlm_batches(one, 4)
  return _train(one, batches, 4), _train(eight, batches, 4)


def test_params_and_batch_are_sharded(runs):
  _, (state, _, batch, mesh) = runs
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  layer = state.params["encoder"]["layer_0"]
  assert layer["intermediate"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert layer["output"]["kernel"].sharding.spec == P("tensor", "fsdp")
  assert layer["attention"]["query"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
  assert layer["attention_output"]["kernel"].sharding.spec == P("tensor", None, "fsdp")
  embed = state.params["embeddings"]["word_embeddings"]["embedding"]
  assert embed.sharding.spec == P("tensor", "fsdp")
  # a [128, 32] table split 2 x 2 -> each device holds a [64, 16] shard
  assert {s.data.shape for s in embed.addressable_shards} == {(64, 16)}
  # Adam moments follow their parameters
  mu = state.opt_state[1][0].mu["encoder"]["layer_0"]["intermediate"]["kernel"]
  assert mu.sharding.spec == P("fsdp", "tensor")
  assert batch["input_ids"].sharding.spec == P(("data", "fsdp"))
  assert {s.data.shape for s in batch["input_ids"].addressable_shards} == {(2, 32)}


def test_loss_matches_single_device(runs):
  (_, losses_1, _, _), (_, losses_8, _, _) = runs
  np.testing.assert_allclose(losses_8, losses_1, rtol=2e-5)
  assert losses_1[-1] < losses_1[0]


def test_grad_accumulation_equals_one_big_batch():
  config = tiny_config()
  batches = mlm_batches(config, 3, seed=1)
  state_1, losses_1, _, _ = _train(config, batches, 3)
  accum = tiny_config(optim={"grad_accum_steps": 4})
  state_a, losses_a, _, _ = _train(accum, batches, 3)
  np.testing.assert_allclose(losses_a, losses_1, rtol=2e-5)
  assert_params_close(state_1.params, state_a.params, atol=2e-6)


def test_restore_onto_a_different_mesh(tmp_path, runs):
  (state_1, _, _, _), _ = runs
  ckpt = checkpointing.Checkpointer(str(tmp_path / "ckpt"), keep=1, async_save=True)
  ckpt.save(4, state_1, {"step": 4})
  ckpt.wait()
  eight = tiny_config(mesh={"data": 1, "fsdp": 4, "tensor": 2})
  *_, abstract, _, _ = _setup(eight)
  restored, data_state, step = ckpt.restore(None, abstract)
  ckpt.close()
  assert step == 4 and data_state == {"step": 4}
  kernel = restored.params["encoder"]["layer_1"]["intermediate"]["kernel"]
  assert kernel.sharding.spec == P("fsdp", "tensor") and kernel.sharding.mesh.shape["fsdp"] == 4
  for a, b in zip(jax.tree_util.tree_leaves(state_1), jax.tree_util.tree_leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_small_replicated_arrays_are_saved_whole_and_large_ones_replica_parallel(
    tmp_path, caplog):
  """Orbax's replica-parallel save slices a replicated array between its replicas, one
  compiled slice op per piece: only arrays whose pieces reach the threshold are sliced."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, P())
  piece = checkpointing.REPLICA_PARALLEL_MIN_SLICE_BYTES // 4  # float32 elements
  small = {f"w{i}": jax.device_put(np.full((i + 3, 5), i, np.float32), replicated)
           for i in range(6)}
  large = {"big": jax.device_put(np.ones((len(jax.devices()), piece), np.float32), replicated)}

  def slices_compiled(tree: dict, name: str) -> int:
    ckpt = checkpointing.Checkpointer(str(tmp_path / name), keep=1, async_save=False)
    caplog.clear()
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
      ckpt.save(1, tree, {})
    restored, _, _ = ckpt.restore(1, jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree))
    ckpt.close()
    for key, a in tree.items():
      np.testing.assert_array_equal(np.asarray(restored[key]), np.asarray(a))
    return sum("compilation of jit(slice)" in r.getMessage() for r in caplog.records)

  assert slices_compiled(small, "small") == 0
  assert slices_compiled(large, "large") >= len(jax.devices()) - 1


def test_mesh_shape_errors():
  with pytest.raises(ConfigError, match="needs 12 devices, but 8"):
    sharding.make_mesh(MeshConfig(data=3, fsdp=2, tensor=2))
  with pytest.raises(ConfigError, match="not divisible by 3"):
    sharding.make_mesh(MeshConfig(data=-1, fsdp=3, tensor=1))
  mesh = sharding.make_mesh(MeshConfig(data=-1, fsdp=2, tensor=2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ConfigError, match="batch_size"):
    sharding.check_batch_divisible(6, mesh)


def test_describe_prints_logical_and_mesh_axes():
  config = tiny_config(mesh={"data": 2, "fsdp": 2, "tensor": 2})
  task = tasks.make_task(config)
  tx = optimizer.make_optimizer(config.optim, config.train.steps)
  mesh = sharding.make_mesh(config.mesh)
  boxed, _, _ = step_lib.state_shardings(task, tx, mesh)
  lines = sharding.describe(boxed.params, mesh).splitlines()
  assert len(lines) == len(jax.tree_util.tree_leaves(nn.meta.unbox(boxed.params)))
  row = next(line for line in lines if line.startswith("encoder/layer_0/intermediate/kernel"))
  assert "(32, 64)" in row and "('embed', 'mlp')" in row and "('fsdp', 'tensor')" in row


def test_flops_model_counts_bert_matmuls():
  """The MLM count (encoder + gather-first head at the P predicted positions) within 10% of
  XLA's forward count on a matmul-heavy shape."""
  config = tiny_config(model={"hidden_size": 256, "intermediate_size": 1024, "num_heads": 4})
  task = tasks.make_task(config)
  batch = mlm_batches(config, 1)[0]
  params = jax.eval_shape(task.init, jax.random.key(0))["params"]  # shapes suffice
  positions = np.tile(np.arange(config.objective.predictions_per_row(config)), (len(batch["input_ids"]), 1))
  fwd = jax.jit(lambda p, b: task.model.apply(
      {"params": p}, b["input_ids"], b["attention_mask"], b["token_type_ids"],
      masked_positions=positions))
  cost = fwd.lower(params, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  assert flops.train_flops_per_step(config) / 3 == pytest.approx(cost["flops"], rel=0.10)
