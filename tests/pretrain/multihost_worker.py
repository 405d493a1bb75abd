"""One process of a multi-process `pretrain train` for tests/pretrain/test_multihost.py: runs the CLI and saves
the `input_ids` of every train batch this process read (RECORD_PATH, .npy)."""

from __future__ import annotations

import os
import sys

import numpy as np

from data_pipelines import pipeline
from pretrain import cli

_seen: list[np.ndarray] = []
_next = pipeline.BlockIterator.__next__


def _recording_next(self: pipeline.BlockIterator) -> dict[str, np.ndarray]:
  batch = _next(self)
  _seen.append(np.array(batch["input_ids"]))
  return batch


if __name__ == "__main__":
  pipeline.BlockIterator.__next__ = _recording_next
  code = cli.main(sys.argv[1:])
  np.save(os.environ["RECORD_PATH"], np.stack(_seen))
  sys.exit(code)
