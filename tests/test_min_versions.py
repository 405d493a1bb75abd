"""The declared minimum versions, installed together in a fresh virtualenv, train and resume.

setup.py's lower bounds are only true if something installed exactly them: this test reads
INSTALL_REQUIRES from setup.py (with ast, so the bounds and the pins cannot drift), writes a
constraints file pinning every package to its lower bound, pip-installs a copy of the sources
with it into a virtualenv under tmp_path, and runs a short `pretrain train` (bert_tiny, 2 steps
on a data=2 x fsdp=2 x tensor=2 mesh of 8 CPU devices, a checkpoint, then a resume to step 4).

Slow (a few minutes: pip downloads jax, jaxlib, tensorflow-datasets, ... from PyPI) and needs
the package index, so it is deselected by default; run it with
  python -m pytest -q -m slow tests/test_min_versions.py
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["setup.py", "pyproject.toml", "README.md", "t5x_like", "data_pipelines", "pretrain"]


def setup_py_requirements() -> tuple[str, list[str]]:
  """python_requires and INSTALL_REQUIRES of setup.py, read without running it."""
  tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
  install = python = None
  for node in ast.walk(tree):
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "INSTALL_REQUIRES" for t in node.targets):
      install = ast.literal_eval(node.value)
    if isinstance(node, ast.keyword) and node.arg == "python_requires":
      python = ast.literal_eval(node.value)
  assert install and python, "setup.py must define INSTALL_REQUIRES and python_requires"
  return python, install


REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)(\[[a-z,]+\])?>=([0-9][0-9a-z.]*)$")


def minimum_pins(requirements: list[str]) -> dict[str, str]:
  """{"jax": "0.7.1", ...}: every requirement must be `name[extras]>=version`."""
  pins = {}
  for req in requirements:
    match = REQUIREMENT.match(req)
    assert match, f"setup.py requirement {req!r} has no plain lower bound (name>=version)"
    pins[match.group(1)] = match.group(3)
  return pins


def normalize(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def test_every_requirement_has_a_lower_bound():
  python, requirements = setup_py_requirements()
  assert python == ">=3.11"  # jax >= 0.7 needs it
  pins = minimum_pins(requirements)
  assert pins["jax"] == "0.7.1"  # jax.set_mesh


def test_tpu_constraints_satisfy_the_lower_bounds():
  """tpu_scripts/constraints.txt (what the TPU workers install) pins every requirement of
  setup.py at or above its lower bound."""
  _, requirements = setup_py_requirements()
  pinned = {}
  for line in (REPO / "tpu_scripts" / "constraints.txt").read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
      name, _, version = line.partition("==")
      assert version, f"constraints.txt: {line!r} is not an exact pin"
      pinned[normalize(name)] = version

  def key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v))

  for name, low in minimum_pins(requirements).items():
    assert normalize(name) in pinned, f"constraints.txt does not pin {name}"
    assert key(pinned[normalize(name)]) >= key(low), (name, pinned[normalize(name)], low)
  assert "libtpu" in pinned and "jaxlib" in pinned and pinned["jaxlib"] == pinned["jax"]


def culprit(output: str) -> str:
  """The installed package the last traceback frame belongs to, if any."""
  frames = re.findall(r"site-packages/([A-Za-z0-9_]+)/", output)
  return frames[-1] if frames else "unknown (see the output)"


@pytest.mark.slow
def test_minimum_versions_install_and_train(tmp_path):
  python, requirements = setup_py_requirements()
  low = tuple(int(x) for x in python.removeprefix(">=").split("."))
  if sys.version_info[:2] < low:
    pytest.skip(f"needs Python {python} to build the virtualenv")
  pins = minimum_pins(requirements)
  constraints = tmp_path / "constraints.txt"
  constraints.write_text("".join(f"{name}=={v}\n" for name, v in pins.items()))

  # A copy of the sources: pip's build writes into the source tree, and nothing left in the
  # clone (build/, *.egg-info, runs/) may change what is installed.
  src = tmp_path / "src"
  ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
  for name in SOURCES:
    if (REPO / name).is_dir():
      shutil.copytree(REPO / name, src / name, ignore=ignore)
    else:
      src.mkdir(exist_ok=True)
      shutil.copy2(REPO / name, src / name)

  env_dir = tmp_path / "venv"
  venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
  py = str(env_dir / "bin" / "python")
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("PYTHON", "PIP_CONSTRAINT", "JAX_COMPILATION", "JAX_PERSISTENT"))}
  install = subprocess.run(
      [py, "-m", "pip", "install", "--quiet", "--no-input", "-c", str(constraints), str(src)],
      env=env, capture_output=True, text=True, timeout=900, check=False)
  assert install.returncode == 0, (
      "pip could not install the declared minimum versions together (the conflict pip names "
      f"is the package to raise in setup.py):\n{install.stdout[-3000:]}{install.stderr[-3000:]}")

  listed = subprocess.run([py, "-m", "pip", "list", "--format=json"], env=env,
                          capture_output=True, text=True, check=True)
  installed = {normalize(p["name"]): p["version"] for p in json.loads(listed.stdout)}
  wrong = {n: (v, installed.get(normalize(n))) for n, v in pins.items()
           if installed.get(normalize(n)) != v}
  assert not wrong, f"installed versions differ from the pins (pinned, installed): {wrong}"

  # Every module imports in turn in one interpreter, so a failure names its package.
  modules = ["jax", "flax.linen", "optax", "orbax.checkpoint", "grain", "array_record.python",
             "sentencepiece", "tokenizers", "numpy", "yaml", "tqdm", "tensorboardX",
             "matplotlib", "etils.epath", "safetensors.numpy", "google.protobuf",
             "tensorflow_datasets"]
  check = ("import importlib, sys, traceback\n"
           f"for name in {modules!r}:\n"
           "  try:\n"
           "    importlib.import_module(name)\n"
           "  except Exception:\n"
           "    print(name); traceback.print_exc(); sys.exit(1)\n")
  r = subprocess.run([py, "-c", check], env=env, capture_output=True, text=True, timeout=600,
                     check=False)
  assert r.returncode == 0, (
      f"import {r.stdout.strip()} failed at the minimum versions:\n{r.stderr[-3000:]}")

  workdir = tmp_path / "run"
  # Its own compilation cache (the outer run's holds another jax's executables): the resume
  # then loads the step the first run compiled, as the resume tests do.
  env = {**env, "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(tmp_path / "cache"),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
  common = ["train.eval_every=2", "train.eval_steps=1", "train.log_every=1",
            "checkpoint.every=2", "train.batch_size=8", "mesh.data=2", "mesh.fsdp=2",
            "mesh.tensor=2"]
  pretrain = str(env_dir / "bin" / "pretrain")
  outputs = []
  for steps in (2, 4):
    r = subprocess.run([pretrain, "train", "--config", "bert_tiny", "--workdir", str(workdir),
                        f"train.steps={steps}", *common], env=env, capture_output=True,
                       text=True, timeout=600, check=False, cwd=tmp_path)
    assert r.returncode == 0, (
        f"training to step {steps} failed at the minimum versions; the traceback ends in "
        f"package {culprit(r.stderr)}:\n{r.stderr[-4000:]}")
    outputs.append(r)
  assert "resumed from" in outputs[1].stderr
  summary = json.loads(outputs[1].stdout.strip().splitlines()[-1])
  assert summary["step"] == 4 and (workdir / "export" / "config.json").exists()
  assert (workdir / "DONE").exists()
