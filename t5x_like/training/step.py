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
from t5x_like.models import lora
from t5x_like.training.tasks import Task, initial_mems

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
# Eval sums of a task's own ratios (`ratio_metrics`): numerator and count, by name.
RATIO, RATIO_COUNT = "ratio_sum/", "ratio_count/"


@flax.struct.dataclass
class TrainState:
  """step, params, optimiser state, and the recurrent state carried between steps (XLNet's
  memory [layers, B, mem_len, D], batch-sharded; None for every other task). The memory is
  saved with the rest, so a resumed run continues exactly.

  With LoRA, `params` is the whole model (frozen base and adapters) and `opt_state` the
  optimiser state of the trainable subtree only (`trainable_params`)."""
  step: jax.Array
  params: Any
  opt_state: Any
  mems: Any = None


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


def lora_spec(task: Task) -> lora.LoraSpec | None:
  """The task's LoRA spec (`tasks.LoraTask`), None for full training."""
  return getattr(task, "lora", None)


def trainable_params(task: Task, params: Any) -> Any:
  """What the optimiser updates: all params, or with LoRA the adapters (and the token
  embeddings with lora.train_embeddings); the rest stays frozen and gets no gradient."""
  spec = lora_spec(task)
  return params if spec is None else lora.trainable(params, spec)


def _boxed_init(task: Task, tx: optax.GradientTransformation, batch_size: int
                ) -> Callable[[jax.Array], Any]:
  def init(rng: jax.Array) -> TrainState:
    params = task.init(rng)["params"]
    train = trainable_params(task, params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=_unbox_reshaped_state(tx.init(train), train),
                      mems=initial_mems(task, batch_size))
  return init


def state_shardings(task: Task, tx: optax.GradientTransformation, mesh: Mesh,
                    batch_size: int = 0) -> tuple[Any, Any, Any]:
  """Returns (abstract boxed state, abstract unboxed state, NamedSharding tree).

  batch_size: the global batch, for a task's memory (its rows are the batch's rows).
  """
  with mesh_context(mesh):
    boxed = jax.eval_shape(_boxed_init(task, tx, batch_size), jax.random.key(0))
    shardings = sharding.logical_to_mesh(nn.get_partition_spec(boxed), mesh)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nn.meta.unbox(boxed), shardings)
  return boxed, abstract, shardings


def init_state(task: Task, tx: optax.GradientTransformation, mesh: Mesh, seed: int,
               shardings: Any, batch_size: int = 0) -> TrainState:
  """Initialises parameters and optimiser state directly in their final sharding."""
  init = _boxed_init(task, tx, batch_size)
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


