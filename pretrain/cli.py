"""`pretrain` command line: train | eval | export | tokenizer train | data prepare | plot.

Bad input ends with one line `error: ...` on stderr and exit code 2; nothing already saved
is touched.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

EXIT_BAD_INPUT = 2
_EXIT_AT_ONCE = False  # set when a checkpoint restore failed (see console_main)


def _user_errors() -> tuple[type[BaseException], ...]:
  from data_pipelines.errors import DataError
  from t5x_like.checkpointing import CheckpointError
  from t5x_like.config import ConfigError
  # FileExistsError: an export target that is neither empty nor a previous export.
  return (ConfigError, DataError, CheckpointError, FileExistsError, FileNotFoundError)


def _load_run_config(args: argparse.Namespace):
  from t5x_like import config as config_lib
  return config_lib.load_config(args.config, args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
  from data_pipelines.tokenizer import load_tokenizer
  from pretrain import data as data_lib
  from pretrain import exporting
  from t5x_like.training import loop

  config = _load_run_config(args)
  # Refuse a resume with another model shape before the (possibly long) data preparation,
  # so the error is the only thing said.
  tokenizer = load_tokenizer(config.data.tokenizer)
  loop.check_resume_compatible(args.workdir, data_lib.resolve_vocab(config, tokenizer))
  run = data_lib.build(config, tokenizer)
  print(run.manifest.summary(), file=sys.stderr)
  export_fn = None
  out = os.path.join(args.workdir, "export")
  if run.config.train.export_at_end:
    export_fn = lambda params: exporting.export(run.config, params, run.tokenizer, out)
  result = loop.train(run.config, args.workdir, run.hooks, export_fn)
  summary = {"step": result["step"], "train": result["train"], "eval": result["eval"]}
  if export_fn is not None:
    summary["export"] = out
  print(json.dumps(summary))
  return 0


def cmd_eval(args: argparse.Namespace) -> int:
  from pretrain import evaluation
  print(json.dumps(evaluation.evaluate_workdir(args.workdir, args.step, args.max_batches)))
  return 0


def cmd_export(args: argparse.Namespace) -> int:
  from data_pipelines.tokenizer import load_tokenizer
  from pretrain import exporting
  from t5x_like.pretrained import load_pretrained

  exporting.check_target(args.out)  # before the restore, which logs and takes time
  model = load_pretrained(args.workdir, args.step)
  tokenizer = load_tokenizer(model.config.data.tokenizer)
  out = exporting.export(model.config, model.params, tokenizer, args.out)
  print(json.dumps({"export": out, "step": model.step}))
  return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
  from data_pipelines import sources
  from data_pipelines.tokenizer import train_tokenizer

  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  tok = train_tokenizer(sources.read_documents(args.corpus, args.text_field), args.out,
                        vocab_size=args.vocab_size, model_type=args.model_type,
                        num_sentinels=args.num_sentinels, trained_on=args.corpus)
  print(json.dumps({"model": tok.model_path, "vocab_size": tok.vocab_size,
                    "sha256": tok.sha256}))
  return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
  from pretrain import data as data_lib

  config = _load_run_config(args)
  _, _, manifest = data_lib.prepare_for(config)
  print(manifest.summary(), file=sys.stderr)
  print(json.dumps({"directory": manifest.directory,
                    "splits": {k: v.num_blocks for k, v in manifest.splits.items()}}))
  return 0


def cmd_plot(args: argparse.Namespace) -> int:
  from pretrain import plot
  print(plot.plot_workdir(args.workdir, args.out))
  return 0


def build_parser() -> argparse.ArgumentParser:
  from t5x_like.config import list_presets  # light: yaml only
  parser = argparse.ArgumentParser(
      prog="pretrain",
      description="Pretrain Transformer LMs in JAX/Flax: BERT/RoBERTa masked LM, T5 span "
                  "corruption.")
  sub = parser.add_subparsers(dest="command", required=True)

  def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True,
                   help=f"preset name ({', '.join(list_presets())}) or a YAML path")
    p.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="dotted overrides, e.g. train.steps=100 mesh.data=2")

  p = sub.add_parser("train", help="train, or resume from the latest checkpoint in --workdir")
  add_config_args(p)
  p.add_argument("--workdir", required=True)
  p.set_defaults(fn=cmd_train)

  p = sub.add_parser("eval", help="evaluate a checkpoint; prints one JSON object")
  p.add_argument("--workdir", required=True)
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--max-batches", type=int, default=0, help="0 = the whole validation split")
  p.set_defaults(fn=cmd_eval)

  p = sub.add_parser("export", help="write a HuggingFace transformers folder")
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--step", type=int, default=None)
  p.set_defaults(fn=cmd_export)

  p = sub.add_parser("tokenizer", help="tokenizer tools")
  tsub = p.add_subparsers(dest="tokenizer_command", required=True)
  t = tsub.add_parser("train", help="train a SentencePiece model with fixed special ids")
  t.add_argument("--corpus", required=True, help="file, directory, glob, bundled or tfds:NAME")
  t.add_argument("--out", required=True, help="output prefix: writes PREFIX.model/.vocab/.json")
  t.add_argument("--vocab-size", type=int, default=8000)
  t.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
  t.add_argument("--num-sentinels", type=int, default=100)
  t.add_argument("--text-field", default="text")
  t.set_defaults(fn=cmd_tokenizer_train)

  p = sub.add_parser("data", help="data tools")
  dsub = p.add_subparsers(dest="data_command", required=True)
  d = dsub.add_parser("prepare", help="tokenize and cut the corpus of a config into shards")
  add_config_args(d)
  d.set_defaults(fn=cmd_data_prepare)

  p = sub.add_parser("plot", help="write a PNG of the loss curves of a run")
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", default=None, help="default: WORKDIR/loss.png")
  p.set_defaults(fn=cmd_plot)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  # orbax logs routine notices (e.g. about read-only managers) as absl warnings.
  logging.getLogger("absl").setLevel(logging.ERROR)
  try:
    return args.fn(args)
  except _user_errors() as e:
    from t5x_like import checkpointing
    global _EXIT_AT_ONCE
    _EXIT_AT_ONCE = isinstance(e, checkpointing.CheckpointError)
    if _EXIT_AT_ONCE and sys.stderr is sys.__stderr__ and sys.stderr is not None:
      # After a failed restore, tensorstore threads print "Event loop is closed" tracebacks
      # straight to fd 2, possibly stopping mid-line. One write that starts with a newline
      # puts the error on a line of its own whatever they wrote before it.
      sys.stderr.flush()
      os.write(sys.stderr.fileno(), f"\nerror: {e}\n".encode("utf-8", "backslashreplace"))
    else:
      print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130


def console_main() -> None:
  """Entry point of the `pretrain` console script."""
  code = main()
  if _EXIT_AT_ONCE:
    # A failed orbax/tensorstore restore leaves async tasks that print tracebacks at
    # interpreter shutdown; nothing is being written, so leave now and keep the one line.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


if __name__ == "__main__":
  console_main()
