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


def plot_workdir(workdir: str, out: str | None = None) -> str:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  metrics = read_metrics(workdir)
  out = out or os.path.join(workdir, "loss.png")
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
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
