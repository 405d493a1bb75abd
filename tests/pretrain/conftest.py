"""Fixtures for the `pretrain` command-line tests: a small corpus, a shared data cache, the
overrides of a tiny BERT, and one tiny trained run shared by the whole session."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import pytest

from pretrain import cli

_EN_SUBJECTS = ["The committee", "My neighbour", "A young engineer", "The old library",
                "Our small team", "The river ferry", "Every student", "The city council",
                "A quiet musician", "The morning train"]
_EN_VERBS = ["opened", "described", "repaired", "visited", "published", "painted",
             "measured", "discussed", "cleaned", "photographed"]
_EN_OBJECTS = ["the wooden bridge", "a long report", "the new museum", "an empty garden",
               "the harbour lights", "a detailed map", "the broken clock", "the village school",
               "a set of old letters", "the mountain road"]
_EN_TAILS = ["before the rain started", "after a long discussion", "on a cold Tuesday",
             "with great care", "in the late afternoon", "for the second time this year",
             "without any help", "during the summer festival"]
_KO_SUBJECTS = ["우리 가족은", "그 학생은", "시청 직원들이", "작은 서점 주인이", "나의 친구는",
                "마을 사람들이", "젊은 요리사가", "도서관 사서가"]
_KO_OBJECTS = ["오래된 다리를", "새 박물관을", "긴 보고서를", "조용한 공원을", "지도를",
               "편지 몇 통을", "학교 운동장을", "산길을"]
_KO_VERBS = ["방문했습니다.", "청소했습니다.", "설명했습니다.", "사진으로 남겼습니다.",
             "고쳤습니다.", "소개했습니다."]
_KO_TIMES = ["비 오는 아침에", "지난 주말에", "늦은 오후에", "축제 기간 동안", "겨울 방학에"]

NUM_DOCUMENTS = 300
CORPUS_NAME = "corpus.jsonl"


def _sentence(rng: np.random.Generator, korean: bool) -> str:
  if korean:
    return (f"{rng.choice(_KO_TIMES)} {rng.choice(_KO_SUBJECTS)} {rng.choice(_KO_OBJECTS)} "
            f"{rng.choice(_KO_VERBS)}")
  return (f"{rng.choice(_EN_SUBJECTS)} {rng.choice(_EN_VERBS)} {rng.choice(_EN_OBJECTS)} "
          f"{rng.choice(_EN_TAILS)}.")


def corpus_documents(num_docs: int = NUM_DOCUMENTS, seed: int = 0,
                     korean_every: int = 3) -> list[str]:
  """Deterministic documents of 2-5 template sentences; every `korean_every`-th is Korean.

  `korean_every=0` gives English only.
  """
  rng = np.random.default_rng(seed)
  docs = []
  for i in range(num_docs):
    korean = bool(korean_every) and i % korean_every == korean_every - 1
    docs.append(" ".join(_sentence(rng, korean) for _ in range(rng.integers(2, 6))))
  return docs


def write_jsonl(path: str, documents: Sequence[str]) -> str:
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps({"text": doc}, ensure_ascii=False) + "\n" for doc in documents)
  return path


def tiny_overrides(corpus: str, cache_dir: str, **extra: object) -> list[str]:
  """`key=value` overrides that shrink the bert_tiny preset to a few-second run."""
  values: dict[str, object] = {
      "model.hidden_size": 32, "model.num_heads": 2, "model.intermediate_size": 64,
      "model.num_layers": 1, "model.max_position_embeddings": 32, "data.seq_len": 32,
      "train.batch_size": 8, "train.steps": 6, "train.eval_every": 3, "train.eval_steps": 2,
      "train.log_every": 2, "checkpoint.every": 3, "train.export_at_end": "false",
      "data.corpus": corpus, "data.cache_dir": cache_dir}
  values.update(extra)
  return [f"{k}={v}" for k, v in values.items()]


def snapshot(root: str) -> dict[str, bytes | None]:
  """Every path under `root` -> its bytes (None for directories), to prove nothing changed."""
  out: dict[str, bytes | None] = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for d in dirnames:
      out[os.path.relpath(os.path.join(dirpath, d), root)] = None
    for f in filenames:
      path = os.path.join(dirpath, f)
      with open(path, "rb") as fh:
        out[os.path.relpath(path, root)] = fh.read()
  return out


def run_cli(capsys: pytest.CaptureFixture[str], argv: Sequence[str]) -> tuple[int, str, str]:
  """Runs `pretrain ARGV` in this process; returns (exit code, stdout, stderr).

  Log records of WARNING and above go to stderr as in the console script (whose
  `logging.basicConfig` is a no-op under pytest, which owns the root logger's handlers).
  """
  capsys.readouterr()  # drop whatever earlier code printed
  handler = logging.StreamHandler(sys.stderr)  # capsys's stream while the test runs
  handler.setLevel(logging.WARNING)
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    code = cli.main(list(argv))
  finally:
    root.removeHandler(handler)
  out, err = capsys.readouterr()
  return code, out, err


def run_console_script(argv: Sequence[str], cwd: str) -> subprocess.CompletedProcess[str]:
  """Runs the installed `pretrain` console script (the real exit code and stderr)."""
  script = os.path.join(os.path.dirname(sys.executable), "pretrain")
  command = [script] if os.path.exists(script) else ["pretrain"]
  return subprocess.run(command + list(argv), cwd=cwd, capture_output=True, text=True,
                        timeout=120, env=dict(os.environ), check=False)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  return str(tmp_path_factory.mktemp("pretrain_cli"))


@pytest.fixture(scope="session")
def corpus(session_dir: str) -> str:
  """~300 English and Korean documents as JSON lines."""
  return write_jsonl(os.path.join(session_dir, CORPUS_NAME), corpus_documents())


@pytest.fixture(scope="session")
def cache_dir(session_dir: str) -> str:
  path = os.path.join(session_dir, "cache")
  os.makedirs(path, exist_ok=True)
  return path


@pytest.fixture(scope="session")
def trained_workdir(session_dir: str, corpus: str, cache_dir: str) -> str:
  """A tiny run trained for 6 steps, checkpoints at steps 3 and 6, evals at 3 and 6.

  It is started with a relative --workdir, as people type it (orbax needs absolute paths).
  """
  workdir = os.path.join(session_dir, "run")
  cwd = os.getcwd()
  os.chdir(session_dir)
  try:
    code = cli.main(["train", "--config", "bert_tiny", "--workdir", "run",
                     *tiny_overrides(corpus, cache_dir)])
  finally:
    os.chdir(cwd)
  assert code == 0
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                 if d.isdigit())
  assert steps == [3, 6], steps
  return workdir
