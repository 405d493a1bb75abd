"""`pretrain generate`: continue a prompt with a decoder-only run's model (t5x_like.generation).

Prints the continuation on stdout and one line of figures (tokens, seconds, tokens/s after
compilation) on stderr.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from t5x_like.config import ConfigError


def _prompt(args: argparse.Namespace) -> str:
  if args.prompt is not None:
    return args.prompt
  try:
    with open(args.prompt_file, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise ConfigError(f"--prompt-file {args.prompt_file} does not exist") from None
  except OSError as e:
    raise ConfigError(f"--prompt-file {args.prompt_file} could not be read: "
                      f"{e.strerror or e}") from None
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ConfigError(f"--prompt-file {args.prompt_file} is not UTF-8 text (byte {e.start}: "
                      f"{raw[e.start:e.start + 1]!r})") from None


def run(args: argparse.Namespace) -> int:
  from data_pipelines.tokenizer import load_tokenizer
  from t5x_like import families, generation
  from t5x_like.pretrained import load_pretrained, run_config

  sp = generation.SamplingParams(max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, top_k=args.top_k,
                                 top_p=args.top_p, seed=args.seed)
  sp.check()  # before the (slow) restore
  text = _prompt(args)
  if not text.strip():
    raise ConfigError("the prompt is empty: give some text to continue")
  config = run_config(args.workdir)
  family = families.get(config.model.family)
  if not family.decoder_only:
    raise ConfigError(f"generate needs a decoder-only model; the run in {args.workdir} is "
                      f"model.family {family.name!r} (objective {config.objective.name}), "
                      f"which does not generate text left to right")
  tokenizer = load_tokenizer(config.data.tokenizer)
  pretrained = load_pretrained(args.workdir, args.step)
  vocab = tokenizer.vocab_info()
  ids = tokenizer.encode(text)
  # As the run's documents started (objective.add_bos: Llama's convention).
  if getattr(config.objective, "add_bos", False):
    ids = np.concatenate([[vocab.bos_id], ids]).astype(np.int32)
  limit = family.context_length(config.model) if family.context_length else None
  out = generation.generate(pretrained.model, pretrained.params, ids, sp, vocab.eos_id, limit)
  new = [t for t in out.tokens if t != vocab.eos_id]
  print(tokenizer.decode(new))
  print(f"generated {len(out.tokens)} tokens in {out.run_s:.3f} s ({out.tokens_per_s:.1f} "
        f"tokens/s; compiled in {out.compile_s:.1f} s)", file=sys.stderr)
  return 0
