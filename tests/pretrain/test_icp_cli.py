"""`pretrain data prepare` with data.order=icp: bad input is one `error:` line (exit 2) and no
prepared directory; a good corpus is prepared in the ICP order."""

from __future__ import annotations

import json
import os

import pytest

from tests.pretrain.conftest import run_cli, snapshot, tiny_overrides, write_jsonl
from tests.pretrain.test_cli_errors import EXIT_BAD_INPUT, assert_one_error

LLAMA_BLOCKS = ["data.pack_documents=false", "objective.add_bos=false", "data.order=icp"]


def prepare_argv(corpus: str, cache_dir: str, *extra: str) -> list[str]:
  return ["data", "prepare", "--config", "llama_tiny", *tiny_overrides(corpus, cache_dir),
          *LLAMA_BLOCKS, *extra]


@pytest.mark.parametrize("case, extra, needles", [
    ("one_document", [], ["has 1 document", "data.order=random"]),
    ("k_too_large", ["data.icp_k=400"], ["data.icp_k (400)", "number of documents"]),
    ("no_checkpoint", ["data.icp_embedding=/nonexistent/run"],
     ["data.icp_embedding", "/nonexistent/run", "not a run directory"]),
    ("packed", ["data.pack_documents=true"], ["data.order=icp needs data.pack_documents=false"]),
])
def test_bad_input_is_one_line(capsys, tmp_path, corpus, case, extra, needles):
  if case == "one_document":
    corpus = write_jsonl(str(tmp_path / "one.jsonl"), ["word " * 4000])
  cache = str(tmp_path / "cache")
  os.makedirs(cache)
  code, out, err = run_cli(capsys, prepare_argv(corpus, cache, *extra))
  assert code == EXIT_BAD_INPUT, err
  assert out == ""
  assert_one_error(err, *needles)
  assert snapshot(cache) == {}


def test_prepare_in_icp_order(capsys, tmp_path, corpus):
  cache = str(tmp_path / "cache")
  code, out, err = run_cli(capsys, prepare_argv(corpus, cache, "data.icp_k=5"))
  assert code == 0, err
  directory = json.loads(out)["directory"]
  assert "-icp-" in os.path.basename(directory)
  with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as f:
    order = json.load(f)["order"]
  assert order["k"] == 5 and order["report"]["train"]["num_paths"] >= 1


@pytest.mark.slow
def test_prepare_with_checkpoint_embeddings(capsys, tmp_path, corpus, trained_workdir):
  """data.icp_embedding=<a run of ours>: mean-pooled final states order the documents; the
  name of the checkpoint is in the manifest (and the cache key)."""
  cache = str(tmp_path / "cache")
  code, out, err = run_cli(capsys, prepare_argv(corpus, cache, "data.icp_k=5",
                                                f"data.icp_embedding={trained_workdir}"))
  assert code == 0, err
  with open(os.path.join(json.loads(out)["directory"], "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  assert manifest["order"]["embedding"] == f"checkpoint:{trained_workdir}"
  assert manifest["splits"]["train"]["num_duplicates"] == 0
