"""Analytic model FLOPs per training step and the measured matmul peak, for MFU.

MFU = FLOPs the model actually needs / step time / measured matmul peak of this machine.
Only matmul FLOPs count (the usual convention): projections, FFN, attention scores and
context, and the output head at the positions that are actually scored. Backward = 2x forward.
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.config import Config, max_predictions


def encoder_forward_flops(batch: int, length: int, hidden: int, ffn: int, layers: int) -> float:
  """Matmul FLOPs of a Transformer encoder stack's forward pass."""
  per_token_layer = 2 * (4 * hidden * hidden + 2 * hidden * ffn)  # q,k,v,o + FFN in/out
  attention = 2 * 2 * length * hidden  # scores q.k and context p.v, per token per layer
  return float(batch * length * layers * (per_token_layer + attention))


def mlm_train_flops_per_step(config: Config) -> float:
  """Training FLOPs of one optimizer step of BERT MLM (gather-first head)."""
  m = config.model
  b, length = config.train.batch_size, config.data.seq_len
  forward = encoder_forward_flops(b, length, m.hidden_size, m.intermediate_size, m.num_layers)
  predicted = b * max_predictions(config)
  forward += predicted * 2 * (m.hidden_size * m.hidden_size + m.hidden_size * m.vocab_size)
  return 3.0 * forward


def train_flops_per_step(config: Config) -> float:
  if config.objective.name == "mlm":
    return mlm_train_flops_per_step(config)
  raise ValueError(f"no FLOP model for objective {config.objective.name!r}")


@functools.cache
def measured_matmul_peak(dtype: str = "float32", size: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of a large square matmul on all local devices' first device, median of repeats.

  Uses the first local device only and reports per-device peak; callers multiply by the
  number of devices that run the step.
  """
  dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  device = jax.local_devices()[0]
  # The training loop calls this inside its multi-device mesh context, where jit refuses
  # arguments committed to one device: run under a one-device mesh of our own.
  with jax.set_mesh(jax.sharding.Mesh(np.array([device]), ("x",))):
    a = jax.device_put(jnp.ones((size, size), dt), device)
    b = jax.device_put(jnp.ones((size, size), dt), device)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      matmul(a, b).block_until_ready()
      times.append(time.perf_counter() - start)
  return 2.0 * size ** 3 / statistics.median(times)
