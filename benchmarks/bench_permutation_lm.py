"""Throughput of the XLNet permutation-LM objective (`permutation_lm.make_example`) on one core.

Tokens/s counts row tokens (`A <sep> B <sep> <cls>`, i.e. --length per record) through
`make_example`, with a fresh generator per record as the pipeline runs it. Blocks are real text
by default: the bundled corpus encoded with the bundled tokenizer, documents joined by EOS;
`--synthetic` uses random ids of a synthetic vocabulary (word starts ~1/3) instead. Rows also
time a few perm_size / num_predict settings and the perm_mask construction alone, for
comparison, and the peer: HF's `DataCollatorForPermutationLanguageModeling` (numpy, batches of
--hf-batch) on the same rows, with plm_probability 1/6 and max_span_length 5 (the paper's K
and span length; HF draws spans in its own way and builds [L, L] target mappings). Run from
the repo root:

  python benchmarks/bench_permutation_lm.py --length 512 --n 2000 --repeats 7 [--synthetic] \\
      [--json out.json]
"""

from __future__ import annotations

import os
import sys

# `python benchmarks/bench_permutation_lm.py` puts benchmarks/ first on the path, not the root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import one_core  # first: sets one-thread BLAS/OpenMP before numpy is imported

# isort: split
import argparse
import json
import platform
import random
import statistics
from collections.abc import Callable

import numpy as np

from data_pipelines import sources
from data_pipelines.objectives import permutation_lm as pl
from data_pipelines.tokenizer import load_tokenizer
from data_pipelines.vocab import EOS_ID, VocabInfo

TARGET_TOKENS_PER_S = 500_000
CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "data_pipelines", "corpora", "python_docs_en.jsonl")


