"""Does a tiny ALBERT learn sentence order on the bundled corpus? A training study, not a
speed benchmark: two arms train the same model from the same seed on the same blocks.

- `whole`: the objective's rows (`sentence_order.make_example`): both segments are whole
  sentences, so the order is a matter of discourse (what follows what).
- `edge`: the same rows with the block's partial first / last sentence kept
  (`SOPParams.whole_sentences=False`): in order the first segment ends with a full stop and
  the second stops mid-sentence, swapped the reverse, a cue one token wide.

Each arm reports the SOP loss (mean over the last `--log-every` training batches) and the
held-out SOP loss and accuracy on the validation split's rows, plus how often the edge cue
alone ("the first segment ends with a full stop" means in order) predicts the held-out label.
The `edge` arm shows that the SOP path (rows, labels, [CLS] pooler, head, loss, optimizer)
learns an order cue from real rows; the `whole` arm shows whether the model finds the order
without one. docs/objectives.md ("SOP at tiny scale") has the figures. Run from the repo root:

  python -m benchmarks.study_sop [--arms whole,edge] [--steps 600] [--batch 128]
      [--seq-len 64] [--lr 1e-3] [--log-every 50] [--json out.json] [key.path=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

import jax
import numpy as np
import optax

from benchmarks.train_spec import stack_rows
from data_pipelines import pipeline
from data_pipelines.objectives import sentence_order as sop
from pretrain import data as run_data
from t5x_like import config as config_lib
from t5x_like.objectives import sentence_order as sop_objective
from t5x_like.training import optimizer as optimizer_lib

ARMS = ("whole", "edge")


def _rows(directory: str, split: str, indices: np.ndarray, rng: np.random.Generator,
          params: sop.SOPParams, vocab: Any) -> dict[str, np.ndarray]:
  return stack_rows([sop.make_example(pipeline.read_block(directory, split, int(i)), rng,
                                     params, vocab) for i in indices])


def edge_cue_accuracy(rows: dict[str, np.ndarray], vocab: Any) -> float:
  """Share of rows whose label is 0 exactly when the first segment ends with a full stop."""
  ids = np.where(rows["labels"] >= 0, rows["labels"], rows["input_ids"])
  last_of_first = np.argmax(rows["token_type_ids"] == 1, axis=1) - 2  # before the inner [SEP]
  ends = np.asarray(vocab.sentence_end, bool)[ids[np.arange(len(ids)), last_of_first]]
  return float(np.mean(ends.astype(int) == 1 - rows[sop_objective.LABEL]))


def run_arm(arm: str, config: config_lib.Config, tokenizer: Any, directory: str,
            args: argparse.Namespace) -> dict[str, Any]:
  vocab = tokenizer.vocab_info()
  params = dataclasses.replace(sop_objective.params(config), whole_sentences=arm == "whole")
  n_train = pipeline.num_records(directory, "train")
  n_val = pipeline.num_records(directory, "validation")
  val = _rows(directory, "validation", np.arange(n_val), np.random.default_rng(1), params, vocab)
  task = sop_objective.SentenceOrderTask(config)
  model_params = task.init(jax.random.key(args.seed))["params"]
  tx = optimizer_lib.make_optimizer(config.optim, args.steps)
  opt = tx.init(model_params)

  @jax.jit
  def step(p, o, batch):
    def mean_loss(p):
      total, aux = task.loss(p, batch, None, True)
      return total / aux["count"], aux
    (_, aux), grads = jax.value_and_grad(mean_loss, has_aux=True)(p)
    updates, o = tx.update(grads, o, p)
    sop_sum, rows = aux["ratios"]["sop_loss"]
    return optax.apply_updates(p, updates), o, sop_sum / rows

  @jax.jit
  def evaluate(p, batch):
    _, aux = task.loss(p, batch, None, True)
    return aux["ratios"]["sop_loss"][0], aux["ratios"]["sop_accuracy"][0]

  held_rows = (n_val // args.batch) * args.batch  # whole batches: one compile

  def held_out(p) -> tuple[float, float]:
    loss = correct = 0.0
    for s in range(0, held_rows, args.batch):
      l, c = evaluate(p, {k: v[s:s + args.batch] for k, v in val.items()})
      loss, correct = loss + float(l), correct + float(c)
    return loss / held_rows, correct / held_rows

  rng = np.random.default_rng(args.seed)
  log, recent, start = [], [], time.perf_counter()
  for i in range(1, args.steps + 1):
    batch = _rows(directory, "train", rng.integers(0, n_train, args.batch), rng, params, vocab)
    batch = {k: v for k, v in batch.items() if k in task.features}
    model_params, opt, sop_loss = step(model_params, opt, batch)
    recent.append(float(sop_loss))
    if i % args.log_every == 0 or i == args.steps:
      loss, accuracy = held_out(model_params)
      log.append({"step": i, "train_sop_loss": float(np.mean(recent)),
                  "heldout_sop_loss": loss, "heldout_sop_accuracy": accuracy})
      recent = []
      print(f"{arm:5s} step {i:5d}  train sop {log[-1]['train_sop_loss']:.3f}  held-out sop "
            f"{loss:.3f} acc {accuracy:.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)
  return {"arm": arm, "edge_cue_accuracy": edge_cue_accuracy(val, vocab),
          "heldout_rows": held_rows,
          "heldout_majority": float(max(np.mean(val[sop_objective.LABEL][:held_rows]),
                                        1 - np.mean(val[sop_objective.LABEL][:held_rows]))),
          "log": log}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arms", default=",".join(ARMS))
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--seq-len", type=int, default=64)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--log-every", type=int, default=50)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", default=None)
  parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                      help="config overrides on top of albert_tiny (e.g. optim.eps=1e-8)")
  args = parser.parse_args(argv)
  arms = [a for a in args.arms.split(",") if a]
  unknown = sorted(set(arms) - set(ARMS))
  if unknown:
    parser.error(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
  config = config_lib.load_config("albert_tiny", [
      "mesh.data=1", f"data.seq_len={args.seq_len}", f"train.batch_size={args.batch}",
      f"model.max_position_embeddings={max(128, args.seq_len)}",
      f"optim.learning_rate={args.lr}", f"train.steps={args.steps}", *args.overrides])
  config, tokenizer, manifest = run_data.prepare_for(config)
  print(f"albert_tiny, rows of {args.seq_len}, batch {args.batch}, AdamW {args.lr} "
        f"({config.optim.schedule}, warmup {config.optim.warmup_steps}, eps {config.optim.eps}, "
        f"clip {config.optim.grad_clip_norm}), {args.steps} steps",
        flush=True)
  results = [run_arm(arm, config, tokenizer, manifest.directory, args) for arm in arms]
  for r in results:
    last = r["log"][-1]
    print(f"{r['arm']}: edge cue predicts {r['edge_cue_accuracy']:.3f} of the held-out labels "
          f"(majority {r['heldout_majority']:.3f} of {r['heldout_rows']}); at step "
          f"{last['step']} held-out SOP loss {last['heldout_sop_loss']:.3f}, accuracy "
          f"{last['heldout_sop_accuracy']:.3f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
