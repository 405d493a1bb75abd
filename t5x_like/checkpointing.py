"""Orbax checkpoints: train state + data-iterator position, async, keep-N, any-mesh restore.

Orbax writes each step into a temporary directory and renames it when complete, so an
interrupted save never becomes the "latest" checkpoint; `latest_step` only sees finished ones.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from data_pipelines import storage

# Orbax writes a replicated array "replica-parallel": each replica writes a slice of it, which
# spreads a large save over the hosts of a pod. Every slice is a device op compiled for its own
# offsets, though, so a model of a few hundred small tensors on 8 devices paid ~90 compilations
# (3.3 s of a 17 s tiny CPU run) at its first save. Only slices of at least this size are
# worth it; smaller arrays are written whole by one replica, as orbax does on GPU.
REPLICA_PARALLEL_MIN_SLICE_BYTES = 1 << 20


def _register_array_handler() -> None:
  # The metadata store is what orbax's own default handler is built with (not re-exported).
  from orbax.checkpoint._src.metadata import array_metadata_store
  handler = ocp.type_handlers.ArrayHandler(
      array_metadata_store=array_metadata_store.Store(),
      min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_SLICE_BYTES)
  absl_logger = logging.getLogger("absl")  # orbax warns that it overrides the default
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logger.setLevel(level)


_register_array_handler()


class CheckpointError(ValueError):
  """A checkpoint is missing, corrupt or does not fit the model being restored."""


class Checkpointer:
  """Saves/restores {"state": TrainState pytree, "data": JSON iterator state}."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    # Orbax's tensorstore writes need an absolute path (`--workdir runs/x` is relative);
    # gs:// goes to tensorstore's GCS driver (credentials checked first, see storage).
    storage.check(directory)
    self.directory = epath.Path(storage.absolute(directory))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only,
        read_only=read_only)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict[str, Any], force: bool = False) -> bool:
    """Starts saving `step` (asynchronously unless async_save is off).

    Raises:
      CheckpointError: the save (or the previous asynchronous one, which orbax finishes
        first) failed, e.g. a full disk; complete checkpoints are never touched by a failed
        save (orbax writes into a temporary directory and renames it when done).
    """
    self._last_started = step
    try:
      return self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        data=ocp.args.JsonSave(data_state)), force=force)
    except OSError as e:
      raise self._save_error(step, e) from None

  def _save_error(self, step: int, e: BaseException) -> CheckpointError:
    reason = (e.strerror or str(e)) if isinstance(e, OSError) else str(e).splitlines()[0]
    return CheckpointError(f"saving checkpoint {step} in {self.directory} failed "
                           f"({type(e).__name__}: {reason}); the complete checkpoints "
                           f"{self.all_steps() or '(none)'} are intact")

  def _existing(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
      if step is None:
        raise CheckpointError(f"no complete checkpoint in {self.directory}")
    elif step not in self.all_steps():
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; "
                            f"available: {self.all_steps() or 'none'}")
    return step

  def _restore_error(self, step: int, e: BaseException) -> CheckpointError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    first = first.split(" See full TensorStore details")[0]
    return CheckpointError(f"checkpoint {self.directory / str(step)} could not be restored "
                           f"({type(e).__name__}: {first[:300]})")

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict[str, Any], int]:
    """Restores onto the shardings carried by `abstract_state` (ShapeDtypeStructs).

    Returns (state, data_state, step). The target mesh may differ from the one saved.
    """
    step = self._existing(step)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                        data=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for bad files
      raise self._restore_error(step, e) from None
    _check_shapes(abstract_state, restored["state"], self.directory / str(step))
    return restored["state"], dict(restored["data"] or {}), step

  def restore_params(self, step: int | None, abstract_params: Any
                     ) -> tuple[Any, dict[str, Any], int]:
    """Restores only the train state's params (and the data state), whatever optimiser state
    the checkpoint holds: for evaluation, export, and a step-0 checkpoint (see
    `holds_optimizer_history`). Returns (params, data_state, step)."""
    step = self._existing(step)
    target = {"params": abstract_params}
    # The manager's handler restores whole trees only; a plain PyTree handler reads the same
    # files and can leave out the optimiser state.
    reader = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    try:
      params = reader.restore(
          self.directory / str(step) / "state",
          args=ocp.args.PyTreeRestore(
              item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
              partial_restore=True))["params"]
      data = self._manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for bad files
      raise self._restore_error(step, e) from None
    finally:
      reader.close()
    _check_shapes(abstract_params, params, self.directory / str(step))
    return params, dict(data["data"] or {}), step

  def optimizer_layout(self, step: int) -> dict[tuple[str, ...], tuple[int, ...] | None]:
    """The saved optimiser state's `layout` (read from the checkpoint's metadata only)."""
    reader = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:
      tree = reader.metadata(self.directory / str(step) / "state").item_metadata.tree
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for bad files
      raise self._restore_error(step, e) from None
    finally:
      reader.close()
    return _flat_shapes(tree.get("opt_state"))

  def saved_params(self, step: int) -> Any:
    """The checkpoint's params tree as saved (metadata leaves; nothing is read)."""
    reader = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:
      tree = reader.metadata(self.directory / str(step) / "state").item_metadata.tree
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for bad files
      raise self._restore_error(step, e) from None
    finally:
      reader.close()
    return tree.get("params") or {}

  def wait(self) -> None:
    try:
      self._manager.wait_until_finished()
    except OSError as e:
      raise self._save_error(getattr(self, "_last_started", -1), e) from None

  def close(self) -> None:
    self._manager.close()


