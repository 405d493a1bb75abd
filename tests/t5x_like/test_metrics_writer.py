"""The run's metrics: metrics.jsonl and TensorBoard event files with the same scalars."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys

from tensorboardX.proto import event_pb2

SCRIPT = """
import sys
from t5x_like.training.metrics_writer import MetricsWriter
w = MetricsWriter(sys.argv[1])
w.write(10, "train", {"loss": 2.5, "accuracy": 0.25})
w.write(20, "eval", {"loss": 2.0})
w.close()
print("torch imported:", "torch" in sys.modules)
"""


def _scalars(logdir: str) -> dict[tuple[str, int], float]:
  """(tag, step) -> value from the TFRecord event files (length, crc, Event, crc)."""
  out = {}
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack_from("<Q", data, pos)
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        out[(v.tag, event.step)] = v.simple_value
  return out


def test_jsonl_and_tensorboard_get_the_same_scalars_without_importing_torch(tmp_path):
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  # tensorboardX would import torch (seconds of start-up) just to accept torch tensors.
  assert "torch imported: False" in proc.stdout
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  assert [(r["step"], r["split"], r["loss"]) for r in records] == [(10, "train", 2.5),
                                                                   (20, "eval", 2.0)]
  assert _scalars(str(tmp_path / "tensorboard")) == {
      ("train/loss", 10): 2.5, ("train/accuracy", 10): 0.25, ("eval/loss", 20): 2.0}
