"""`pretrain plot`: loss (and accuracy) curves of a run from its metrics.jsonl, as a PNG."""

from __future__ import annotations

import json
import os

from t5x_like.config import ConfigError


def read_metrics(workdir: str) -> dict[str, list[dict]]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise ConfigError(f"{path} does not exist: nothing to plot (has the run logged a step?)")
  by_split: dict[str, list[dict]] = {}
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        raise ConfigError(f"{path}:{n} is not a JSON line") from None
      by_split.setdefault(record.get("split", "train"), []).append(record)
  # A resumed run re-logs steps after its checkpoint: keep the last value per step.
  for split, records in by_split.items():
    latest = {r["step"]: r for r in records}
    by_split[split] = [latest[s] for s in sorted(latest)]
  return by_split


def read_length_sweep(workdir: str) -> list[dict]:
  """The rows of `pretrain eval --length-sweep` (empty if it was not run)."""
  path = os.path.join(workdir, "length_sweep.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    try:
      return [json.loads(line) for line in f if line.strip()]
    except json.JSONDecodeError:
      raise ConfigError(f"{path} is not JSON lines (written by pretrain eval "
                        f"--length-sweep)") from None


def plot_workdir(workdir: str, out: str | None = None) -> str:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  metrics = read_metrics(workdir)
  sweep = read_length_sweep(workdir)
  out = out or os.path.join(workdir, "loss.png")
  fig, axes = plt.subplots(1, 3 if sweep else 2, figsize=(16 if sweep else 11, 4))
  ax_loss, ax_acc = axes[0], axes[1]
  if sweep:  # `pretrain eval --length-sweep`: perplexity against the evaluation length
    ax_len = axes[2]
    ax_len.plot([r["seq_len"] for r in sweep], [r["perplexity"] for r in sweep], "o-",
                label=f"step {sweep[0]['step']}")
    ax_len.set_xscale("log", base=2)
    ax_len.set_xlabel("evaluation length (tokens)")
    ax_len.set_ylabel("validation perplexity")
    ax_len.grid(alpha=0.3)
    ax_len.legend()
  for split, style in (("train", "-"), ("eval", "o-")):
    records = metrics.get(split, [])
    if not records:
      continue
    steps = [r["step"] for r in records]
    ax_loss.plot(steps, [r["loss"] for r in records], style, label=f"{split} loss")
    ax_acc.plot(steps, [r["accuracy"] for r in records], style, label=f"{split} accuracy")
  baselines = [r["unigram_baseline_accuracy"] for r in metrics.get("eval", [])
               if "unigram_baseline_accuracy" in r]
  if baselines:
    ax_acc.axhline(baselines[-1], color="gray", linestyle="--",
                   label="unigram baseline (eval)")
  ax_loss.set_xlabel("step")
  ax_loss.set_ylabel("cross-entropy (nats / predicted token)")
  ax_acc.set_xlabel("step")
  ax_acc.set_ylabel("accuracy of predicted tokens")
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(os.path.basename(os.path.abspath(workdir)))
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out
