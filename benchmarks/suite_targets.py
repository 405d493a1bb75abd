"""The targets each suite's report is judged against, and how a stored entry is judged.

A suite's `targets` function turns its child's JSON report into `Target` rows (what, the
measured figure, the goal, met or not); `suite_targets` applies it to a stored entry, leaving
quick-settings figures unjudged and naming a report this version cannot read.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  from benchmarks.suites import Suite

Report = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Target:
  what: str
  figure: str
  goal: str
  met: bool | None  # None: not judged (quick settings, or a report that cannot be read)

  def verdict(self) -> str:
    return "not judged" if self.met is None else ("met" if self.met else "**NOT met**")



def pct(x: float) -> str:
  """A fraction as a percentage with one decimal."""
  return f"{100 * x:.1f}%"


def train_targets(peer: str, min_ratio: float, mfu_shapes: dict[str, float] | None = None
                   ) -> Callable[[Report], list[Target]]:
  def targets(report: Report) -> list[Target]:
    out = []
    for r in report["results"]:
      out.append(Target(f"{r['shape']}: train tokens/s vs HF {peer}", f"{r['ratio']:.2f}×",
                        f"≥ {min_ratio:.2f}×", r["ratio"] >= min_ratio))
      want = (mfu_shapes or {}).get(r["shape"])
      if want is not None:
        out.append(Target(f"{r['shape']}: MFU (measured matmul peak)", pct(r["ours_mfu"]),
                          f"≥ {100 * want:.0f}%", r["ours_mfu"] >= want))
    return out
  return targets


def generate_targets(min_ratio: float) -> Callable[[Report], list[Target]]:
  """Per model: greedy tokens/s over HF `generate`'s; tokens that differ fail the row, as the
  two sides did not compute the same thing."""
  def targets(report: Report) -> list[Target]:
    return [Target(f"{r['model']}: greedy generation tokens/s vs HF {r['hf_class']}.generate "
                   f"(KV cache, batch 1, {r['prompt_len']} + {r['new_tokens']} tokens)",
                   f"{r['ratio']:.2f}×", f"≥ {min_ratio:.2f}×",
                   r["ratio"] >= min_ratio and r["identical"]) for r in report["results"]]
  return targets


def rate_target(what: str) -> Callable[[Report], list[Target]]:
  def targets(report: Report) -> list[Target]:
    rate, want = report["results"][0]["tokens_per_s"], report["target_tokens_per_s"]
    return [Target(what, f"{rate / 1e6:.2f} M/s", f"≥ {want / 1e6:.1f} M/s", rate >= want)]
  return targets


def mlm_targets(report: Report) -> list[Target]:
  row = next(r for r in report["results"]
             if r["variant"].startswith("ours make_example, token, rng per record"))
  return [Target("MLM objective tokens/s vs HF DataCollatorForLanguageModeling (one core)",
                 f"{row['vs_hf']:.2f}×", "≥ 1.50×", row["vs_hf"] >= 1.5)]


def prepare_targets(report: Report) -> list[Target]:
  """Issue 24: 1 -> 2 workers, 2 workers vs HF datasets' map(num_proc=2), flat memory."""
  rows = {(r["side"], r["workers"], r["size_mb"]): r for r in report["results"]}
  sizes = sorted({r["size_mb"] for r in report["results"]})
  small, large = rows["ours", 2, sizes[0]], rows["ours", 2, sizes[-1]]
  by_size = report.get("speedup_2_vs_1_by_size", {})
  others = "; ".join(f"{v:.2f}× at {k} MB" for k, v in by_size.items()
                     if int(k) != sizes[-1])
  return [Target(f"data prepare tokens/s, 2 workers vs 1 ({sizes[-1]} MB of JSON lines, "
                 f"{report['cpus']} cores)",
                 f"{report['speedup_2_vs_1']:.2f}×" + (f" ({others})" if others else ""),
                 "≥ 1.70×", report["speedup_2_vs_1"] >= 1.7),
          Target(f"data prepare tokens/s, 2 workers vs HF datasets load_dataset + "
                 f"map(batched=True, num_proc=2), same SentencePiece model ({sizes[0]} MB)",
                 f"{report['vs_hf']:.2f}×", "≥ 2.00×", report["vs_hf"] >= 2.0),
          Target(f"data prepare peak host memory (all processes), {sizes[-1]} MB vs "
                 f"{sizes[0]} MB corpus", f"{large['peak_mb']} vs {small['peak_mb']} MB "
                 f"({report['memory_growth']:.2f}×)", "≤ 1.25× (flat)",
                 report["memory_growth"] <= 1.25)]


@functools.cache
def smallest_preset_save_interval() -> tuple[int, str]:
  """(checkpoint.every, preset) of the preset that saves most often."""
  from t5x_like import config as config_lib

  return min((config_lib.load_config(name).checkpoint.every, name)
             for name in config_lib.list_presets())


def checkpoint_targets(report: Report) -> list[Target]:
  """The async save's cost per step as measured (a save every `every` steps), and the same
  measured cost of one save spread over the shortest interval a preset uses."""
  overhead = report["overhead"]["async"]
  every, preset = smallest_preset_save_interval()
  at_preset = report["save_cost_steps"]["async"] / every
  return [Target(f"async checkpoint save, cost per step ({report['shape']}, every "
                 f"{report['every']} steps, as measured)", f"{100 * overhead:+.1f}%", "< 5%",
                 overhead < 0.05),
          Target(f"async checkpoint save, cost per step at the shortest preset interval "
                 f"(every {every} steps, {preset}; measured cost of one save / {every})",
                 f"{100 * at_preset:+.2f}%", "< 5%", at_preset < 0.05)]


def lora_targets(report: Report) -> list[Target]:
  """Issue 20's LoRA targets, judged on the default-targets LoRA row (`lora_qv`: rank 8 on
  the family's default targets); other LoRA rows are context in the table."""
  r = next(r for r in report["results"] if r["mode"] == "lora_qv")
  what = (f"{report['shape']}: LoRA rank {r['lora_rank']} on {', '.join(r['lora_targets'])} "
          "vs full training")
  return [Target(f"{what}, optimiser state", f"{r['opt_state_smaller']:,.0f}× smaller",
                 "≥ 20× smaller", r["opt_state_smaller"] >= 20),
          Target(f"{what}, step checkpoint on disk", f"{r['checkpoint_smaller']:,.0f}× smaller",
                 "≥ 20× smaller", r["checkpoint_smaller"] >= 20),
          Target(f"{what}, median step time", f"{r['step_time_vs_full']:.2f}×", "≤ 0.80×",
                 r["step_time_vs_full"] <= 0.8)]


def suite_targets(suite: Suite, entry: dict[str, Any]) -> list[Target]:
  """The suite's targets judged on its report ([] if it has none). Figures from quick
  settings are shown but not judged; a report this version cannot read (an older benchmark's)
  gives one "not judged" row naming the suite (`_stale` says more in its table)."""
  if "report" not in entry:
    return []
  try:
    targets = suite.targets(entry["report"])
  except (KeyError, IndexError, StopIteration, TypeError):
    return [Target(f"{suite.name}: stored report unreadable, re-run with --only "
                   f"{suite.name}", "–", "–", None)]
  if entry.get("quick"):
    return [dataclasses.replace(t, what=f"{t.what} (quick settings)", met=None)
            for t in targets]
  return targets