def real_blocks(n: int, raw_length: int) -> tuple[np.ndarray, VocabInfo]:
  """n blocks of the bundled corpus (EOS between documents, cycled if short), and its vocab."""
  tok = load_tokenizer("bundled")
  docs = list(sources.read_documents(CORPUS))
  ids = tok.encode_batch(docs)
  stream = np.concatenate([np.append(d, np.int32(EOS_ID)) for d in ids])
  need = n * raw_length
  stream = np.tile(stream, -(-need // stream.size))[:need]
  return stream.reshape(n, raw_length).astype(np.int32), tok.vocab_info()


def synthetic_blocks(n: int, raw_length: int) -> tuple[np.ndarray, VocabInfo]:
  vocab = VocabInfo.synthetic(8000, word_start_every=3)
  blocks = np.random.default_rng(0).choice(vocab.normal_ids, size=(n, raw_length))
  return blocks.astype(np.int32), vocab


def _divisor_near(length: int, want: int) -> int:
  return min((d for d in range(1, length + 1) if length % d == 0), key=lambda d: abs(d - want))


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--length", type=int, default=512,
                      help="row length L; raw blocks are L - 3 tokens")
  parser.add_argument("--n", type=int, default=2000, help="records per repeat")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--synthetic", action="store_true",
                      help="random ids of a synthetic 8000-id vocabulary instead of real text")
  parser.add_argument("--hf-batch", type=int, default=32, help="HF collator batch size")
  parser.add_argument("--json", type=str, default=None, help="also write results here")
  args = parser.parse_args(argv)

  one_core.pin_to_one_core()
  raw_length = args.length - 3
  make_blocks = synthetic_blocks if args.synthetic else real_blocks
  blocks, vocab = make_blocks(args.n, raw_length)

  def seeded(params: pl.PermutationLMParams) -> Callable[[], int]:
    def run() -> int:
      predicted = 0
      for i, block in enumerate(blocks):
        ex = pl.make_example(block, np.random.default_rng((0, 0, i)), params, vocab)
        predicted += ex["labels"].size
      return predicted
    return run

  # The same rows for HF: block <sep> <sep> <cls>, as make_example lays them out.
  ends = np.tile(np.asarray([vocab.sep_id, vocab.sep_id, vocab.cls_id], np.int32),
                 (len(blocks), 1))
  hf_rows = list(np.concatenate([blocks, ends], axis=1).astype(np.int64))
  collator = None
  if args.length % 2 == 0:  # HF's collator refuses odd lengths
    import transformers

    from benchmarks.bench_mlm_objective import hf_tokenizer
    collator = transformers.DataCollatorForPermutationLanguageModeling(
        tokenizer=hf_tokenizer(vocab), plm_probability=1 / 6, max_span_length=5,
        return_tensors="np")

  def hf() -> int:
    random.seed(0)  # HF's collator draws spans from the global `random` and numpy generators
    np.random.seed(0)
    predicted = 0
    for start in range(0, args.n, args.hf_batch):
      batch = collator(hf_rows[start:start + args.hf_batch])
      assert batch["perm_mask"].shape[1:] == (args.length, args.length)
      predicted += int(np.count_nonzero(batch["labels"] != -100))
    return predicted

  def perm_mask_only() -> int:
    # The one broadcast comparison and float cast, as make_example builds them.
    rank = np.random.default_rng(0).permutation(args.length)
    threshold = rank + 1
    for _ in range(args.n):
      (threshold[:, None] <= rank[None, :]).astype(np.float32)
    return 0

  quarter = _divisor_near(args.length, args.length // 4)
  runs = [(name, params, seeded(params)) for name, params in (
      ("default (num_predict L/6, perm_size L)", pl.PermutationLMParams()),
      (f"perm_size {quarter}", pl.PermutationLMParams(perm_size=quarter)),
      ("num_predict L/3", pl.PermutationLMParams(num_predict=args.length // 3)),
      ("max_span 1 (single tokens)", pl.PermutationLMParams(max_span=1)))]
  if collator is not None:
    runs.append((f"HF DataCollatorForPermutationLanguageModeling (np, batch {args.hf_batch})",
                 None, hf))
  runs.append(("perm_mask [L, L] float32 alone", None, perm_mask_only))
  row_tokens = args.n * args.length
  results = []
  for name, params, fn in runs:
    times, predicted = one_core.time_runs(fn, args.repeats)
    median = statistics.median(times)
    results.append({"variant": name, "params": params.__dict__ if params else None,
                    "median_s": median, "min_s": min(times), "max_s": max(times),
                    "tokens_per_s": row_tokens / median, "us_per_record": 1e6 * median / args.n,
                    "predicted_per_record": predicted / args.n})
  hf_rate = next((r["tokens_per_s"] for r in results if r["variant"].startswith("HF ")), None)
  for r in results:  # whole objectives only, not the perm_mask part alone
    whole = not r["variant"].startswith("perm_mask")
    r["vs_hf"] = r["tokens_per_s"] / hf_rate if hf_rate and whole else None

  data = ("synthetic vocab 8000 (word starts 1/3)" if args.synthetic else
          f"real text ({os.path.basename(CORPUS)}, bundled 8k tokenizer, EOS between documents)")
  print(f"XLNet permutation LM, row length {args.length} (raw blocks of {raw_length}), {data}, "
        f"n={args.n}, median of {args.repeats} after one warm-up, one core, "
        f"numpy {np.__version__}, {platform.processor() or platform.machine()}\n")
  print("| variant | row tokens/s | µs/record | spread (min–max µs/record) | predicted/record "
        "| vs HF |")
  print("|---|---:|---:|---:|---:|---:|")
  for r in results:
    vs = "–" if r["vs_hf"] is None else f"{r['vs_hf']:.2f}×"
    print(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['us_per_record']:.1f} | "
          f"{1e6 * r['min_s'] / args.n:.1f}–{1e6 * r['max_s'] / args.n:.1f} | "
          f"{r['predicted_per_record']:.1f} | {vs} |")
  rate = results[0]["tokens_per_s"]
  verdict = "met" if rate >= TARGET_TOKENS_PER_S else "NOT met"
  print(f"\nTarget >= {TARGET_TOKENS_PER_S:,} row tokens/s (default, rng per record): "
        f"{verdict} ({rate:,.0f})")
  report = {"length": args.length, "raw_length": raw_length, "data": data, "n": args.n,
            "repeats": args.repeats, "numpy": np.__version__,
            "target_tokens_per_s": TARGET_TOKENS_PER_S,
            "target_met": rate >= TARGET_TOKENS_PER_S, "results": results}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  main()
