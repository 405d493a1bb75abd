"""Running one suite as a child process, and what is kept about the run.

Per suite: the child's JSON report, its wall time, its peak resident memory (`ru_maxrss` from
`os.wait4`), the CPU other processes and other guests (steal) used meanwhile, the exact
command and the UTC time; `machine_facts` reads the package versions and CPU once, here.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.suites import Suite

REPO = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
  """This environment minus forced virtual CPU devices (each benchmark uses one device)."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  else:
    env.pop("XLA_FLAGS", None)
  return env


def cpu_s() -> tuple[float, float] | None:
  """(CPU seconds all of this machine's processes have used since boot, seconds stolen by
  the hypervisor) from /proc/stat; None off Linux."""
  try:
    with open("/proc/stat", encoding="ascii") as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  # user nice system idle iowait irq softirq steal ...: busy = user..softirq minus idle/iowait.
  tick = os.sysconf("SC_CLK_TCK")
  return (sum(fields[:7]) - fields[3] - fields[4]) / tick, fields[7] / tick


def run_suite(suite: Suite, quick: bool, workdir: Path) -> dict[str, Any]:
  """Runs one suite as a child process; returns its entry (report, wall s, peak RSS, ...)."""
  json_path = workdir / f"{suite.name}.json"
  args = suite.quick_args if quick else suite.args
  argv = [sys.executable, "-m", f"benchmarks.{suite.module}", *args, "--json", str(json_path)]
  shown = " ".join(["python", "-m", f"benchmarks.{suite.module}", *args])
  started = datetime.datetime.now(datetime.UTC)
  print(f"\n=== {suite.name}: {shown}", flush=True)
  cpu0, t0 = cpu_s(), time.perf_counter()
  proc = subprocess.Popen(argv, cwd=REPO, env=child_env())
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = code = os.waitstatus_to_exitcode(status)
  wall, cpu1 = time.perf_counter() - t0, cpu_s()
  # How busy the machine was with anything but this benchmark (the noise indicator), and how
  # much CPU the hypervisor gave to other guests (steal), per second of the suite.
  others = steal = None
  if cpu0 is not None and cpu1 is not None:
    others = max(0.0, (cpu1[0] - cpu0[0] - usage.ru_utime - usage.ru_stime) / wall)
    steal = (cpu1[1] - cpu0[1]) / wall
  entry = {"suite": suite.name, "command": shown, "quick": quick, "exit_code": code,
           "utc": started.strftime("%Y-%m-%d %H:%M"), "wall_s": wall,
           "child_cpu_s": usage.ru_utime + usage.ru_stime, "other_cpu_cores": others,
           "steal_cores": steal, "peak_rss_mb": usage.ru_maxrss / 1024}
  if code == 0:
    try:
      entry["report"] = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
      entry["exit_code"] = -1
      entry["error"] = f"no readable JSON report at {json_path}: {e}"
  else:
    entry["error"] = f"exit code {code}"
  return entry


def machine_facts() -> dict[str, Any]:
  """Versions and CPU of this machine (read here, not in the children)."""
  import importlib.metadata as md

  def version(name: str) -> str:
    try:
      return md.version(name)
    except md.PackageNotFoundError:
      return "not installed"

  model = platform.processor() or platform.machine()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
          **{p: version(p) for p in ("jax", "flax", "optax", "numpy", "torch", "transformers")}}
