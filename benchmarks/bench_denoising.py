"""Throughput of the BART denoising objective (`denoising.make_example`) on one core.

Tokens/s counts target tokens (`<s> block </s>`, i.e. --length per record) through
`make_example`, with a fresh generator per record as the pipeline runs it. Blocks are real text
by default: the bundled corpus encoded with the bundled tokenizer, documents joined by EOS (so
blocks hold document separators, real word starts and sentence ends); `--synthetic` uses random
ids of a synthetic vocabulary instead (word starts ~1/3, sentence ends ~1/20 of the ids). The
first row is the default mix (text infilling 0.3, λ 3, sentence permutation 1.0, random ratio
0.1); the others time each noise alone and all together, for comparison. Run from the repo root:

  python benchmarks/bench_denoising.py --length 512 --n 2000 --repeats 7 [--synthetic] \\
      [--json out.json]
"""

from __future__ import annotations

import os
import sys

# `python benchmarks/bench_denoising.py` puts benchmarks/ first on the path, not the root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import one_core  # first: sets one-thread BLAS/OpenMP before numpy is imported

# isort: split
import argparse
import json
import platform
import statistics
from collections.abc import Callable

import numpy as np

from data_pipelines import sources
from data_pipelines.objectives import denoising as dn
from data_pipelines.tokenizer import load_tokenizer
from data_pipelines.vocab import EOS_ID, VocabInfo

TARGET_TOKENS_PER_S = 1_000_000
CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "data_pipelines", "corpora", "python_docs_en.jsonl")
_OFF = {"text_infilling": 0.0, "permute_sentences": 0.0}
VARIANTS = {
    "default mix: infilling 0.3 + permutation 1.0": {},
    "sentence permutation 1.0 alone": dict(_OFF, permute_sentences=1.0),
    "text infilling 0.3 alone": dict(_OFF, text_infilling=0.3),
    "token masking 0.3 alone": dict(_OFF, token_masking=0.3),
    "token deletion 0.3 alone": dict(_OFF, token_deletion=0.3),
    "insertion 0.1 alone": dict(_OFF, insert=0.1),
    "rotation 1.0 alone": dict(_OFF, rotate=1.0),
    "all six (infill 0.3, mask 0.1, delete 0.1, permute 1, insert 0.1, rotate 0.5)": {
        "token_masking": 0.1, "token_deletion": 0.1, "insert": 0.1, "rotate": 0.5},
}


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
  vocab = VocabInfo.synthetic(8000, word_start_every=3, sentence_end_every=20)
  blocks = np.random.default_rng(0).choice(vocab.normal_ids, size=(n, raw_length))
  return blocks.astype(np.int32), vocab


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--length", type=int, default=512,
                      help="target length; raw blocks are length - 2 tokens")
  parser.add_argument("--n", type=int, default=2000, help="records per repeat")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--synthetic", action="store_true",
                      help="random ids of a synthetic 8000-id vocabulary instead of real text")
  parser.add_argument("--json", type=str, default=None, help="also write results here")
  args = parser.parse_args(argv)

  one_core.pin_to_one_core()
  raw_length = args.length - 2
  make_blocks = synthetic_blocks if args.synthetic else real_blocks
  blocks, vocab = make_blocks(args.n, raw_length)
  sentences = np.mean([dn.count_sentences(b, vocab) for b in blocks[:200]])

  def seeded(params: dn.DenoisingParams) -> Callable[[], int]:
    def run() -> int:
      out_tokens = 0
      for i, block in enumerate(blocks):
        ex = dn.make_example(block, np.random.default_rng((0, 0, i)), params, vocab)
        out_tokens += ex["input_ids"].size
      return out_tokens
    return run

  def objective_only(params: dn.DenoisingParams) -> Callable[[], int]:
    def run() -> int:
      rng = np.random.default_rng(0)
      return sum(dn.make_example(b, rng, params, vocab)["input_ids"].size for b in blocks)
    return run

  default = dn.DenoisingParams()
  runs = [("default mix, objective only (one rng)", default, objective_only(default))]
  for name, overrides in VARIANTS.items():
    params = dn.DenoisingParams(**overrides)
    runs.append((name + ", rng per record", params, seeded(params)))
  runs.insert(0, runs.pop(1))  # the headline figure first
  target_tokens = args.n * args.length
  results = []
  for name, params, fn in runs:
    times, source_tokens = one_core.time_runs(fn, args.repeats)
    median = statistics.median(times)
    results.append({"variant": name, "params": params.__dict__, "median_s": median,
                    "min_s": min(times), "max_s": max(times),
                    "tokens_per_s": target_tokens / median,
                    "us_per_record": 1e6 * median / args.n,
                    "mean_source_length": source_tokens / args.n})

  data = ("synthetic vocab 8000 (word starts 1/3, sentence ends 1/20)" if args.synthetic else
          f"real text ({os.path.basename(CORPUS)}, bundled 8k tokenizer, EOS between documents)")
  print(f"BART denoising, target length {args.length} (raw blocks of {raw_length}), {data}, "
        f"{sentences:.1f} sentences per block, n={args.n}, median of {args.repeats} after one "
        f"warm-up, one core, numpy {np.__version__}, "
        f"{platform.processor() or platform.machine()}\n")
  print("| variant | target tokens/s | µs/record | spread (min–max µs/record) | mean source len |")
  print("|---|---:|---:|---:|---:|")
  for r in results:
    print(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['us_per_record']:.1f} | "
          f"{1e6 * r['min_s'] / args.n:.1f}–{1e6 * r['max_s'] / args.n:.1f} | "
          f"{r['mean_source_length']:.1f} |")
  rate = results[0]["tokens_per_s"]
  verdict = "met" if rate >= TARGET_TOKENS_PER_S else "NOT met"
  print(f"\nTarget >= {TARGET_TOKENS_PER_S:,} target tokens/s (default mix, rng per record): "
        f"{verdict} ({rate:,.0f})")
  report = {"length": args.length, "raw_length": raw_length, "data": data,
            "sentences_per_block": float(sentences), "n": args.n, "repeats": args.repeats,
            "numpy": np.__version__, "target_tokens_per_s": TARGET_TOKENS_PER_S,
            "target_met": rate >= TARGET_TOKENS_PER_S, "results": results}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  main()
