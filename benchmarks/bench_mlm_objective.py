"""Throughput of the masked-LM objective versus HF's numpy `DataCollatorForLanguageModeling`.

Both sides mask the same [CLS] block [SEP] rows of `--length` tokens on one CPU core; the HF
collator gets equal-length rows, so it pads nothing. Run from the repo root:

  python -m benchmarks.bench_mlm_objective --length 512 --n 2000 --repeats 5 [--json out.json]
"""

from __future__ import annotations

import os

from benchmarks import one_core  # first: sets one-thread BLAS/OpenMP before numpy is imported

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import json
import platform
import statistics
from collections.abc import Callable

import numpy as np

from data_pipelines.objectives import mlm
from data_pipelines.vocab import SPECIAL_PIECES, VocabInfo


def make_blocks(n: int, length: int, vocab: VocabInfo, seed: int) -> np.ndarray:
  """int32[n, length - 2]: normal ids with an EOS document separator every ~300 tokens."""
  rng = np.random.default_rng(seed)
  blocks = rng.choice(vocab.normal_ids, size=(n, length - 2))
  blocks[rng.random(blocks.shape) < 1 / 300] = vocab.eos_id
  return blocks.astype(np.int32)


def hf_tokenizer(vocab: VocabInfo):
  """A word-level HF fast tokenizer with our special pieces at our ids, built offline."""
  import tokenizers
  import transformers

  pieces = {piece: i for i, piece in enumerate(SPECIAL_PIECES)}
  pieces.update({f"w{i}": i for i in range(len(SPECIAL_PIECES), vocab.vocab_size)})
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(pieces, unk_token="<unk>"))
  backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
      cls_token="<s>", sep_token="<sep>", mask_token="<mask>")
  # The comparison is only fair if HF sees the same specials at the same ids.
  assert len(tokenizer) == vocab.vocab_size
  assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
          tokenizer.mask_token_id) == (vocab.pad_id, vocab.cls_id, vocab.sep_id, vocab.mask_id)
  return tokenizer


def hf_collator(vocab: VocabInfo, mlm_probability: float):
  """HF's MLM collator over `hf_tokenizer(vocab)`."""
  import transformers

  return transformers.DataCollatorForLanguageModeling(
      tokenizer=hf_tokenizer(vocab), mlm_probability=mlm_probability, return_tensors="np",
      seed=0)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--length", type=int, default=512, help="sequence length L (with CLS/SEP)")
  parser.add_argument("--n", type=int, default=2000, help="records per repeat")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--vocab-size", type=int, default=32000)
  parser.add_argument("--hf-batch", type=int, default=32, help="HF collator batch size")
  parser.add_argument("--json", type=str, default=None, help="also write results here")
  args = parser.parse_args(argv)

  one_core.pin_to_one_core()
  vocab = VocabInfo.synthetic(args.vocab_size)
  blocks = make_blocks(args.n, args.length, vocab, seed=0)
  rows = np.concatenate([np.full((args.n, 1), vocab.cls_id, np.int32), blocks,
                         np.full((args.n, 1), vocab.sep_id, np.int32)], axis=1)
  row_list = list(rows)  # what a per-example tokenised dataset hands the collator
  token_params = mlm.MLMParams(max_predictions=mlm.default_max_predictions(args.length, 0.15))
  word_params = mlm.MLMParams(whole_word=True, max_predictions=mlm.default_max_predictions(
      args.length, 0.15, whole_word=True))
  collator = hf_collator(vocab, 0.15)

  def ours_seeded(params: mlm.MLMParams) -> Callable[[], int]:
    # As the pipeline runs it: a fresh generator per record from (seed, epoch, index).
    def run() -> int:
      selected = 0
      for i, block in enumerate(blocks):
        out = mlm.make_example(block, np.random.default_rng((0, 0, i)), params, vocab)
        selected += int(np.count_nonzero(out["labels"] != -100))
      return selected
    return run

  def ours_objective_only() -> int:
    rng = np.random.default_rng(0)
    selected = 0
    for block in blocks:
      out = mlm.make_example(block, rng, token_params, vocab)
      selected += int(np.count_nonzero(out["labels"] != -100))
    return selected

  def hf() -> int:
    selected = 0
    for start in range(0, args.n, args.hf_batch):
      batch = collator(row_list[start:start + args.hf_batch])
      assert batch["input_ids"].shape[1] == args.length  # equal lengths: no padding happened
      selected += int(np.count_nonzero(batch["labels"] != -100))
    return selected

  variants = {
      "HF DataCollatorForLanguageModeling (np, batch "
      f"{args.hf_batch})": hf,
      "ours make_example, token, rng per record": ours_seeded(token_params),
      "ours make_example, token, objective only (one rng)": ours_objective_only,
      "ours make_example, whole-word, rng per record": ours_seeded(word_params),
  }
  tokens = args.n * args.length
  results = []
  for name, fn in variants.items():
    times, selected = one_core.time_runs(fn, args.repeats)
    seconds = statistics.median(times)
    results.append({"variant": name, "median_s": seconds, "tokens_per_s": tokens / seconds,
                    "us_per_record": 1e6 * seconds / args.n,
                    "selected_per_record": selected / args.n})
  hf_rate = results[0]["tokens_per_s"]
  for r in results:
    r["vs_hf"] = r["tokens_per_s"] / hf_rate

  print(f"MLM objective, L={args.length}, n={args.n}, median of {args.repeats}, one core, "
        f"numpy {np.__version__}, {platform.processor() or platform.machine()}\n")
  print("| variant | tokens/s | µs/record | selected/record | vs HF |")
  print("|---|---:|---:|---:|---:|")
  for r in results:
    print(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['us_per_record']:.1f} | "
          f"{r['selected_per_record']:.1f} | {r['vs_hf']:.2f}× |")
  report = {"length": args.length, "n": args.n, "repeats": args.repeats,
            "vocab_size": args.vocab_size, "hf_batch": args.hf_batch, "results": results}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  main()
