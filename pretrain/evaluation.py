"""`pretrain eval`: metrics of a saved checkpoint on the validation split."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from data_pipelines import pipeline, storage
from data_pipelines.vocab import IGNORE_INDEX
from pretrain import data as data_lib
from t5x_like import checkpointing, pretrained
from t5x_like.config import ConfigError, read_config, replace
from t5x_like.training import evaluation as evaluation_lib
from t5x_like.training import loop
from t5x_like.training import step as step_lib

# `pretrain eval --length-sweep` writes its table here (pretrain plot draws it).
LENGTH_SWEEP_FILE = "length_sweep.jsonl"


def _restore_for_eval(config: Any, workdir: str, step: int | None) -> tuple[Any, Any, int, Any]:
  """The run's trainer, the params of `step` (latest if None; no optimiser state), the step
  restored, and the jitted eval step."""
  trainer = loop.Trainer(config, workdir)
  ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), read_only=True)
  try:
    if trainer.lora is None:
      params, _, restored = ckpt.restore_params(step, trainer.abstract.params)
    else:  # the step's adapters over the base in lora_base/
      params, restored = pretrained.restore_lora_params(ckpt, step, trainer.abstract.params,
                                                        trainer.lora, workdir)
  finally:
    ckpt.close()
  eval_step = step_lib.jit_eval_step(evaluation_lib.make_eval_step(trainer.task),
                                     trainer.state_sh.params, trainer.batch_sh, trainer.mesh,
                                     trainer.state_sh.mems)
  return trainer, params, restored, eval_step


SPLITS = ("validation", "train")


def evaluate_workdir(workdir: str, step: int | None = None, max_batches: int = 0,
                     seq_len: int | None = None, split: str = "validation") -> dict[str, Any]:
  """Metrics of a checkpoint on the validation split (or `split="train"`: the training rows
  in order, with the same masks as an eval pass, to compare held-out with seen text);
  `seq_len` evaluates at another row length than the run trained with (the data is prepared
  at that length; a family with a learned position table refuses lengths beyond it)."""
  if split not in SPLITS:
    raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
  path = os.path.join(workdir, "config.yaml")
  if not os.path.exists(path):
    raise ConfigError(f"{workdir} is not a run directory: {path} does not exist")
  config = read_config(path)
  if seq_len is not None:
    if seq_len < 8:
      raise ConfigError(f"--seq-len must be >= 8, got {seq_len}")
    config = replace(config, data={"seq_len": seq_len, "target_len": 0})
  run = data_lib.build(config)
  trainer, params, restored, eval_step = _restore_for_eval(run.config, workdir, step)
  with step_lib.mesh_context(trainer.mesh):
    metrics = evaluation_lib.evaluate(eval_step, params, run.hooks.make_eval(split),
                                      trainer.batch_sh, trainer.task.features, max_batches,
                                      run.hooks.baseline_token, trainer.zero_mems())
  return {"step": restored, "split": split, "seq_len": run.config.data.seq_len,
          **metrics, "devices": jax.device_count()}


def parse_lengths(text: str) -> list[int]:
  try:
    lengths = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ConfigError(f"--length-sweep takes lengths separated by commas, e.g. "
                      f"128,256,512,1024; got {text!r}") from None
  if not lengths or min(lengths) < 8:
    raise ConfigError(f"--length-sweep needs lengths >= 8, got {text!r}")
  return lengths


def length_sweep(workdir: str, lengths: list[int], step: int | None = None,
                 max_batches: int = 0) -> list[dict[str, Any]]:
  """`evaluate_workdir` at each length; the rows are also written to
  WORKDIR/length_sweep.jsonl (replaced whole) for `pretrain plot`."""
  rows = [evaluate_workdir(workdir, step, max_batches, seq_len=n) for n in lengths]
  if jax.process_index() == 0:
    storage.write_text(os.path.join(workdir, LENGTH_SWEEP_FILE),
                       "".join(json.dumps(r) + "\n" for r in rows))
  return rows


def sliding_windows(stream: np.ndarray, length: int, stride: int
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(inputs, labels) windows of at most `length` positions over a token stream, each target
  scored exactly once: window k reads tokens [b, e] (b = k * stride, e = min(b + length, N - 1))
  and scores the targets after the previous window's end, each with the most context the
  window holds (>= length - stride tokens after the first window). HF's "perplexity of
  fixed-length models" method, counting every token of the stream but the first."""
  n = len(stream)
  prev_end = 0
  for begin in range(0, n - 1, stride):
    end = min(begin + length, n - 1)
    window = stream[begin:end + 1]
    inputs, labels = window[:-1].copy(), window[1:].copy()
    labels[: len(labels) - (end - prev_end)] = IGNORE_INDEX
    yield inputs, labels
    prev_end = end
    if end == n - 1:
      break


def evaluate_sliding(workdir: str, stride: int, step: int | None = None,
                     seq_len: int | None = None, max_batches: int = 0) -> dict[str, Any]:
  """Perplexity of a decoder-only run over its validation text as one stream (documents
  joined by EOS), read in windows of seq_len (default: the trained length) moved by
  `stride`; see `sliding_windows`."""
  from t5x_like import families

  path = os.path.join(workdir, "config.yaml")
  if not os.path.exists(path):
    raise ConfigError(f"{workdir} is not a run directory: {path} does not exist")
  config = read_config(path)
  if not families.get(config.model.family).decoder_only:
    raise ConfigError(f"--stride (sliding-window perplexity) needs a decoder-only model; "
                      f"model.family is {config.model.family!r}")
  length = seq_len or config.data.seq_len
  if not 1 <= stride <= length:
    raise ConfigError(f"--stride must be in [1, {length}] (the window length), got {stride}")
  if jax.process_count() > 1:
    raise ConfigError("--stride runs in one process (the windows are cut on this host)")
  # The stream: the validation split in blocks mode (documents joined by EOS, in order).
  objective = {"add_bos": False} if hasattr(config.objective, "add_bos") else {}
  config = replace(config, data={"seq_len": length, "pack_documents": False, "target_len": 0},
                   objective=objective)
  config, _, manifest = data_lib.prepare_for(config)
  records = pipeline.num_records(manifest.directory, "validation")
  stream = np.concatenate([pipeline.read_segments(manifest.directory, "validation", i)[0]
                           for i in range(records)])
  trainer, params, restored, eval_step = _restore_for_eval(config, workdir, step)
  rows = config.train.batch_size

  def batches() -> Iterator[dict[str, np.ndarray]]:
    windows = list(sliding_windows(stream, length, stride))
    for start in range(0, len(windows), rows):
      ids = np.zeros((rows, length), np.int32)
      labels = np.full((rows, length), IGNORE_INDEX, np.int32)
      for r, (x, y) in enumerate(windows[start:start + rows]):
        ids[r, :len(x)], labels[r, :len(y)] = x, y
      yield {"input_ids": ids, "labels": labels}

  with step_lib.mesh_context(trainer.mesh):
    metrics = evaluation_lib.evaluate(eval_step, params, batches(), trainer.batch_sh,
                                      trainer.task.features, max_batches)
  return {"step": restored, "split": "validation", "seq_len": length, "stride": stride,
          "stream_tokens": len(stream), **metrics}

