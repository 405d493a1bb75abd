"""ALiBi's "Train Short, Test Long" in miniature: `llama_tiny` (RoPE) and `mpt_tiny` (ALiBi),
both trained at 128 tokens on the bundled corpus, evaluated at 128..1024 tokens
(`pretrain eval --length-sweep`; validation documents packed into rows of each length, so a
longer row gives later tokens more context). Press et al. (2022) report that ALiBi keeps its
perplexity (or improves) beyond the training length while sinusoidal / rotary models degrade.

  python -m benchmarks.bench_length_extrapolation [--lengths 128,256,512,1024]
      [--workdir runs/length_extrapolation] [--json out.json]

Prints a markdown table of validation perplexity per length (and writes JSON).
"""

from __future__ import annotations

import argparse
import json
import os

from pretrain import cli, evaluation


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="128,256,512,1024")
  parser.add_argument("--presets", default="llama_tiny,mpt_tiny")
  parser.add_argument("--workdir", default="runs/length_extrapolation")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  lengths = evaluation.parse_lengths(args.lengths)
  table: dict[str, list[dict]] = {}
  for preset in args.presets.split(","):
    workdir = os.path.join(args.workdir, preset)
    if cli.main(["train", "--config", preset, "--workdir", workdir,
                 "train.export_at_end=false"]) != 0:
      raise SystemExit(f"training {preset} failed")
    table[preset] = evaluation.length_sweep(workdir, lengths)
  header = "| preset | trained at | " + " | ".join(f"ppl @ {n}" for n in lengths) + " |"
  lines = [header, "|---|---:|" + "---:|" * len(lengths)]
  for preset, rows in table.items():
    lines.append(f"| `{preset}` | 128 | " + " | ".join(f"{r['perplexity']:.1f}" for r in rows)
                 + " |")
  print("\n".join(lines))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(table, f, indent=1)
  return table


if __name__ == "__main__":
  main()
