"""A run's metrics: metrics.jsonl and TensorBoard event files, written by process 0 only."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from t5x_like.distributed import is_main_process


def _summary_writer(logdir: str) -> Any:
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX imports torch, when installed, only to accept torch tensors (2+ s of every
  run's start-up here); this loop logs Python floats, so torch is hidden while it imports.
  """
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter(logdir)


class MetricsWriter:
  """metrics.jsonl + TensorBoard event files, written by process 0 only."""

  def __init__(self, workdir: str):
    self.enabled = is_main_process()
    self._jsonl = None
    self._tb = None
    if self.enabled:
      # Kept open for the run's lifetime and closed in close().
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")  # noqa: SIM115
      self._tb = _summary_writer(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": step, "split": split, "time": time.time(), **values}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for key, value in values.items():
      self._tb.add_scalar(f"{split}/{key}", value, step)
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


__all__ = ["MetricsWriter"]
