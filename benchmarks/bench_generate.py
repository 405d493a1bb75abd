"""Greedy generation throughput of `t5x_like.generation.generate` versus HF `generate` (KV
cache, greedy) on the same exported weights, in the same invocation.

Per model: the preset's config with the shape's overrides, parameters from our init (seed 0),
exported with the family's exporter to a temporary folder and loaded back with
`transformers.AutoModelForCausalLM` (float32, eval), so both sides run the very same weights.
One prompt of `--prompt-len` random ids (batch 1), `--new-tokens` new tokens. Neither side
stops early: ours is given no EOS id (-1 matches no token) and HF `eos_token_id=None`, so
every run makes exactly `--new-tokens` tokens. Ours is timed after compilation
(`Generated.run_s`: prefill + the decode loop, one compiled call; each `generate` call
compiles anew, which `compile_s` reports), HF's `generate(do_sample=False, use_cache=True)`
under `torch.no_grad()` after one warm-up call, with 2 and with 1 torch threads (HF's figure
is the faster; batch-1 decoding is latency-bound and a second thread can cost more than it
gives); the sides alternate `--repeats` times and each reports its median. The greedy tokens of both sides must be identical (the run fails
otherwise). A second, shorter measurement with one new token (the prefill alone) splits each
side's time into prefill and decode per token. Run from the repo root:

  python -m benchmarks.bench_generate [--models llama_small_bench,mpt_small_bench]
      [--prompt-len 32] [--new-tokens 128] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.suite_tables import generate_table
from benchmarks.train_sides import TORCH_THREADS
from t5x_like import families, generation
from t5x_like.config import Config, load_config

# (preset, overrides): the train benchmarks' small shapes (4 layers, d=256, 4 heads, V=8000).
MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "llama_small_bench": ("llama_tiny", ("model.num_layers=4", "model.hidden_size=256",
                                         "model.num_heads=4", "model.num_kv_heads=2",
                                         "model.intermediate_size=688")),
    "mpt_small_bench": ("mpt_tiny", ("model.num_layers=4", "model.hidden_size=256",
                                     "model.num_heads=4", "model.intermediate_size=1024")),
}
HF_THREADS = (TORCH_THREADS, 1)  # torch threads tried for HF; the faster one is reported
NO_EOS = -1  # an id no token has: our loop never stops early (HF: eos_token_id=None)


@dataclasses.dataclass
class Runs:
  """One side's timed runs: seconds per call and the tokens of the last call."""
  times: list[float] = dataclasses.field(default_factory=list)
  tokens: list[int] = dataclasses.field(default_factory=list)

  def timed(self, run: Callable[[], tuple[list[int], float]]) -> None:
    self.tokens, seconds = run()
    self.times.append(seconds)


def ours_runner(config: Config, module: Any, params: Any, prompt: np.ndarray,
                new_tokens: int, compile_s: list[float]
                ) -> Callable[[], tuple[list[int], float]]:
  family = families.get(config.model.family)
  limit = family.context_length(config.model) if family.context_length else None
  sp = generation.SamplingParams(max_new_tokens=new_tokens)

  def run() -> tuple[list[int], float]:
    out = generation.generate(module, params, prompt, sp, NO_EOS, limit)
    compile_s.append(out.compile_s)
    return out.tokens, out.run_s
  return run


