"""`pretrain` command line: train | eval | export | import | generate | tokenizer train |
data prepare | plot.

`import` turns a HuggingFace folder (bert, t5 v1.1, bart, xlnet, llama, mpt, albert) into a
run directory whose step-0 checkpoint `train` resumes from: the step restarts at 0 with a new
optimiser state, built from `train`'s optim settings (any optimiser; a resume from a later
step keeps its optimiser's structure).

Bad input ends with one line `error: ...` on stderr and exit code 2; nothing already saved
is touched. A multi-process `train` that loses one of its processes ends the others with one
`error: ...` line naming it and exit code 4 (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from pretrain import supervise

EXIT_BAD_INPUT = 2
EXIT_TRAINING_FAILED = 3  # e.g. a non-finite loss with train.on_nonfinite=stop
# Another process of a multi-process job was lost; see t5x_like.distributed.PeerWatch.
EXIT_PEER_LOST = 4
# Written into the workdir (by process 0) when `train` reached train.steps; removed when a
# later `train` on the workdir starts.
DONE_MARKER = "DONE"
_EXIT_AT_ONCE = False  # set when a checkpoint restore failed (see console_main)


def _user_errors() -> tuple[type[BaseException], ...]:
  from data_pipelines.errors import DataError
  from t5x_like.checkpointing import CheckpointError
  from t5x_like.config import ConfigError
  # FileExistsError: an export target that is neither empty nor a previous export.
  return (ConfigError, DataError, CheckpointError, FileExistsError, FileNotFoundError)


def _training_failures() -> tuple[type[BaseException], ...]:
  from t5x_like.training.loop import NonFiniteLossError
  return (NonFiniteLossError,)


def _load_run_config(args: argparse.Namespace):
  from t5x_like import config as config_lib
  return config_lib.load_config(args.config, args.overrides)


def cmd_generate(args: argparse.Namespace) -> int:
  from pretrain import generating
  return generating.run(args)


def cmd_train(args: argparse.Namespace) -> int:
  from data_pipelines import storage
  from data_pipelines.tokenizer import load_tokenizer
  from pretrain import data as data_lib
  from t5x_like import distributed
  from t5x_like.training import lock, resume, tasks

  config = _load_run_config(args)
  for where in (args.workdir, config.data.cache_dir, config.data.corpus):
    storage.check(where)  # gs:// without gcsfs or credentials: one message, before anything
  distributed.initialize_from_env()  # before anything asks JAX for devices
  # Several processes: a lost one ends the others with one error line (exit 4).
  with distributed.PeerWatch(args.workdir, EXIT_PEER_LOST,
                            expected=_user_errors() + _training_failures()):
    # Refuse a resume with another model shape before the (possibly long) data preparation,
    # so the error is the only thing said.
    tokenizer = load_tokenizer(config.data.tokenizer)
    resolved = data_lib.resolve_vocab(config, tokenizer)
    resume.check_resume_compatible(args.workdir, resolved)
    tasks.check_lora_targets(resolved)  # names the model's layers before any data work
    # One run per workdir: an existing workdir is locked before the (possibly long) data
    # preparation; a new one when the Trainer creates it.
    with lock.WorkdirLock(args.workdir, create=False):
      return _train_locked(args, config, tokenizer)


def _train_locked(args: argparse.Namespace, config, tokenizer) -> int:
  import jax

  from data_pipelines import storage
  from pretrain import data as data_lib
  from pretrain import exporting
  from t5x_like.training import loop

  if jax.process_count() > 1:  # one process prepares the shared cache, the others wait
    from jax.experimental import multihost_utils
    if jax.process_index() == 0:
      data_lib.prepare_for(config, tokenizer)
    multihost_utils.sync_global_devices("pretrain: data prepared")
  run = data_lib.build(config, tokenizer)
  main = jax.process_index() == 0  # one job: process 0 speaks for it
  if main:
    print(run.manifest.summary(), file=sys.stderr)
  export_fn = None
  out = os.path.join(args.workdir, "export")
  if run.config.train.export_at_end:
    def export_fn(params) -> None:
      if not storage.is_remote(out):
        exporting.export(run.config, params, run.tokenizer, out)
        return
      # gs:// workdir: the HF folder is written in the local mirror, then copied up whole.
      local = exporting.export(run.config, params, run.tokenizer,
                               os.path.join(storage.local_mirror(args.workdir), "export"))
      storage.upload(local, out)
  done = storage.join(args.workdir, DONE_MARKER)
  if main and storage.exists(done):  # a finished run trained further: not done until it ends
    if storage.is_remote(done):
      storage.filesystem(done).rm(done)
    else:
      os.remove(done)
  result = loop.train(run.config, args.workdir, run.hooks, export_fn)
  summary = {"step": result["step"], "train": result["train"], "eval": result["eval"]}
  if result["preempted"]:
    summary["preempted"] = True  # SIGTERM: checkpoint saved, no export; re-run to continue
  if result["skipped_steps"]:
    summary["skipped_steps"] = result["skipped_steps"]  # train.on_nonfinite=skip
  if export_fn is not None:
    summary["export"] = out
  if main:
    if not result["preempted"]:
      # Read by tpu_scripts/babysit.sh: a finished run is not relaunched after a preemption.
      storage.write_text(done, json.dumps(summary) + "\n")
    print(json.dumps(summary))
  return 0


def cmd_eval(args: argparse.Namespace) -> int:
  from pretrain import evaluation
  from t5x_like import distributed
  from t5x_like.config import ConfigError

  if args.length_sweep and args.seq_len:
    raise ConfigError("--seq-len and --length-sweep exclude each other")
  if args.stride is not None and args.length_sweep:
    raise ConfigError("--stride and --length-sweep exclude each other")
  if args.split != "validation" and (args.stride is not None or args.length_sweep):
    raise ConfigError("--split train evaluates the run's rows; --stride and --length-sweep "
                      "read the validation split only")
  lengths = evaluation.parse_lengths(args.length_sweep) if args.length_sweep else None
  distributed.initialize_from_env()
  if args.stride is not None:
    print(json.dumps(evaluation.evaluate_sliding(args.workdir, args.stride, args.step,
                                                 args.seq_len, args.max_batches)))
    return 0
  if lengths:
    for row in evaluation.length_sweep(args.workdir, lengths, args.step, args.max_batches):
      print(json.dumps(row))
    return 0
  print(json.dumps(evaluation.evaluate_workdir(args.workdir, args.step, args.max_batches,
                                               seq_len=args.seq_len, split=args.split)))
  return 0


def cmd_export(args: argparse.Namespace) -> int:
  from data_pipelines.tokenizer import load_tokenizer
  from pretrain import exporting
  from t5x_like.config import ConfigError
  from t5x_like.pretrained import load_pretrained

  exporting.check_target(args.out)  # before the restore, which logs and takes time
  if args.lora == "adapter" and args.base is not None:
    exporting.check_target(args.base)
  model = load_pretrained(args.workdir, args.step)
  if args.lora is not None and model.lora_params is None:
    raise ConfigError(f"--lora {args.lora}: the run in {args.workdir} trained no LoRA adapters "
                      "(lora.rank 0); export it without --lora")
  tokenizer = load_tokenizer(model.config.data.tokenizer)
  if args.lora == "adapter":
    out = exporting.export_adapter(model.config, model.lora_params, tokenizer, args.out,
                                   args.base)
    print(json.dumps({"export": out, "adapter": True,
                      "base": os.path.join(out, "base") if args.base is None
                      else os.path.abspath(args.base), "step": model.step}))
    return 0
  out = exporting.export(model.config, model.params, tokenizer, args.out)
  print(json.dumps({"export": out, "step": model.step}))
  return 0


def cmd_import(args: argparse.Namespace) -> int:
  from data_pipelines.tokenizer import load_tokenizer
  from t5x_like import hf_import, hf_workdir

  hf_workdir.check_workdir(args.workdir)  # before reading the weights, which takes time
  imported = hf_import.import_hf(args.source, allow_pickle=args.allow_pickle)
  # The checkpoint's own tokenizer (tokenizer.json / vocab.txt), copied into the workdir,
  # unless data.tokenizer is overridden.
  own = hf_workdir.tokenizer_folder(args.source)
  own_copy = (os.path.join(os.path.abspath(args.workdir), hf_workdir.TOKENIZER_SUBDIR)
              if own else None)
  overrides, adapter = list(args.overrides), None
  if args.adapter is not None:
    adapter_config, adapter = _read_adapter(args.adapter, imported)
    # The adapter's settings first: an override that contradicts them fails the shape check.
    overrides = [f"lora.{k}={json.dumps(v)}" for k, v in adapter_config.items()] + overrides
  config = hf_workdir.prepare_run(imported, args.config, overrides, tokenizer=own_copy)
  if adapter is not None:
    hf_workdir.check_adapter(adapter, config)  # before anything is said or written
  use_own = own is not None and config.data.tokenizer == own_copy
  for line in imported.report():
    print(line, file=sys.stderr)
  if use_own:  # load it now: a tokenizer we cannot read is an error before anything is written
    tokenizer = load_tokenizer(own)
  else:
    try:
      tokenizer = load_tokenizer(config.data.tokenizer)
    except _user_errors():
      tokenizer = None
  if tokenizer is not None and not (
      tokenizer.vocab_size == config.model.vocab_size
      or (tokenizer.kind == "hf" and tokenizer.vocab_size < config.model.vocab_size)):
    why = ("" if own or tokenizer.kind == "hf" else
           " (the checkpoint folder has no tokenizer.json or vocab.txt to use instead)")
    print(f"warning: the checkpoint's vocabulary has {config.model.vocab_size} ids but "
          f"data.tokenizer {config.data.tokenizer!r} has {tokenizer.vocab_size}; `pretrain "
          f"train` refuses this mismatch{why}", file=sys.stderr)
  summary = hf_workdir.write_workdir(imported, config, args.workdir,
                                     tokenizer_from=own if use_own else None, adapter=adapter)
  print(json.dumps({"workdir": summary["workdir"], "step": 0,
                    "checkpoint": summary["checkpoint"], "family": imported.family,
                    "tokenizer": config.data.tokenizer,
                    "ignored": len(imported.ignored),
                    "newly_initialized": len(imported.new_params)}))
  return 0


def _read_adapter(folder: str, imported) -> tuple[dict, dict]:
  """A peft adapter's `lora` settings (our targets) and tensors, for `import --adapter`."""
  import re

  from t5x_like import families
  from t5x_like.export import peft

  adapter_config, tensors = peft.read_adapter(folder)
  family = families.get(imported.family)
  def fold(paths: list[str]) -> list[str]:  # one pattern per layer-stack module
    return sorted({re.sub(r"(^|/)layer_\d+(?=/)", r"\1*", p) for p in paths})

  targets = fold(peft.adapter_targets(tensors, family, imported.model_config))
  saved = fold(peft.saved_modules(tensors, family, imported.model_config))
  return peft.lora_fields(adapter_config, targets, saved), tensors


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
  _, _, manifest = data_lib.prepare_for(config, runner=args.runner,
                                        beam_options=args.beam_options)
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
  p.add_argument("--max-batches", type=int, default=0, help="0 = the whole split")
  p.add_argument("--split", default="validation", choices=("validation", "train"),
                 help="train: the training rows in order, masked as in an eval pass, to "
                      "compare with the held-out figures (cap it with --max-batches)")
  p.add_argument("--seq-len", type=int, default=None,
                 help="evaluate at this row length instead of the trained one")
  p.add_argument("--stride", type=int, default=None,
                 help="decoder-only runs: sliding-window perplexity over the validation text "
                      "as one stream, windows of --seq-len (default the trained length) "
                      "moved by this many tokens")
  p.add_argument("--length-sweep", default=None, metavar="N,N,...",
                 help="evaluate at each length (e.g. 128,256,512,1024): one JSON line each, "
                      "also written to WORKDIR/length_sweep.jsonl for `pretrain plot`")
  p.set_defaults(fn=cmd_eval)

  p = sub.add_parser("export", help="write a HuggingFace transformers folder")
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--lora", choices=("adapter", "merge"), default=None,
                 help="a LoRA run: 'adapter' writes a peft folder (adapter_config.json + "
                      "adapter_model.safetensors) and the frozen base it adapts (OUT/base, or "
                      "--base); 'merge' (the default for a LoRA run) a plain transformers "
                      "folder with the adapters merged in float32")
  p.add_argument("--base", default=None, metavar="DIR",
                 help="with --lora adapter: where to write the base model's transformers "
                      "folder (default OUT/base); adapter_config.json points at it")
  p.set_defaults(fn=cmd_export)

  p = sub.add_parser(
      "import", help="start a run from a HuggingFace checkpoint folder",
      description="Import a local HuggingFace folder (config.json + model.safetensors) of a "
                  "bert, t5 (v1.1), bart or xlnet model into --workdir: config.yaml (model "
                  "section from the checkpoint, the rest from --config) and a checkpoint at "
                  "step 0 that `pretrain train --config WORKDIR/config.yaml --workdir "
                  "WORKDIR` resumes from. The step restarts at 0 with a new optimiser state "
                  "(and learning-rate schedule) from train's optim settings, which may "
                  "differ from the import's; tensors the model cannot use are listed as "
                  "ignored, params the checkpoint lacks as newly initialised. The folder's "
                  "tokenizer (tokenizer.json or vocab.txt) is copied to WORKDIR/tokenizer "
                  "and becomes data.tokenizer, so training uses the checkpoint's ids.")
  p.add_argument("--from", dest="source", required=True, metavar="DIR",
                 help="HuggingFace model folder (config.json and weights)")
  p.add_argument("--workdir", required=True, help="new run directory (must hold no "
                 "checkpoints)")
  p.add_argument("--config", default=None,
                 help=f"preset ({', '.join(list_presets())}) or YAML path for the data, "
                      "objective, optimiser and train settings; default: the family's tiny "
                      "preset (e.g. bert_tiny)")
  p.add_argument("--allow-pickle", action="store_true",
                 help="read pytorch_model.bin when there is no model.safetensors (with "
                      "torch.load(weights_only=True))")
  p.add_argument("--adapter", default=None, metavar="PEFT_DIR",
                 help="a peft LoRA adapter of the --from model (adapter_config.json + "
                      "adapter_model.safetensors): the run continues training it (its r, "
                      "lora_alpha, dropout and targets become the lora section)")
  p.add_argument("overrides", nargs="*", metavar="key.path=value",
                 help="dotted overrides of the resulting config, e.g. data.seq_len=64")
  p.set_defaults(fn=cmd_import)

  p = sub.add_parser("generate", help="continue a prompt with a decoder-only run's model")
  p.add_argument("--workdir", required=True)
  prompt = p.add_mutually_exclusive_group(required=True)
  prompt.add_argument("--prompt", help="the text to continue")
  prompt.add_argument("--prompt-file", help="a UTF-8 file holding the text to continue")
  p.add_argument("--max-new-tokens", type=int, default=64)
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default)")
  p.add_argument("--top-k", type=int, default=0, help="0 = off")
  p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--step", type=int, default=None)
  p.set_defaults(fn=cmd_generate)

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
  d.add_argument("--runner", choices=("local", "beam"), default="local",
                 help="local: data.prepare_workers processes on this machine; beam: an Apache "
                      "Beam pipeline (DirectRunner, or Dataflow with --beam-options), same output")
  d.add_argument("--beam-options", default="",
                 help="Beam pipeline flags in one string, e.g. '--runner=DataflowRunner "
                      "--project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py'")
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
  except _training_failures() as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_TRAINING_FAILED


def console_main() -> None:
  """Entry point of the `pretrain` console script."""
  # A process other than 0 of a multi-process job runs as a child of a JAX-free parent, which
  # turns JAX's C++ abort on losing process 0 into one `error:` line (pretrain/supervise.py).
  supervise.supervise_if_needed(EXIT_PEER_LOST)
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
