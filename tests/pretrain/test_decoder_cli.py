"""The decoder-only line through the command line (issue 19): `pretrain train` with causal and
prefix LM on llama and mpt, `export` to transformers, greedy `generate` equal to HF's
`generate(do_sample=False)` token for token, `import` back with continued training, and
`generate`'s bad input as one error line each."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import transformers

from data_pipelines.tokenizer import load_tokenizer
from pretrain import cli
from t5x_like import config as config_lib
from t5x_like import families, generation
from t5x_like.pretrained import load_pretrained
from tests.pretrain.conftest import run_cli

pytestmark = pytest.mark.slow

PROMPT = "The interpreter reads the file and"
FAMILY_MODEL = {  # small shapes of each decoder preset
    "llama_tiny": {"model.hidden_size": 32, "model.num_heads": 4, "model.num_kv_heads": 2,
                   "model.intermediate_size": 64, "model.num_layers": 2},
    "mpt_tiny": {"model.hidden_size": 32, "model.num_heads": 4, "model.intermediate_size": 128,
                 "model.num_layers": 2},
}


def _overrides(preset: str, corpus: str, cache_dir: str, **extra: object) -> list[str]:
  values = {**FAMILY_MODEL[preset], "data.seq_len": 32, "train.batch_size": 8,
            "train.steps": 8, "train.eval_every": 8, "train.eval_steps": 2, "train.log_every": 4,
            "checkpoint.every": 8, "optim.warmup_steps": 2, "data.corpus": corpus,
            "data.cache_dir": cache_dir, **extra}
  return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus, cache_dir):
  """One short causal-LM run per decoder family, exported."""
  out = {}
  for preset in FAMILY_MODEL:
    workdir = str(tmp_path_factory.mktemp(preset) / "run")
    assert cli.main(["train", "--config", preset, "--workdir", workdir,
                     *_overrides(preset, corpus, cache_dir)]) == 0
    out[preset] = workdir
  return out


@pytest.mark.parametrize("preset", list(FAMILY_MODEL))
def test_greedy_generation_equals_transformers(runs, preset):
  workdir = runs[preset]
  export = os.path.join(workdir, "export")
  hf_tok = transformers.AutoTokenizer.from_pretrained(export)
  hf = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
  pretrained = load_pretrained(workdir)
  # our tokenizer + the run's BOS convention give the exported tokenizer's ids
  tokenizer = load_tokenizer(pretrained.config.data.tokenizer)
  ids = tokenizer.encode(PROMPT)
  if pretrained.config.objective.add_bos:
    ids = np.concatenate([[tokenizer.vocab_info().bos_id], ids])
  np.testing.assert_array_equal(ids, hf_tok(PROMPT)["input_ids"])
  new = 24
  ours = generation.generate(pretrained.model, pretrained.params, ids,
                             generation.SamplingParams(max_new_tokens=new),
                             tokenizer.vocab_info().eos_id)
  with torch.no_grad():
    theirs = hf.generate(torch.tensor(np.asarray([ids])), do_sample=False, max_new_tokens=new,
                         eos_token_id=tokenizer.vocab_info().eos_id,
                         pad_token_id=tokenizer.vocab_info().pad_id)[0, len(ids):].tolist()
  assert ours.tokens == theirs, (ours.tokens, theirs)
  assert len(ours.tokens) >= 2  # a real continuation, not an immediate EOS


@pytest.mark.parametrize("preset", list(FAMILY_MODEL))
def test_generate_cli_prints_text_and_speed_and_is_seeded(runs, preset, capsys):
  args = ["generate", "--workdir", runs[preset], "--prompt", PROMPT, "--max-new-tokens", "12",
          "--temperature", "0.9", "--top-k", "40", "--top-p", "0.95", "--seed", "7"]
  code, out1, err = run_cli(capsys, args)
  assert code == 0 and out1.strip(), err
  assert "tokens/s" in err.strip().splitlines()[-1]
  assert run_cli(capsys, args)[1] == out1  # same seed, same text
  others = {run_cli(capsys, args[:-1] + [str(s)])[1] for s in (1, 2, 3)}
  assert others != {out1}  # sampling depends on the seed


def test_generate_bad_input_is_one_error_line(runs, tmp_path, capsys):
  llama, mpt = runs["llama_tiny"], runs["mpt_tiny"]
  bad = tmp_path / "bad.txt"
  bad.write_bytes(b"caf\xe9 au lait")
  encoder = tmp_path / "encoder"
  encoder.mkdir()
  config_lib.save_config(config_lib.load_config("bert_tiny"), str(encoder / "config.yaml"))
  long_prompt = " ".join(["word"] * 200)
  cases = [
      (["--workdir", llama, "--prompt", "   "], "the prompt is empty"),
      (["--workdir", llama, "--prompt-file", str(bad)], "is not UTF-8 text (byte 3"),
      (["--workdir", llama, "--prompt-file", str(tmp_path / "nope.txt")], "does not exist"),
      (["--workdir", llama, "--prompt", "x", "--temperature", "-1"], "--temperature must be"),
      (["--workdir", llama, "--prompt", "x", "--top-p", "0"], "--top-p must be in (0, 1]"),
      (["--workdir", llama, "--prompt", "x", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
      (["--workdir", str(encoder), "--prompt", "x"], "generate needs a decoder-only model"),
  ]
  for argv, message in cases:
    code, _, err = run_cli(capsys, ["generate", *argv])
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and message in lines[-1], (argv, err)
  # a prompt beyond Llama's context (its max_position_embeddings, 2048 in the preset) is
  # refused; ALiBi (mpt) reads one longer than it was trained on
  config = config_lib.read_config(os.path.join(llama, "config.yaml"))
  assert families.get(config.model.family).context_length(config.model) == 2048
  code, _, err = run_cli(capsys, ["generate", "--workdir", llama, "--prompt",
                                  " ".join(["word"] * 1100) * 2, "--max-new-tokens", "2"])
  assert code == 2 and "more than the model's context of 2048" in err.strip().splitlines()[-1]
  code, _, err = run_cli(capsys, ["generate", "--workdir", mpt, "--prompt", long_prompt,
                                  "--max-new-tokens", "4"])
  assert code == 0 and "tokens/s" in err, err


def test_import_the_export_and_train_on(runs, tmp_path, corpus, cache_dir, capsys):
  """`pretrain import` of the exported llama folder resumes training with the same logits."""
  export = os.path.join(runs["llama_tiny"], "export")
  workdir = str(tmp_path / "imported")
  code, _, err = run_cli(capsys, ["import", "--from", export, "--workdir", workdir,
                                  f"data.corpus={corpus}", f"data.cache_dir={cache_dir}",
                                  "data.seq_len=32", "train.steps=10", "train.batch_size=8",
                                  "train.eval_every=10", "train.eval_steps=1",
                                  "checkpoint.every=10", "train.export_at_end=false"])
  assert code == 0, err
  original, imported = load_pretrained(runs["llama_tiny"]), load_pretrained(workdir)
  ids = np.arange(2 * 16, dtype=np.int32).reshape(2, 16) % 50 + 10
  np.testing.assert_allclose(imported.logits({"input_ids": ids}),
                             original.logits({"input_ids": ids}), atol=1e-5)
  code, _, err = run_cli(capsys, ["train", "--config", os.path.join(workdir, "config.yaml"),
                                  "--workdir", workdir])
  assert code == 0, err
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    steps = [r["step"] for r in map(json.loads, f) if r["split"] == "train"]
  assert steps and steps[-1] == 10


def test_prefix_lm_trains_through_the_cli(tmp_path, corpus, cache_dir, capsys):
  workdir = str(tmp_path / "prefix")
  code, _, err = run_cli(capsys, ["train", "--config", "mpt_tiny", "--workdir", workdir,
                                  "objective.name=prefix_lm", "train.export_at_end=false",
                                  *_overrides("mpt_tiny", corpus, cache_dir)])
  assert code == 0, err
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    train = [r for r in map(json.loads, f) if r["split"] == "train"]
  # the suffix only: fewer scored tokens than a causal row's (every non-padding position)
  assert 0 < train[-1]["predicted_tokens"] < 8 * 32
  assert train[-1]["loss"] < train[0]["loss"]


def test_korean_decoder_with_its_own_tokenizer(tmp_path, cache_dir, capsys):
  """The README's Korean example, shrunk: a tokenizer trained on the bundled Korean text,
  Llama trained with it (`model.vocab_size=0` takes the tokenizer's), and `generate`
  continuing a Korean prompt in Hangul, decoded by the same tokenizer."""
  prefix = str(tmp_path / "ko_2k")
  code, out, err = run_cli(capsys, ["tokenizer", "train", "--corpus", "bundled_ko", "--out",
                                    prefix, "--vocab-size", "2000"])
  assert code == 0, err
  assert json.loads(out)["vocab_size"] == 2000
  workdir = str(tmp_path / "llama_ko")
  code, out, err = run_cli(capsys, [
      "train", "--config", "llama_tiny", "--workdir", workdir, "data.corpus=bundled_ko",
      f"data.tokenizer={prefix}.model", "model.vocab_size=0", "train.export_at_end=false",
      *_overrides("llama_tiny", "bundled_ko", cache_dir, **{"train.steps": 16,
                                                            "train.eval_every": 16})])
  assert code == 0, err
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary["eval"]["loss"] < np.log(2000)  # below a uniform guess over its vocabulary
  # sampled (seeded): 16 steps teach the piece distribution, not yet fluent greedy text
  code, out, err = run_cli(capsys, ["generate", "--workdir", workdir, "--prompt",
                                    "문서를 저장하려면", "--max-new-tokens", "12",
                                    "--temperature", "1", "--seed", "0"])
  assert code == 0, err
  text = out.strip()
  assert any("\uac00" <= ch <= "\ud7a3" for ch in text), text  # Hangul syllables


def test_eval_at_other_lengths_and_the_sweep_plot(runs, capsys):
  """`pretrain eval --seq-len` / `--length-sweep` (trained at 32 here): one JSON line per
  length, the table kept for `pretrain plot`."""
  mpt = runs["mpt_tiny"]
  code, out, err = run_cli(capsys, ["eval", "--workdir", mpt, "--seq-len", "48",
                                    "--max-batches", "1"])
  assert code == 0, err
  assert json.loads(out)["seq_len"] == 48
  code, out, err = run_cli(capsys, ["eval", "--workdir", mpt, "--length-sweep", "32,64",
                                    "--max-batches", "1"])
  assert code == 0, err
  rows = [json.loads(line) for line in out.strip().splitlines()]
  assert [r["seq_len"] for r in rows] == [32, 64]
  assert all(np.isfinite(r["perplexity"]) and r["predicted_tokens"] > 0 for r in rows)
  with open(os.path.join(mpt, "length_sweep.jsonl"), encoding="utf-8") as f:
    assert [json.loads(line)["seq_len"] for line in f] == [32, 64]
  code, _, err = run_cli(capsys, ["plot", "--workdir", mpt])
  assert code == 0 and os.path.getsize(os.path.join(mpt, "loss.png")) > 0, err
  for argv, message in ((["--length-sweep", "32,x"], "lengths separated by commas"),
                        (["--length-sweep", "4"], "lengths >= 8"),
                        (["--seq-len", "32", "--length-sweep", "64"], "exclude each other")):
    code, _, err = run_cli(capsys, ["eval", "--workdir", mpt, *argv])
    assert code == 2 and message in err.strip().splitlines()[-1], err


def test_sliding_window_perplexity(runs, tmp_path, capsys):
  """`pretrain eval --stride`: the validation text as one stream, every token but the first
  scored once; the figure equals the windows' NLL computed from the model's logits."""
  from pretrain import data as data_lib
  from pretrain.evaluation import sliding_windows

  mpt = runs["mpt_tiny"]
  code, out, err = run_cli(capsys, ["eval", "--workdir", mpt, "--stride", "8"])
  assert code == 0, err
  result = json.loads(out)
  assert result["predicted_tokens"] == result["stream_tokens"] - 1
  # the same stream and windows, scored here from the logits
  pretrained = load_pretrained(mpt)
  config = config_lib.replace(pretrained.config, data={"pack_documents": False})
  _, _, manifest = data_lib.prepare_for(config)
  from data_pipelines import pipeline
  n = pipeline.num_records(manifest.directory, "validation")
  stream = np.concatenate([pipeline.read_segments(manifest.directory, "validation", i)[0]
                           for i in range(n)])
  assert len(stream) == result["stream_tokens"]
  nll, count = 0.0, 0
  for inputs, labels in sliding_windows(stream, 32, 8):
    logits = pretrained.logits({"input_ids": inputs[None]})[0].astype(np.float64)
    logz = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    scored = labels >= 0
    nll += float(np.sum(logz[scored] - logits[scored, labels[scored]]))
    count += int(scored.sum())
  assert count == result["predicted_tokens"]
  np.testing.assert_allclose(result["loss"], nll / count, rtol=1e-5)
  encoder = tmp_path / "encoder"
  encoder.mkdir()
  config_lib.save_config(config_lib.load_config("bert_tiny"), str(encoder / "config.yaml"))
  for argv, message in (([mpt, "--stride", "0"], "--stride must be in [1, 32]"),
                        ([mpt, "--stride", "64"], "--stride must be in [1, 32]"),
                        ([str(encoder), "--stride", "8"], "needs a decoder-only model")):
    code, _, err = run_cli(capsys, ["eval", "--workdir", *argv])
    assert code == 2 and message in err.strip().splitlines()[-1], err
