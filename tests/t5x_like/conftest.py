"""Fixtures for t5x_like tests: a tiny BERT config and synthetic MLM batches."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.objectives import mlm
from data_pipelines.vocab import VocabInfo
from t5x_like import config as config_lib

TINY = {
    "model": {"vocab_size": 128, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
              "intermediate_size": 64, "max_position_embeddings": 32, "dropout_rate": 0.0,
              "attention_dropout_rate": 0.0},
    "data": {"seq_len": 32},
    "optim": {"learning_rate": 1e-3, "warmup_steps": 2},
    "train": {"batch_size": 8, "steps": 10, "seed": 0},
    "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
}


def tiny_config(**sections: dict) -> config_lib.Config:
  tree = {k: dict(v) for k, v in TINY.items()}
  for name, values in sections.items():
    tree.setdefault(name, {}).update(values)
  return config_lib.from_dict(tree)


def mlm_batches(config: config_lib.Config, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """n global batches produced by the real MLM objective on random blocks."""
  vocab = VocabInfo.synthetic(config.model.vocab_size)
  params = mlm.MLMParams(max_predictions=config.objective.predictions_per_row(config))
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(n):
    rows = []
    for _ in range(config.train.batch_size):
      block = rng.integers(6, config.model.vocab_size, config.data.seq_len - 2)
      rows.append(mlm.make_example(block, rng, params, vocab))
    batches.append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  return batches


@pytest.fixture
def tiny():
  return tiny_config
