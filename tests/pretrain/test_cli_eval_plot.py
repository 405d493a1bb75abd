"""Happy paths of `pretrain eval | plot | data prepare | tokenizer train` on a tiny run."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os

import numpy as np
import pytest
import sentencepiece as spm

from data_pipelines import prepare, vocab
from data_pipelines.tokenizer import Tokenizer
from pretrain import cli
from tests.pretrain.conftest import corpus_documents, run_cli, write_jsonl

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# matplotlib's first two default cycle colours: train (C0, blue) and eval (C1, orange).
TRAIN_RGB, EVAL_RGB = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)


def one_json_line(out: str) -> dict:
  lines = out.splitlines()
  assert len(lines) == 1, out
  return json.loads(lines[0])


@pytest.fixture(scope="module")
def latest_eval(trained_workdir: str) -> dict:
  """`pretrain eval --workdir W` once per module (a module fixture cannot use capsys)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert cli.main(["eval", "--workdir", trained_workdir]) == 0
  return one_json_line(out.getvalue())


def test_eval_prints_metrics_of_latest_checkpoint(latest_eval):
  result = latest_eval
  assert result["step"] == 6
  assert result["split"] == "validation"
  for key in ("loss", "accuracy", "perplexity"):
    assert isinstance(result[key], float) and math.isfinite(result[key]), key
  # Barely trained on an 8000-id vocabulary: near log(8000) ~ 9, far from 0.
  assert 1.0 < result["loss"] < 20.0
  assert 0.0 <= result["accuracy"] <= 1.0
  assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-6)
  assert result["predicted_tokens"] > 0


def test_eval_step_picks_that_checkpoint(capsys, trained_workdir, latest_eval):
  code, out, _ = run_cli(capsys, ["eval", "--workdir", trained_workdir, "--step", "3"])
  assert code == 0
  result = one_json_line(out)
  assert result["step"] == 3
  assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-6)
  # Same validation data, other parameters: the loss must differ from step 6's.
  assert result["predicted_tokens"] == latest_eval["predicted_tokens"]
  assert result["loss"] != latest_eval["loss"]


def test_eval_max_batches_limits_the_data(capsys, trained_workdir, latest_eval):
  code, out, _ = run_cli(capsys, ["eval", "--workdir", trained_workdir, "--max-batches", "1"])
  assert code == 0
  result = one_json_line(out)
  assert result["step"] == 6
  assert 0 < result["predicted_tokens"] < latest_eval["predicted_tokens"]


def test_eval_split_train_reads_the_training_rows(capsys, trained_workdir):
  """`--split train` evaluates the training rows (to compare with held-out), in order."""
  runs = {}
  for split in ("train", "validation", "train"):
    code, out, _ = run_cli(capsys, ["eval", "--workdir", trained_workdir, "--split", split,
                                    "--max-batches", "1"])
    assert code == 0
    result = one_json_line(out)
    assert result["split"] == split and result["step"] == 6
    if split in runs:  # in order, the same masks: the same figures twice
      assert result["loss"] == runs[split]["loss"]
    runs[split] = result
  assert runs["train"]["loss"] != runs["validation"]["loss"]
  code, _, err = run_cli(capsys, ["eval", "--workdir", trained_workdir, "--split", "train",
                                  "--stride", "4"])
  assert code != 0 and "--split train" in err and "validation split only" in err


def _has_colour(pixels: np.ndarray, rgb: tuple[int, int, int], min_pixels: int = 20) -> bool:
  target = np.asarray(rgb, np.float32) / 255.0
  close = np.all(np.abs(pixels[..., :3] - target) < 0.02, axis=-1)
  return int(close.sum()) >= min_pixels


def test_plot_writes_png_with_both_curves(capsys, trained_workdir):
  import matplotlib.image  # pylint: disable=import-outside-toplevel

  png = os.path.join(trained_workdir, "loss.png")
  if os.path.exists(png):
    os.remove(png)
  code, out, err = run_cli(capsys, ["plot", "--workdir", trained_workdir])
  assert code == 0, err
  assert out.strip() == png
  with open(png, "rb") as f:
    data = f.read()
  assert data.startswith(PNG_SIGNATURE)
  assert len(data) > 10_000  # two panels with axes, labels, legends and curves
  pixels = matplotlib.image.imread(png)
  assert pixels.shape[0] > 300 and pixels.shape[1] > 1000  # 11x4 inches at 100 dpi
  assert _has_colour(pixels, TRAIN_RGB), "no train curve drawn"
  assert _has_colour(pixels, EVAL_RGB), "no eval curve drawn"


