"""Throughput of the T5 span-corruption objective (`span_corruption.make_example`) on one core.

Tokens/s counts raw input tokens through `make_example`: blocks of `random_spans_helper(I)`
tokens (568 for inputs length I = 512 at density 0.15, mean span 3), so every record gives
inputs of exactly I and targets of exactly the helper's targets length. No installed package
implements T5 span corruption in NumPy, so the reference row is our own naive version: the same
noise mask, then the inputs and targets built by a per-token Python loop (checked equal to
`make_example` before timing). Run from the repo root:

  python benchmarks/bench_span_corruption.py --inputs-length 512 --n 2000 --repeats 7 \\
      [--json out.json]
"""

from __future__ import annotations

import os
import sys

# `python benchmarks/bench_span_corruption.py` puts benchmarks/ first on the path, not the root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import one_core  # first: sets one-thread BLAS/OpenMP before numpy is imported

# isort: split
import argparse
import json
import platform
import statistics
from collections.abc import Callable

import numpy as np

from data_pipelines.objectives import span_corruption as sc
from data_pipelines.vocab import VocabInfo

TARGET_TOKENS_PER_S = 2_000_000


def naive_example(block: np.ndarray, rng: np.random.Generator, params: sc.SpanCorruptionParams,
                  vocab: VocabInfo) -> dict[str, np.ndarray]:
  """`make_example` with the outputs built token by token in Python (same mask, same draws)."""
  noise = sc.random_spans_noise_mask(len(block), rng, params).tolist()
  sentinels = vocab.sentinel_ids.tolist()
  inputs: list[int] = []
  targets: list[int] = []
  span = -1
  prev = False
  for tok, is_noise in zip(block.tolist(), noise):
    if is_noise and not prev:  # a noise span opens: its sentinel goes to both sides
      span += 1
      inputs.append(sentinels[span])
      targets.append(sentinels[span])
    (targets if is_noise else inputs).append(tok)
    prev = is_noise
  inputs.append(vocab.eos_id)
  targets.append(vocab.eos_id)
  return {"input_ids": np.array(inputs, np.int32), "labels": np.array(targets, np.int32)}


def check_naive(blocks: np.ndarray, params: sc.SpanCorruptionParams, vocab: VocabInfo) -> None:
  """Asserts the naive version reproduces `make_example` exactly on the first blocks."""
  for i, block in enumerate(blocks[:50]):
    ours = sc.make_example(block, np.random.default_rng(i), params, vocab)
    ref = naive_example(block, np.random.default_rng(i), params, vocab)
    for key in ("input_ids", "labels"):
      np.testing.assert_array_equal(ours[key], ref[key])


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--inputs-length", type=int, default=512,
                      help="encoder length I; raw blocks are random_spans_helper(I) tokens")
  parser.add_argument("--n", type=int, default=2000, help="records per repeat")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--vocab-size", type=int, default=32100)
  parser.add_argument("--num-sentinels", type=int, default=100)
  parser.add_argument("--noise-density", type=float, default=0.15)
  parser.add_argument("--mean-noise-span-length", type=float, default=3.0)
  parser.add_argument("--json", type=str, default=None, help="also write results here")
  args = parser.parse_args(argv)

  one_core.pin_to_one_core()
  params = sc.SpanCorruptionParams(args.noise_density, args.mean_noise_span_length)
  tokens_length, targets_length = sc.random_spans_helper(
      args.inputs_length, params.noise_density, params.mean_noise_span_length)
  inputs_length, _ = sc.output_lengths(tokens_length, params)
  vocab = VocabInfo.synthetic(args.vocab_size, num_sentinels=args.num_sentinels)
  blocks = np.random.default_rng(0).choice(
      vocab.normal_ids, size=(args.n, tokens_length)).astype(np.int32)
  check_naive(blocks, params, vocab)

  def seeded(make: Callable) -> Callable[[], int]:
    # As the pipeline runs it: a fresh generator per record from (seed, epoch, index).
    def run() -> int:
      out_tokens = 0
      for i, block in enumerate(blocks):
        ex = make(block, np.random.default_rng((0, 0, i)), params, vocab)
        out_tokens += ex["input_ids"].size + ex["labels"].size
      return out_tokens
    return run

  def objective_only() -> int:
    rng = np.random.default_rng(0)
    out_tokens = 0
    for block in blocks:
      ex = sc.make_example(block, rng, params, vocab)
      out_tokens += ex["input_ids"].size + ex["labels"].size
    return out_tokens

  variants = {
      "ours make_example, rng per record": seeded(sc.make_example),
      "ours make_example, objective only (one rng)": objective_only,
      "naive per-token Python loop (same mask), rng per record": seeded(naive_example),
  }
  raw_tokens = args.n * tokens_length
  results = []
  for name, fn in variants.items():
    times, out_tokens = one_core.time_runs(fn, args.repeats)
    assert out_tokens == args.n * (inputs_length + targets_length)
    median = statistics.median(times)
    results.append({"variant": name, "median_s": median, "min_s": min(times),
                    "max_s": max(times), "tokens_per_s": raw_tokens / median,
                    "us_per_record": 1e6 * median / args.n})
  naive_rate = results[-1]["tokens_per_s"]
  for r in results:
    r["vs_naive"] = r["tokens_per_s"] / naive_rate

  print(f"Span corruption, inputs {inputs_length} / targets {targets_length} from raw blocks of "
        f"{tokens_length} (density {params.noise_density}, mean span "
        f"{params.mean_noise_span_length}), n={args.n}, median of {args.repeats} after one "
        f"warm-up, one core, numpy {np.__version__}, {platform.processor() or platform.machine()}"
        "\n")
  print("| variant | raw tokens/s | µs/record | spread (min–max µs/record) | vs naive |")
  print("|---|---:|---:|---:|---:|")
  for r in results:
    print(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['us_per_record']:.1f} | "
          f"{1e6 * r['min_s'] / args.n:.1f}–{1e6 * r['max_s'] / args.n:.1f} | "
          f"{r['vs_naive']:.2f}× |")
  rate = results[0]["tokens_per_s"]
  verdict = "met" if rate >= TARGET_TOKENS_PER_S else "NOT met"
  print(f"\nTarget >= {TARGET_TOKENS_PER_S:,} raw tokens/s (rng per record): {verdict} "
        f"({rate:,.0f})")
  report = {"inputs_length": inputs_length, "targets_length": targets_length,
            "tokens_length": tokens_length, "noise_density": params.noise_density,
            "mean_noise_span_length": params.mean_noise_span_length, "n": args.n,
            "repeats": args.repeats, "vocab_size": args.vocab_size, "numpy": np.__version__,
            "target_tokens_per_s": TARGET_TOKENS_PER_S, "target_met": rate >= TARGET_TOKENS_PER_S,
            "results": results}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  main()
