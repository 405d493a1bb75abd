"""The Llama train benchmark feeds both sides the same rows and the same loss; the generation
benchmark's targets need the speed and identical tokens."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks import run_all, train_harness
from benchmarks.bench_train_llama import SPEC
from data_pipelines.vocab import VocabInfo


def test_rows_are_the_objectives_blocks_and_hf_scores_every_position():
  config = train_harness.shape_config(SPEC, "llama_tiny", 4)
  assert not config.data.pack_documents
  (batch,) = SPEC.make_batches(config, VocabInfo.synthetic(8000), 1, 0)
  assert set(batch) == {"input_ids", "labels"}
  assert batch["input_ids"].shape == batch["labels"].shape == (16, 128)
  # Blocks of L + 1 tokens: labels are the inputs shifted by one.
  np.testing.assert_array_equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
  torch.manual_seed(0)
  model = SPEC.hf_model(config).eval()
  inputs = SPEC.hf_inputs({k: v[:2] for k, v in batch.items()})
  with torch.no_grad():
    out = model(**inputs)
  # Our loss: the mean cross-entropy of logits[i] against labels[i] at all L positions.
  want = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]),
                                           inputs["labels"].reshape(-1))
  torch.testing.assert_close(out.loss, want)
  assert model.config.num_key_value_heads == 2 and not model.config.tie_word_embeddings


def test_generate_targets_need_the_ratio_and_identical_tokens():
  suite = next(s for s in run_all.SUITES if s.name == "generate")

  def judge(ratio, identical):
    row = {"model": "llama_small_bench", "hf_class": "LlamaForCausalLM", "prompt_len": 32,
           "new_tokens": 128, "ratio": ratio, "identical": identical}
    return [(t.figure, t.met) for t in run_all.suite_targets(suite, {"report": {
        "results": [row]}})]
  assert judge(1.5, True) == [("1.50×", True)]
  assert judge(1.49, True) == [("1.49×", False)]
  assert judge(2.0, False) == [("2.00×", False)]


def test_chunked_loss_probe_runs_and_every_variant_equals_the_whole_loss(capsys):
  from benchmarks import bench_chunked_loss
  bench_chunked_loss.main(["--batch", "2", "--length", "8", "--hidden", "8", "--vocab", "16",
                           "--chunks", "2,4", "--repeats", "1"])
  rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
  assert len(rows) == 1 + 1 + 4  # header, whole, 2 chunk counts x (plain, checkpoint)
