"""Test set-up: 8 fake CPU devices, forced before JAX is imported anywhere.

A test run also gets one JAX persistent compilation cache in a fresh temporary directory,
shared by its xdist workers and the `pretrain` subprocesses they start: the resume, fault and
preemption tests start the same command two or three times, many files train the same tiny
model, and each start would otherwise spend most of its time compiling the same train step
again. The cache changes no result (a hit is the same executable), it is never shared between
test runs, and it is removed when the run ends.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's backend (LLVM) optimisation level 0 for everything the tests compile: their models
# are tiny, so nearly all of a test's time is compilation (80% over tests/t5x_like, measured
# with jax_log_compiles), and level 0 compiles them 1.5-2.5x faster. Floating point stays IEEE
# at either level (XLA enables no fast-math on CPU by default); users' runs keep the default.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a `pretrain` subprocess with `devices` CPU devices, as the tests compile."""
  return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags(8)}".strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One per test run: the controller makes it and its xdist workers inherit it through the
# environment (two workers often compile the same tiny train step), as do the `pretrain`
# subprocesses. A size limit turns on JAX's file lock around every read and write, so two
# processes never read an entry half written.
_cache = os.environ.get("PRETRAIN_TESTS_JAX_CACHE", "")
if not _cache:
  _cache = tempfile.mkdtemp(prefix="pretrain-tests-jax-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["PRETRAIN_TESTS_JAX_CACHE"] = _cache
os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(16 << 30)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


# Tests marked `beam` need apache-beam, which cannot share this environment (it caps protobuf
# below what sentencepiece needs: setup.py's `beam` extra). tests/test_beam_env.py runs them in
# a virtualenv of their own, setting this variable; everywhere else they are deselected.
BEAM_ENV = "PRETRAIN_TESTS_IN_BEAM_ENV"


def pytest_collection_modifyitems(config, items):
  if os.environ.get(BEAM_ENV):
    return
  beam = [item for item in items if item.get_closest_marker("beam")]
  if beam:
    config.hook.pytest_deselected(items=beam)
    items[:] = [item for item in items if not item.get_closest_marker("beam")]