def test_plot_out_path_and_metrics_it_reads(capsys, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  records = [{"step": s, "split": "train", "loss": 9.0 - s, "accuracy": 0.1 * s}
             for s in (1, 2, 3)]
  records.append({"step": 3, "split": "eval", "loss": 7.0, "accuracy": 0.2})
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records),
                                         encoding="utf-8")
  out_png = tmp_path / "figs" / "curves.png"
  out_png.parent.mkdir()
  code, out, _ = run_cli(capsys, ["plot", "--workdir", str(workdir), "--out", str(out_png)])
  assert code == 0
  assert out.strip() == str(out_png)
  assert out_png.read_bytes().startswith(PNG_SIGNATURE)
  assert not (workdir / "loss.png").exists()


def test_data_prepare_prints_block_counts(capsys, tmp_path, corpus):
  cache = tmp_path / "cache"
  code, out, err = run_cli(capsys, ["data", "prepare", "--config", "bert_tiny",
                                    f"data.corpus={corpus}", f"data.cache_dir={cache}"])
  assert code == 0, err
  result = one_json_line(out)
  assert set(result["splits"]) == {"train", "validation"}
  assert all(isinstance(n, int) and n > 0 for n in result["splits"].values())
  directory = result["directory"]
  assert os.path.dirname(directory) == str(cache)
  manifest = prepare.load_manifest(directory)
  assert manifest.block_length == 126  # bert_tiny: seq_len 128 minus [CLS] and [SEP]
  assert {k: v.num_blocks for k, v in manifest.splits.items()} == result["splits"]
  # A second prepare reuses the cache and reports the same counts.
  code, out, _ = run_cli(capsys, ["data", "prepare", "--config", "bert_tiny",
                                  f"data.corpus={corpus}", f"data.cache_dir={cache}"])
  assert code == 0
  assert one_json_line(out) == result
  assert os.listdir(cache) == [os.path.basename(directory)]


def test_tokenizer_train_writes_model_with_fixed_special_ids(capsys, tmp_path):
  corpus = write_jsonl(str(tmp_path / "small.jsonl"), corpus_documents(60, korean_every=0))
  prefix = tmp_path / "tok" / "spm"
  # 300 ids = 6 specials + 256 byte pieces + ~30 characters + learned pieces + 4 sentinels.
  code, out, err = run_cli(capsys, ["tokenizer", "train", "--corpus", corpus, "--out",
                                    str(prefix), "--vocab-size", "300", "--num-sentinels", "4"])
  assert code == 0, err
  result = one_json_line(out)
  model = str(prefix) + ".model"
  assert result["model"] == model and result["vocab_size"] == 300
  assert os.path.isfile(str(prefix) + ".vocab")
  with open(str(prefix) + ".json", encoding="utf-8") as f:
    sidecar = json.load(f)
  assert sidecar["num_sentinels"] == 4 and sidecar["sha256"] == result["sha256"]

  sp = spm.SentencePieceProcessor(model_file=model)
  assert [sp.id_to_piece(i) for i in range(6)] == list(vocab.SPECIAL_PIECES)
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (
      vocab.PAD_ID, vocab.EOS_ID, vocab.UNK_ID, vocab.BOS_ID)
  assert sp.get_piece_size() == 296  # sentinels live above the SentencePiece pieces

  tok = Tokenizer.load(model)
  assert tok.vocab_size == 300 and tok.num_sentinels == 4
  assert tok.id_to_piece(299) == "<extra_id_0>" and tok.id_to_piece(296) == "<extra_id_3>"
  ids = tok.encode("The committee opened the wooden bridge.")
  assert len(ids) > 0 and ids.min() >= 6 and ids.max() < 296
