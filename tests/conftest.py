"""Test set-up: 8 fake CPU devices, forced before JAX is imported anywhere.

Every test process (each xdist worker) also gets its own JAX persistent compilation cache in a
fresh temporary directory, inherited by the `pretrain` subprocesses it starts: the resume,
fault and preemption tests start the same command two or three times, and each start would
otherwise spend most of its time compiling the same train step again. The cache changes no
result (a hit is the same executable), it is never shared between test runs, and it is
removed when the process exits.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One per pytest process (an xdist worker does not reuse the controller's), so no two test
# processes write one cache at the same time.
_cache = tempfile.mkdtemp(prefix="pretrain-tests-jax-cache-")
atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
