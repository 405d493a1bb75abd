"""The generated section of docs/benchmarks.md: rendered from the results, written between
the markers; the results file (docs/benchmarks.json) read and written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from benchmarks.suite_targets import suite_targets
from benchmarks.suites import SUITES, Suite

BEGIN = "<!-- run_all:begin -->"
END = "<!-- run_all:end -->"


def _stale(suite: Suite, error: Exception) -> list[str]:
  return [(f"(This suite's stored report cannot be rendered — {type(error).__name__}: "
          f"{error} — it is probably from an older version of the benchmark; re-run it with "
          f"`python -m benchmarks.run_all --only {suite.name}`.)")]


_VERSIONED = ("python", "jax", "flax", "optax", "numpy", "torch", "transformers")


def _version_notes(entries: dict[str, Any], facts: dict[str, Any],
                   suites: tuple[Suite, ...]) -> list[str]:
  """Lines naming the suites whose stored results were measured with other package versions
  than the machine line says (or before run_all recorded versions per suite)."""
  notes = []
  for suite in suites:
    e = entries.get(suite.name)
    if e is None:
      continue
    own = e.get("machine")
    if own is None:
      notes.append(f"{suite.name}: package versions not recorded (run before they were kept "
                   "per suite)")
      continue
    diff = [f"{k} {own.get(k, '?')}" for k in _VERSIONED if own.get(k) != facts.get(k)]
    if diff:
      notes.append(f"{suite.name}: measured with {', '.join(diff)}")
  if not notes:
    return []
  return ["", "Suites measured under other versions than the machine line: "
          + "; ".join(notes) + "."]


def _cores(entry: dict[str, Any], key: str) -> str:
  return "–" if entry.get(key) is None else f"{entry[key]:.2f}"


def render(results: dict[str, Any], suites: tuple[Suite, ...] = SUITES) -> str:
  """The Markdown between the markers, from the results file's content."""
  entries = results.get("suites", {})
  facts = results.get("machine", {})
  lines = [BEGIN, "## Latest results (generated)", "",
           ("Written by `python -m benchmarks.run_all` from `docs/benchmarks.json`; do not edit "
           "by hand. Each suite ran as its own process, alone, one after another; the sections "
           "after this one describe what each benchmark compares and how."), ""]
  if facts:
    fact = lambda k: facts.get(k, "?")
    lines += [(f"Machine (the latest run): {fact('nproc')} CPUs ({fact('cpu')}), Python "
              f"{fact('python')}, jax {fact('jax')}, flax {fact('flax')}, optax {fact('optax')}, numpy "
              f"{fact('numpy')}, torch {fact('torch')}, transformers {fact('transformers')}."),
              ""]
  lines += [("| suite | run at (UTC) | wall s | other processes' CPU (cores) | steal (cores) | "
            "peak host MB | command |"), "|---|---|---:|---:|---:|---:|---|"]
  for suite in suites:
    e = entries.get(suite.name)
    if e is None:
      continue
    quick = " (quick)" if e.get("quick") else ""
    lines.append(f"| {suite.name}{quick} | {e.get('utc', '?')} | {e.get('wall_s', 0):.0f} | "
                 f"{_cores(e, 'other_cpu_cores')} | {_cores(e, 'steal_cores')} | "
                 f"{e.get('peak_rss_mb', 0):,.0f} | `{e.get('command', '?')}` |")
  lines += _version_notes(entries, facts, suites)
  lines += ["", ("Other processes' CPU: CPU time the whole machine used during the suite minus the "
            "suite's own, per second (0 = a quiet machine; this VM has "
            f"{facts.get('nproc', '?')} cores). Steal: CPU time the hypervisor gave to other "
            "guests instead, per second (a busy host slows every suite without showing in "
            "the first figure). Peak host MB: the suite process's peak resident "
            "memory; the train suites hold both sides (JAX and PyTorch) in one process, the "
            "checkpoint suite only ours."), "",
            "### Targets", "", "| target | measured | goal | |", "|---|---:|---:|---|"]
  for suite in suites:
    e = entries.get(suite.name)
    if e is None:
      continue
    for t in suite_targets(suite, e):
      lines.append(f"| {t.what} | {t.figure} | {t.goal} | {t.verdict()} |")
  for suite in suites:
    e = entries.get(suite.name)
    if e is None or "report" not in e:
      continue
    quick = " — quick smoke settings, not comparable" if e.get("quick") else ""
    lines += ["", f"### {suite.name}: {suite.title}{quick}", "",
              f"`{e.get('command', '?')}` — {e.get('utc', '?')} UTC, {e.get('wall_s', 0):.0f} s.",
              ""]
    try:
      lines += suite.table(e["report"])
    except (KeyError, IndexError, StopIteration, TypeError) as error:
      lines += _stale(suite, error)
  lines.append(END)
  return "\n".join(lines) + "\n"


def check_markdown(path: Path) -> None:
  """Refuses, before any suite runs, an output that `write_markdown` could not update."""
  if path.suffix == ".json":
    raise SystemExit(f"error: --out {path} names the results file itself; give the Markdown "
                     f"(results go to {path.with_suffix('.json').name} beside it)")
  if not path.parent.is_dir():
    raise SystemExit(f"error: --out {path}: directory {path.parent} does not exist")
  if path.exists():
    _marked_section(path, path.read_text(encoding="utf-8"))


def _marked_section(path: Path, text: str) -> tuple[int, int]:
  """(start of BEGIN, start of END) in `text`; refuses a file without the two markers."""
  begin, end = text.find(BEGIN), text.find(END)
  if begin < 0 or end < begin:
    raise SystemExit(f"error: {path} has no '{BEGIN}' ... '{END}' section to replace; add the "
                     "two marker lines where the generated summary should go")
  return begin, end


def write_markdown(path: Path, section: str) -> None:
  """Replaces the marked section of `path` (creating the file if it does not exist)."""
  if not path.exists():
    path.write_text("# Benchmarks\n\n" + section, encoding="utf-8")
    return
  text = path.read_text(encoding="utf-8")
  begin, end = _marked_section(path, text)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text[:begin] + section + text[end + len(END) + 1:], encoding="utf-8")
  os.replace(tmp, path)


def load_results(path: Path | None) -> dict[str, Any]:
  """The results file's content ({"suites": {}} when there is none); refuses a file that is
  not a run_all results file rather than overwrite it."""
  results: dict[str, Any] = {"suites": {}}
  if path is not None and path.exists():
    try:
      results = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
      raise SystemExit(f"error: {path} is not valid JSON ({e}); fix or remove it")
    if not isinstance(results, dict) or not isinstance(results.get("suites", {}), dict):
      raise SystemExit(f"error: {path} is not a run_all results file; fix or remove it")
    results.setdefault("suites", {})
  return results


def save_results(path: Path, results: dict[str, Any]) -> None:
  """Writes the results file whole (temporary file + rename: never half written)."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
  os.replace(tmp, path)
