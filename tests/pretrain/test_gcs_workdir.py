"""`pretrain train` with the workdir, the corpus and the data cache on gs://, against a local
GCS emulator (tests/gcs_emulator.py): the same code as on Cloud Storage (gcsfs for our files,
tensorstore's GCS driver for orbax's arrays), only the endpoint differs.

A second run on a "new machine" (an empty local cache) resumes from the bucket's checkpoint,
reads the prepared ArrayRecord shards from the bucket instead of preparing them again, and
continues the bucket's metrics history. Without credentials a gs:// path is one message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import gcs_emulator
from tests.conftest import xla_flags
from tests.pretrain.conftest import tiny_overrides

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def _run(args: list[str], env: dict[str, str], cwd: str | None = None,
         ) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "pretrain.cli", *args], env=env, cwd=cwd,
                        capture_output=True, text=True, timeout=300, check=False)


def _env(tmp: str, machine: str, url: str | None) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("STORAGE_EMULATOR", "TENSORSTORE_GCS", "GOOGLE_"))}
  env["XLA_FLAGS"] = xla_flags(1)
  env["XDG_CACHE_HOME"] = os.path.join(tmp, machine)  # each "machine" has its own local disk
  if url is not None:
    env.update(gcs_emulator.environment(url))
  return env


def test_train_resume_and_export_with_everything_on_gs(tmp_path, corpus):
  import fsspec  # the test reads the bucket itself through gcsfs too

  with gcs_emulator.running("bucket") as url, gcs_emulator.in_this_process(url):
    env_a = _env(str(tmp_path), "vm-a", url)
    fs = fsspec.filesystem("gcs", token="anon", skip_instance_cache=True)
    fs.put_file(corpus, "gs://bucket/corpus/docs.jsonl")
    run = ["train", "--config", "bert_tiny", "--workdir", "gs://bucket/runs/tiny",
           *tiny_overrides("gs://bucket/corpus", "gs://bucket/cache",
                           **{"train.steps": 4, "checkpoint.every": 2, "train.eval_every": 2,
                              "train.export_at_end": "true"})]
    # An empty working directory of its own: what the run leaves there is checked below,
    # whatever the clone's working directory holds (README command 1 writes runs/ there).
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    first = _run(run, env_a, cwd=str(cwd))
    assert first.returncode == 0, first.stderr[-3000:]

    listing = sorted(fs.find("bucket/runs/tiny"))
    assert "bucket/runs/tiny/config.yaml" in listing
    assert "bucket/runs/tiny/export/config.json" in listing
    assert "bucket/runs/tiny/export/model.safetensors" in listing
    for step in (2, 4):  # orbax's GCS commit marker: the step is complete
      assert f"bucket/runs/tiny/checkpoints/{step}/commit_success.txt" in listing
    metrics = [json.loads(line) for line in fs.cat("bucket/runs/tiny/metrics.jsonl").decode()
               .splitlines()]
    assert [m["step"] for m in metrics if m["split"] == "train"] == [2, 4]
    prepared = sorted({p.split("/")[2] for p in fs.find("bucket/cache")})
    assert len(prepared) == 1 and any(p.endswith("manifest.json") for p in
                                      fs.find(f"bucket/cache/{prepared[0]}"))
    # Nothing of the run was written to the local working directory or beside the corpus.
    assert not os.listdir(cwd)

    # "Another VM": an empty local disk, four more steps.
    env_b = _env(str(tmp_path), "vm-b", url)
    run[run.index("train.steps=4")] = "train.steps=8"
    second = _run(run, env_b)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from gs://bucket/runs/tiny/checkpoints/4" in second.stderr
    # The shards came from the bucket: still one preparation there, a copy on vm-b's disk.
    assert sorted({p.split("/")[2] for p in fs.find("bucket/cache")}) == prepared
    local = os.path.join(str(tmp_path), "vm-b", "t5x_like", "data", "gs", "bucket", "cache",
                         prepared[0])
    assert any(name.endswith(".array_record") for name in os.listdir(local)), \
        os.listdir(local)
    metrics = [json.loads(line) for line in fs.cat("bucket/runs/tiny/metrics.jsonl").decode()
               .splitlines()]
    assert [m["step"] for m in metrics if m["split"] == "train"] == [2, 4, 6, 8]
    assert json.loads(second.stdout.strip().splitlines()[-1])["export"] == \
        "gs://bucket/runs/tiny/export"

    # The library reads a gs:// run directory as it reads a local one.
    from t5x_like import load_pretrained
    model = load_pretrained("gs://bucket/runs/tiny")
    assert model.step == 8
    ids = np.array([[2, 10, 11, 12, 3]], np.int32)
    assert np.all(np.isfinite(model.logits({"input_ids": ids})))


def test_gs_path_without_credentials_is_one_message(tmp_path, corpus):
  env = _env(str(tmp_path), "vm", None)
  env["HOME"] = str(tmp_path)  # no gcloud application-default credentials file
  env["NO_GCE_CHECK"] = "true"  # not on Google Cloud: no metadata server to ask
  env.pop("CLOUDSDK_CONFIG", None)
  done = _run(["train", "--config", "bert_tiny", "--workdir", "gs://some-bucket/run",
               *tiny_overrides(corpus, str(tmp_path / "cache"))], env)
  assert done.returncode == 2, done.stderr[-2000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("error: gs://some-bucket: no Google Cloud credentials found"), last
  assert "gcloud auth application-default login" in last
  assert not os.listdir(tmp_path / "vm") if os.path.exists(tmp_path / "vm") else True
