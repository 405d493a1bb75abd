"""A corrupt checkpoint is refused with an error line naming it, exit code 2, files untouched."""

from __future__ import annotations

import glob
import os
import shutil

from tests.pretrain.conftest import run_console_script, snapshot


def test_corrupt_checkpoint_is_named(trained_workdir, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_workdir, workdir)
  chunks = glob.glob(os.path.join(workdir, "checkpoints", "6", "state", "**", "d", "*"),
                     recursive=True)
  assert chunks
  for path in chunks:
    with open(path, "r+b") as f:
      f.write(b"\x00garbage" * 8)
  before = snapshot(workdir)
  done = run_console_script(["eval", "--workdir", workdir], cwd=str(tmp_path))
  assert done.returncode == 2
  errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1
  assert f"checkpoint {workdir}/checkpoints/6 could not be restored" in errors[0]
  assert done.stdout == ""
  assert snapshot(workdir) == before
