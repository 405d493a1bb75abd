"""Throughput of UL2's mixture of denoisers (R1 R2 X1..X4 S, uniform rates, paradigm tokens)
at encoder inputs I on one core.

Raw tokens/s counts the raw tokens the drawn denoiser reads from each record (its window of
the cached block: 567 for R1 ... 1004 for X4 at I = 512, 511 - 1 for S), as
bench_span_corruption counts its 568-token blocks. Two variants, a fresh generator per record
from (seed, epoch, index) as the pipeline runs them:

- examples: `data_pipelines.objectives.mixture` over `ul2.make_example` (member draw, window,
  denoiser, paradigm token), unpadded;
- rows: the registered `mixture` objective of the `ul2_base` preset as the pipeline calls it
  (`pretrain.data.make_objective`: the same, then the fixed-shape one-segment packed row).

Run from the repo root:

  python -m benchmarks.bench_ul2 --inputs-length 512 --n 2000 --repeats 7 [--json out.json]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import one_core  # first: sets one-thread BLAS/OpenMP before numpy is imported

# isort: split
import argparse
import dataclasses
import json
import platform
import statistics

import numpy as np

from data_pipelines.objectives import mixture, ul2
from data_pipelines.vocab import VocabInfo

TARGET_TOKENS_PER_S = 2_000_000


def _vocab(vocab_size: int, num_sentinels: int) -> VocabInfo:
  v = VocabInfo.synthetic(vocab_size, num_sentinels=num_sentinels)
  ids = {t: vocab_size - num_sentinels - 3 + k for k, t in enumerate((ul2.NLU, ul2.NLG,
                                                                        ul2.S2S))}
  special = v.is_special.copy()
  special[list(ids.values())] = True
  return dataclasses.replace(v, is_special=special, paradigm_ids=tuple(ids.items()))


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--inputs-length", type=int, default=512)
  parser.add_argument("--n", type=int, default=2000, help="records per repeat")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--vocab-size", type=int, default=32228)
  parser.add_argument("--num-sentinels", type=int, default=200)
  parser.add_argument("--json", type=str, default=None)
  args = parser.parse_args(argv)

  one_core.pin_to_one_core()
  vocab = _vocab(args.vocab_size, args.num_sentinels)
  own = args.inputs_length - 1  # the paradigm token takes one input
  members = [mixture.Member(1.0, ul2.lengths(own, d)[0],
                            lambda b, r, d=d: ul2.make_example(b, r, d, vocab))
             for d in ul2.UL2_DENOISERS]
  make = mixture.make_mixture(members)
  block_length = mixture.block_length(members)
  blocks = np.random.default_rng(0).choice(vocab.normal_ids, size=(args.n, block_length)
                                           ).astype(np.int32)
  raw = np.array([m.raw_length for m in members])

  def examples() -> int:
    tokens = 0
    for i, block in enumerate(blocks):
      k, _ = make(block, np.random.default_rng((0, 0, i)))
      tokens += int(raw[k])
    return tokens

  variants = {"examples (draw, window, denoiser, paradigm token)": examples}
  try:
    from data_pipelines.tokenizer import load_tokenizer
    from pretrain import data as data_lib
    from t5x_like.config import load_config
    from t5x_like.objectives import mixture as mixture_record

    config = data_lib.resolve_lengths(load_config("ul2_base", [
        f"data.seq_len={args.inputs_length}"]))
    tokenizer = load_tokenizer("bundled_ul2")
    row = data_lib.make_objective(config, tokenizer)
    row_raw = [mixture_record._raw_length(config, k)  # pylint: disable=protected-access
               for k in range(len(config.objective.mixture))]
    row_blocks = np.random.default_rng(0).integers(
        10, 7000, (args.n, data_lib.block_length(config))).astype(np.int32)

    def rows() -> int:
      tokens = 0
      for i, block in enumerate(row_blocks):
        tokens += row_raw[int(row(block, np.random.default_rng((0, 0, i)))["mixture_member"])]
      return tokens
    variants["rows (ul2_base objective as the pipeline calls it)"] = rows
  except ImportError as e:  # pragma: no cover - the JAX side is not installed
    print(f"rows variant skipped: {e}", file=sys.stderr)

  results = []
  for name, fn in variants.items():
    times, tokens = one_core.time_runs(fn, args.repeats)
    median = statistics.median(times)
    results.append({"variant": name, "median_s": median, "min_s": min(times),
                    "max_s": max(times), "raw_tokens": tokens, "tokens_per_s": tokens / median,
                    "us_per_record": 1e6 * median / args.n})
  print(f"UL2 mixture of 7 denoisers, inputs {args.inputs_length} (paradigm token + "
        f"{own}), blocks of {block_length}, uniform rates, n={args.n}, median of "
        f"{args.repeats} after one warm-up, one core, numpy {np.__version__}, "
        f"{platform.processor() or platform.machine()}\n")
  print("| variant | raw tokens/s | µs/record | spread (min–max µs/record) |")
  print("|---|---:|---:|---:|")
  for r in results:
    print(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['us_per_record']:.1f} | "
          f"{1e6 * r['min_s'] / args.n:.1f}–{1e6 * r['max_s'] / args.n:.1f} |")
  rate = results[0]["tokens_per_s"]
  verdict = "met" if rate >= TARGET_TOKENS_PER_S else "NOT met"
  print(f"\nTarget >= {TARGET_TOKENS_PER_S:,} raw tokens/s (examples): {verdict} ({rate:,.0f})")
  report = {"inputs_length": args.inputs_length, "block_length": block_length, "n": args.n,
            "repeats": args.repeats, "numpy": np.__version__,
            "target_tokens_per_s": TARGET_TOKENS_PER_S,
            "target_met": rate >= TARGET_TOKENS_PER_S, "results": results}
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  main()
