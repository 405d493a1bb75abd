"""Multi-process start-up: one `pretrain` process per host joins one JAX job.

Called by the CLI before anything asks JAX for devices. Two ways in:

- explicit (any platform, also several processes on one CPU machine):
  `JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i` (the first name is
  the one `jax.distributed.initialize` reads itself; the other two are passed to it). On CPU
  the processes talk through gloo collectives.
- `PRETRAIN_DISTRIBUTED=auto` (set by `tpu_scripts/launch.sh` on every worker of a TPU VM):
  `jax.distributed.initialize()` with no arguments, which finds the coordinator, the process
  count and this worker's id from the Cloud TPU environment.

Without either, nothing happens: a single process, as on a laptop or a one-host TPU VM.
After initialisation every process sees the global devices; the data pipeline reads only this
process's rows (`jax.process_index()` of `jax.process_count()`), the loop assembles global
batches from them, and only process 0 logs, writes metrics and exports.
"""

from __future__ import annotations

import os

import jax

from t5x_like.config import ConfigError

_ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
_ENV_COUNT = "JAX_NUM_PROCESSES"
_ENV_ID = "JAX_PROCESS_ID"
_ENV_AUTO = "PRETRAIN_DISTRIBUTED"


def _int_env(name: str) -> int:
  value = os.environ.get(name)
  if value is None:
    raise ConfigError(f"{_ENV_COORDINATOR} is set, so {name} must be set too (the number of "
                      f"processes and this process's id in 0..N-1)")
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def initialize_from_env() -> bool:
  """Joins the multi-process job the environment describes; returns whether it did."""
  if jax.distributed.is_initialized():
    return True
  coordinator = os.environ.get(_ENV_COORDINATOR)
  mode = os.environ.get(_ENV_AUTO, "")
  if mode not in ("", "auto", "off"):
    raise ConfigError(f"{_ENV_AUTO} must be 'auto' or 'off', got {mode!r}")
  if coordinator:
    count, index = _int_env(_ENV_COUNT), _int_env(_ENV_ID)
    if count < 1 or not 0 <= index < count:
      raise ConfigError(f"{_ENV_ID} ({index}) must be in [0, {_ENV_COUNT}) = [0, {count})")
    if jax.config.jax_platforms in (None, "", "cpu") and count > 1:
      # Cross-process collectives on CPU (tests, CPU clusters); TPUs and GPUs bring their own.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=count, process_id=index)
    return True
  if mode == "auto":
    jax.distributed.initialize()
    return True
  return False


def is_main_process() -> bool:
  """Process 0 speaks for the job: it logs, writes metrics, takes the workdir lock, exports."""
  return jax.process_index() == 0