def _check_shapes(expected: Any, got: Any, where: Any) -> None:
  flat_e = jax.tree_util.tree_flatten_with_path(expected)[0]
  flat_g = jax.tree_util.tree_leaves(got)
  for (path, e), g in zip(flat_e, flat_g):
    if tuple(e.shape) != tuple(g.shape):
      name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
      raise CheckpointError(f"checkpoint {where}: {name} has shape {tuple(g.shape)}, the model "
                            f"expects {tuple(e.shape)}")


def holds_optimizer_history(step: int) -> bool:
  """False for a step-0 checkpoint: training saves only after a step, so step 0 is written by
  `pretrain import`, and its optimiser state is a fresh init that any optimiser may replace."""
  return step > 0


def optimizer_layout(opt_state: Any) -> dict[tuple[str, ...], tuple[int, ...] | None]:
  """{path: shape} of an (abstract) optimiser state as orbax saves it; two optimiser states
  can be restored into each other exactly when their layouts are equal."""
  return _flat_shapes(ocp.tree.serialize_tree(opt_state, keep_empty_nodes=True))


def _flat_shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...] | None]:
  # Shapes only: a restore casts dtypes, so another dtype is no structural change.
  flat = ocp.tree.to_flat_dict(tree, keep_empty_nodes=True) if tree is not None else {}
  return {tuple(str(k) for k in path): (tuple(v.shape) if hasattr(v, "shape") else None)
          for path, v in flat.items()}


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def lora_base_dir(workdir: str) -> str:
  """A LoRA run's frozen base weights, saved once when the run starts (its step checkpoints
  hold only the adapters and their optimiser state)."""
  return os.path.join(workdir, "lora_base")


def restore_lora_base(workdir: str, abstract_frozen: Any) -> Any:
  """The frozen base weights a LoRA run saved in lora_base/ (onto `abstract_frozen`)."""
  base = Checkpointer(lora_base_dir(workdir), read_only=True)
  try:
    if base.latest_step() is None:
      raise CheckpointError(
          f"{lora_base_dir(workdir)} holds no base weights: the LoRA run's checkpoints hold "
          "only its adapters and cannot be restored without them")
    params, _, _ = base.restore_params(None, abstract_frozen)
  finally:
    base.close()
  return params