def _split_mems(mems: jax.Array, k: int) -> jax.Array:
  """Memory [N, B, M, D] -> [k, N, B/k, M, D], micro-batch i holding rows i, i+k, .. as
  `_split_micro` does."""
  n, b = mems.shape[:2]
  return jnp.moveaxis(mems.reshape((n, b // k, k) + mems.shape[2:]), 2, 0)


def _join_mems(mems: jax.Array) -> jax.Array:
  """Inverse of `_split_mems`: [k, N, B/k, M, D] -> [N, B, M, D]."""
  k, n, b = mems.shape[:3]
  return jnp.moveaxis(mems, 0, 2).reshape((n, b * k) + mems.shape[3:])


def make_train_step(task: Task, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, seed: int, grad_accum_steps: int,
                    loss_normalizing_factor: float = 0.0,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The pure step.

  The summed loss (cross-entropy + z-loss) is divided by the number of predicted tokens in
  the global batch, or by `loss_normalizing_factor` when > 0 (T5X's constant normaliser).
  Logged `loss` is the cross-entropy per predicted token either way.
  With LoRA only the trainable subtree is differentiated and updated (`trainable_params`).
  """
  spec = lora_spec(task)

  def loss_fn(train: Any, params: Any, batch: Batch, rng: jax.Array, mems: Any
              ) -> tuple[jax.Array, tuple[Metrics, Any]]:
    params = train if spec is None else lora.overlay(params, train)
    kwargs = {} if mems is None else {"mems": mems}
    loss_sum, aux = task.loss(params, batch, rng, deterministic=False, **kwargs)
    aux = dict(aux)
    return loss_sum, (aux, aux.pop("mems", None))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def grads_of(train: Any, params: Any, batch: Batch, rng: jax.Array, mems: Any
               ) -> tuple[Any, jax.Array, Metrics, Any]:
    if grad_accum_steps == 1:
      (loss_sum, (aux, new_mems)), grads = grad_fn(train, params, batch, rng, mems)
      return grads, loss_sum, aux, new_mems
    micro = _split_micro(batch, grad_accum_steps)
    micro_mems = None if mems is None else _split_mems(mems, grad_accum_steps)

    def body(carry, inputs):
      grads_acc, loss_acc, aux_acc = carry
      micro_batch, micro_mem, i = inputs
      (loss_sum, (aux, new_mem)), grads = grad_fn(train, params, micro_batch,
                                                  jax.random.fold_in(rng, i), micro_mem)
      return (jax.tree_util.tree_map(jnp.add, grads_acc, grads), loss_acc + loss_sum,
              jax.tree_util.tree_map(jnp.add, aux_acc, aux)), new_mem

    zeros = jax.tree_util.tree_map(jnp.zeros_like, train)
    first = jax.tree_util.tree_map(lambda x: x[0], (micro, micro_mems))
    aux_shape = jax.eval_shape(lambda: loss_fn(train, params, first[0], rng, first[1]))[1][0]
    aux0 = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), aux_shape)
    (grads, loss_sum, aux), new_mems = jax.lax.scan(
        body, (zeros, jnp.zeros((), jnp.float32), aux0),
        (micro, micro_mems, jnp.arange(grad_accum_steps)))
    return grads, loss_sum, aux, None if mems is None else _join_mems(new_mems)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    train = state.params if spec is None else lora.trainable(state.params, spec)
    grads, loss_sum, aux, mems = grads_of(train, state.params, batch, rng, state.mems)
    count = jnp.maximum(aux["count"], 1).astype(jnp.float32)
    denom = jnp.float32(loss_normalizing_factor) if loss_normalizing_factor > 0 else count
    grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, train)
    # A non-finite loss or gradient is never applied: params, optimiser state and memory stay
    # as they were (the loop then stops or skips, train.on_nonfinite).
    finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
    params = keep(optax.apply_updates(train, updates), train)
    opt_state, mems = keep(opt_state, state.opt_state), keep(mems, state.mems)
    if spec is not None:  # frozen leaves pass through untouched (no select over them)
      params = lora.overlay(state.params, params)
    z_loss = aux.get("z_loss", jnp.zeros((), jnp.float32))
    metrics = {"loss": (loss_sum - z_loss) / count,
               "accuracy": aux["correct"].astype(jnp.float32) / count,
               "predicted_tokens": aux["count"], "dropped_predictions": aux["dropped"],
               "grad_norm": grad_norm, "nonfinite": (~finite).astype(jnp.int32),
               "learning_rate": schedule(state.step)}
    if "z_loss" in aux:
      metrics["z_loss"] = z_loss / count
    metrics.update(ratio_metrics(aux))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      mems=mems), metrics

  return train_step


def ratio_metrics(aux: Metrics) -> Metrics:
  """A task's own metrics: aux["ratios"] maps a name to (summed numerator, count), each
  summed over micro-batches like the loss (e.g. ELECTRA's discriminator accuracy)."""
  return {name: num.astype(jnp.float32) / jnp.maximum(den, 1).astype(jnp.float32)
          for name, (num, den) in aux.get("ratios", {}).items()}


def make_eval_step(task: Task) -> Callable[[Any, Batch, Any], tuple[Metrics, Any]]:
  """Summed loss / correct / count for one batch, and the task's new memory (None without
  one); the loop adds the metrics over batches and feeds the memory to the next batch."""

  def eval_step(params: Any, batch: Batch, mems: Any) -> tuple[Metrics, Any]:
    kwargs = {} if mems is None else {"mems": mems}
    loss_sum, aux = task.loss(params, batch, None, deterministic=True, **kwargs)
    loss_sum = loss_sum - aux.get("z_loss", jnp.zeros((), jnp.float32))  # cross-entropy only
    sums = {"loss_sum": loss_sum, "count": aux["count"], "correct": aux["correct"]}
    for name, (num, den) in aux.get("ratios", {}).items():
      sums[f"{RATIO}{name}"], sums[f"{RATIO_COUNT}{name}"] = num, den
    return sums, aux.get("mems")

  return eval_step


def zero_mems(task: Task, batch_size: int, mesh: Mesh, shardings: Any) -> Any:
  """A task's initial memory in its sharding (evaluation starts each pass from it)."""
  if initial_mems(task, batch_size) is None:
    return None
  with mesh_context(mesh):
    return jax.jit(lambda: nn.meta.unbox(initial_mems(task, batch_size)),
                   out_shardings=shardings)()


def jit_train_step(step_fn: Callable, state_sh: Any, batch_sh: Any, mesh: Mesh) -> Callable:
  """jit with explicit in/out shardings; the old state is donated (updated in place)."""
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(step_fn, in_shardings=(state_sh, batch_sh),
                 out_shardings=(state_sh, replicated), donate_argnums=(0,))


def jit_eval_step(eval_fn: Callable, params_sh: Any, batch_sh: Any, mesh: Mesh,
                  mems_sh: Any = None) -> Callable:
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(eval_fn, in_shardings=(params_sh, batch_sh, mems_sh),
                 out_shardings=(replicated, mems_sh))
