"""Train state, sharded initialisation, and the pure jitted train / eval steps.

Nothing here logs, saves or prints: the loop owns side effects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t5x_like import sharding
from t5x_like.training.tasks import Task

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


@contextlib.contextmanager
def mesh_context(mesh: Mesh) -> Iterator[None]:
  """Activates the mesh and the logical rules so the models' logical constraints apply."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    yield


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.Partitioned)


def _unbox_reshaped_state(opt_state: Any, params: Any) -> Any:
  """Drops the logical box of optimiser-state leaves shaped unlike their parameter.

  Optimiser states built by tree_map over boxed params keep each param's box even where the
  state has another shape: Adafactor's factored row/column statistics drop an axis, and its
  placeholders are [1]. Those are O(rows + columns) and stay replicated; state leaves shaped
  like their parameter (Adam moments, unfactored Adafactor v) keep its sharding.
  """
  params_def = jax.tree_util.tree_structure(params, is_leaf=_is_box)

  def params_shaped(x: Any) -> bool:
    return jax.tree_util.tree_structure(x, is_leaf=_is_box) == params_def

  def fix(subtree: Any) -> Any:
    if not params_shaped(subtree):
      return subtree
    return jax.tree_util.tree_map(
        lambda o, p: o if not _is_box(o) or o.value.shape == p.value.shape else o.value,
        subtree, params, is_leaf=_is_box)

  return jax.tree_util.tree_map(fix, opt_state, is_leaf=params_shaped)


def _boxed_init(task: Task, tx: optax.GradientTransformation) -> Callable[[jax.Array], Any]:
  def init(rng: jax.Array) -> TrainState:
    params = task.init(rng)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=_unbox_reshaped_state(tx.init(params), params))
  return init


def state_shardings(task: Task, tx: optax.GradientTransformation, mesh: Mesh,
                    ) -> tuple[Any, Any, Any]:
  """Returns (abstract boxed state, abstract unboxed state, NamedSharding tree)."""
  with mesh_context(mesh):
    boxed = jax.eval_shape(_boxed_init(task, tx), jax.random.key(0))
    shardings = sharding.logical_to_mesh(nn.get_partition_spec(boxed), mesh)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nn.meta.unbox(boxed), shardings)
  return boxed, abstract, shardings


def init_state(task: Task, tx: optax.GradientTransformation, mesh: Mesh, seed: int,
               shardings: Any) -> TrainState:
  """Initialises parameters and optimiser state directly in their final sharding."""
  init = _boxed_init(task, tx)
  with mesh_context(mesh):
    return jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=shardings)(
        jax.random.key(seed))


def batch_shardings(features: tuple[str, ...], mesh: Mesh) -> dict[str, NamedSharding]:
  return {name: sharding.batch_sharding(mesh) for name in features}


def _split_micro(batch: Batch, k: int) -> Batch:
  """[B, ...] -> [k, B/k, ...] taking rows j, j+k, ... so no row changes device."""
  def split(x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    return nn.with_logical_constraint(x, (None, "act_batch") + (None,) * (x.ndim - 2))
  return jax.tree_util.tree_map(split, batch)


def make_train_step(task: Task, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, seed: int, grad_accum_steps: int,
                    loss_normalizing_factor: float = 0.0,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The pure step.

  The summed loss (cross-entropy + z-loss) is divided by the number of predicted tokens in
  the global batch, or by `loss_normalizing_factor` when > 0 (T5X's constant normaliser).
  Logged `loss` is the cross-entropy per predicted token either way.
  """

  def grads_of(params: Any, batch: Batch, rng: jax.Array) -> tuple[Any, jax.Array, Metrics]:
    grad_fn = jax.value_and_grad(lambda p, b, r: task.loss(p, b, r, deterministic=False),
                                 has_aux=True)
    if grad_accum_steps == 1:
      (loss_sum, aux), grads = grad_fn(params, batch, rng)
      return grads, loss_sum, aux
    micro = _split_micro(batch, grad_accum_steps)

    def body(carry, inputs):
      grads_acc, loss_acc, aux_acc = carry
      micro_batch, i = inputs
      (loss_sum, aux), grads = grad_fn(params, micro_batch, jax.random.fold_in(rng, i))
      return (jax.tree_util.tree_map(jnp.add, grads_acc, grads), loss_acc + loss_sum,
              jax.tree_util.tree_map(jnp.add, aux_acc, aux)), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    first = jax.tree_util.tree_map(lambda x: x[0], micro)
    aux_shape = jax.eval_shape(lambda: task.loss(params, first, rng, deterministic=False))[1]
    aux0 = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), aux_shape)
    (grads, loss_sum, aux), _ = jax.lax.scan(
        body, (zeros, jnp.zeros((), jnp.float32), aux0),
        (micro, jnp.arange(grad_accum_steps)))
    return grads, loss_sum, aux

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    grads, loss_sum, aux = grads_of(state.params, batch, rng)
    count = jnp.maximum(aux["count"], 1).astype(jnp.float32)
    denom = jnp.float32(loss_normalizing_factor) if loss_normalizing_factor > 0 else count
    grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    z_loss = aux.get("z_loss", jnp.zeros((), jnp.float32))
    metrics = {"loss": (loss_sum - z_loss) / count,
               "accuracy": aux["correct"].astype(jnp.float32) / count,
               "predicted_tokens": aux["count"], "dropped_predictions": aux["dropped"],
               "grad_norm": optax.global_norm(grads),
               "learning_rate": schedule(state.step)}
    if "z_loss" in aux:
      metrics["z_loss"] = z_loss / count
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(task: Task) -> Callable[[Any, Batch], Metrics]:
  """Summed loss / correct / count for one batch; the loop adds them over batches."""

  def eval_step(params: Any, batch: Batch) -> Metrics:
    loss_sum, aux = task.loss(params, batch, None, deterministic=True)
    loss_sum = loss_sum - aux.get("z_loss", jnp.zeros((), jnp.float32))  # cross-entropy only
    return {"loss_sum": loss_sum, "count": aux["count"], "correct": aux["correct"]}

  return eval_step


def jit_train_step(step_fn: Callable, state_sh: Any, batch_sh: Any, mesh: Mesh) -> Callable:
  """jit with explicit in/out shardings; the old state is donated (updated in place)."""
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(step_fn, in_shardings=(state_sh, batch_sh),
                 out_shardings=(state_sh, replicated), donate_argnums=(0,))


def jit_eval_step(eval_fn: Callable, params_sh: Any, batch_sh: Any, mesh: Mesh) -> Callable:
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(eval_fn, in_shardings=(params_sh, batch_sh), out_shardings=replicated)
