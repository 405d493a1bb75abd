"""The MLM task's `dropped_predictions`: what the device could not gather plus what the
objective already cut to fit the static prediction count (issue 17)."""

from __future__ import annotations

import jax
import numpy as np

from t5x_like.training import tasks
from tests.t5x_like.conftest import mlm_batches


def test_objective_cuts_reach_the_dropped_predictions_metric(tiny):
  """The train step's `dropped_predictions` = device drops + the batch's objective cuts."""
  config = tiny(objective={"max_predictions": 2})
  batch = mlm_batches(config, 1)[0]
  task = tasks.make_task(config)
  assert "dropped_by_objective" in task.features
  params = task.init(jax.random.key(0))["params"]
  # The objective clipped each row to 2 selections and says how many it cut.
  assert np.all((batch["labels"] != -100).sum(axis=1) <= 2)
  cut = int(batch["dropped_by_objective"].sum())
  assert cut > 0
  _, aux = task.loss(params, batch, None, deterministic=True)
  assert int(aux["dropped"]) == cut
  # Labels the device cannot gather (more than P per row) are counted too.
  extra = dict(batch, labels=np.where(batch["input_ids"] > 0, batch["input_ids"], -100),
               dropped_by_objective=np.zeros_like(batch["dropped_by_objective"]))
  _, aux = task.loss(params, extra, None, deterministic=True)
  selected = int((extra["labels"] != -100).sum())
  assert int(aux["dropped"]) == selected - 2 * len(batch["labels"])
