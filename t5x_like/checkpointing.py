"""Orbax checkpoints: train state + data-iterator position, async, keep-N, any-mesh restore.

Orbax writes each step into a temporary directory and renames it when complete, so an
interrupted save never becomes the "latest" checkpoint; `latest_step` only sees finished ones.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from data_pipelines import storage


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

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict[str, Any], int]:
    """Restores onto the shardings carried by `abstract_state` (ShapeDtypeStructs).

    Returns (state, data_state, step). The target mesh may differ from the one saved.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise CheckpointError(f"no complete checkpoint in {self.directory}")
    elif step not in self.all_steps():
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; "
                            f"available: {self.all_steps() or 'none'}")
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                        data=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for bad files
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      first = first.split(" See full TensorStore details")[0]
      raise CheckpointError(f"checkpoint {self.directory / str(step)} could not be restored "
                            f"({type(e).__name__}: {first[:300]})") from None
    _check_shapes(abstract_state, restored["state"], self.directory / str(step))
    return restored["state"], dict(restored["data"] or {}), step

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


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")
