"""Sliding-window perplexity's windows (`pretrain eval --stride`): every token of the stream
but the first is scored exactly once, each with at least length - stride tokens of context
after the first window, as HF's "perplexity of fixed-length models" method."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.vocab import IGNORE_INDEX
from pretrain.evaluation import sliding_windows


@pytest.mark.parametrize("n,length,stride", [(100, 16, 8), (100, 16, 16), (100, 16, 1),
                                              (17, 16, 4), (10, 16, 5), (64, 8, 3)])
def test_each_target_once_with_enough_context(n, length, stride):
  stream = np.arange(1000, 1000 + n, dtype=np.int32)  # token value = 1000 + its index
  scored = []
  for inputs, labels in sliding_windows(stream, length, stride):
    assert len(inputs) == len(labels) <= length
    np.testing.assert_array_equal(labels[labels != IGNORE_INDEX] - 1,
                                  inputs[labels != IGNORE_INDEX])  # next-token targets
    begin = int(inputs[0]) - 1000
    for pos in np.flatnonzero(labels != IGNORE_INDEX):
      target = int(labels[pos]) - 1000
      scored.append(target)
      context = target - begin  # tokens of the window before the target
      assert context >= min(target, length - stride), (target, context)
  assert sorted(scored) == list(range(1, n))  # all but the first, each once