def hf_runner(hf: Any, prompt: np.ndarray, new_tokens: int, threads: int
              ) -> Callable[[], tuple[list[int], float]]:
  import torch

  ids = torch.from_numpy(prompt.astype(np.int64))[None]
  mask = torch.ones_like(ids)

  def run() -> tuple[list[int], float]:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    with torch.no_grad():
      out = hf.generate(ids, attention_mask=mask, do_sample=False, use_cache=True,
                        max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
    seconds = time.perf_counter() - start
    return out[0, len(prompt):].tolist(), seconds
  return run


def interleaved(sides: list[Callable[[], tuple[list[int], float]]], repeats: int
                ) -> list[Runs]:
  """One untimed call per side, then `repeats` rounds of one call each, alternating."""
  for run in sides:
    run()
  runs = [Runs() for _ in sides]
  for _ in range(repeats):
    for r, run in zip(runs, sides):
      r.timed(run)
  return runs


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
  """Builds, exports and reloads one model; returns its report row."""
  import torch
  import transformers

  preset, overrides = MODELS[name]
  config = load_config(preset, list(overrides))
  family = families.get(config.model.family)
  module_config = family.module_config(config.model)
  module = family.build(module_config)
  params = nn.meta.unbox(jax.jit(module.init)(jax.random.key(0),
                                              jnp.ones((1, 8), jnp.int32)))["params"]
  with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
    folder = family.export(params, module_config, os.path.join(tmp, "export"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
  rng = np.random.default_rng(0)
  # Ids above the fixed specials (pad, eos, unk, bos are 0..3), as text would give.
  prompt = rng.integers(4, config.model.vocab_size, args.prompt_len).astype(np.int32)

  compile_s: list[float] = []
  ours, *by_threads = interleaved(
      [ours_runner(config, module, params, prompt, args.new_tokens, compile_s),
       *(hf_runner(hf, prompt, args.new_tokens, t) for t in HF_THREADS)], args.repeats)
  # HF at its faster thread count: one token at a time, torch's second thread can cost more
  # than it gives (and far more when the machine is busy).
  best = min(range(len(HF_THREADS)), key=lambda i: statistics.median(by_threads[i].times))
  theirs, threads = by_threads[best], HF_THREADS[best]
  first_diff = next((i for i, (x, y) in enumerate(zip(ours.tokens, theirs.tokens)) if x != y),
                    None if len(ours.tokens) == len(theirs.tokens) else
                    min(len(ours.tokens), len(theirs.tokens)))
  ours_pre, hf_pre = interleaved([ours_runner(config, module, params, prompt, 1, []),
                                  hf_runner(hf, prompt, 1, threads)], args.repeats)
  m = config.model
  row: dict[str, Any] = {
      "model": name, "family": m.family, "num_layers": m.num_layers,
      "hidden_size": m.hidden_size, "num_heads": m.num_heads,
      "num_kv_heads": getattr(m, "num_kv_heads", 0) or m.num_heads,
      "intermediate_size": m.intermediate_size, "vocab_size": m.vocab_size,
      "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats,
      "hf_class": type(hf).__name__, "hf_attn_implementation": hf.config._attn_implementation,
      "identical": first_diff is None, "first_difference": first_diff,
      # The first call's: later calls of the same shapes hit JAX's compilation cache.
      "ours_compile_s": compile_s[0], "hf_threads": threads,
      "hf_tokens_per_s_by_threads": {str(t): args.new_tokens / statistics.median(r.times)
                                     for t, r in zip(HF_THREADS, by_threads)}}
  for label, runs, pre in (("ours", ours, ours_pre), ("hf", theirs, hf_pre)):
    median = statistics.median(runs.times)
    prefill = statistics.median(pre.times)
    row[f"{label}_median_s"] = median
    row[f"{label}_min_s"] = min(runs.times)
    row[f"{label}_tokens_per_s"] = args.new_tokens / median
    row[f"{label}_prefill_s"] = prefill
    # The first new token comes out of the prefill; the other n - 1 are decode steps.
    row[f"{label}_decode_s_per_token"] = (median - prefill) / max(args.new_tokens - 1, 1)
  row["ratio"] = row["ours_tokens_per_s"] / row["hf_tokens_per_s"]
  return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(MODELS),
                      help=f"comma-separated, from {', '.join(MODELS)}")
  parser.add_argument("--prompt-len", type=int, default=32)
  parser.add_argument("--new-tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per side")
  parser.add_argument("--json", default=None, help="also write results here")
  args = parser.parse_args(argv)
  names = [s.strip() for s in args.models.split(",") if s.strip()]
  unknown = [s for s in names if s not in MODELS]
  if unknown or not names:
    parser.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")
  if args.prompt_len < 1 or args.new_tokens < 2 or args.repeats < 1:
    parser.error("--prompt-len >= 1, --new-tokens >= 2 (decode = the tokens after the first) "
                 "and --repeats >= 1")
  import torch
  import transformers

  rows = [bench_model(name, args) for name in names]
  cpu = platform.processor() or platform.machine()
  print(f"greedy generation, batch 1, median of {args.repeats} calls per side after one "
        f"warm-up, interleaved; {os.cpu_count()} CPUs ({cpu}); jax {jax.__version__}, torch "
        f"{torch.__version__} "
        f"(HF at the faster of {HF_THREADS} threads), transformers "
        f"{transformers.__version__}\n")
  report = {"cpus": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_threads": list(HF_THREADS),
            "results": rows}
  print("\n".join(generate_table(report)))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)
  differ = [r["model"] for r in rows if not r["identical"]]
  if differ:
    raise SystemExit(f"error: greedy tokens differ between ours and HF for {differ}: the "
                     "speeds above do not compare the same computation")
  return report


if __name__ == "__main__":
  main()
