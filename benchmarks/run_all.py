"""Runs every benchmark with one command and writes the summary of docs/benchmarks.md.

  python -m benchmarks.run_all                        # every suite, full settings
  python -m benchmarks.run_all --only train_t5,checkpoint
  python -m benchmarks.run_all --quick --out /tmp/quick.md   # smoke run, tiny settings
  python -m benchmarks.run_all --render                # re-render from docs/benchmarks.json

Each suite is one benchmark module run as its own child process (`python -m
benchmarks.<module> ... --json F`), one after another, so no two ever compete for the cores
and each child's peak memory is its own. Kept per suite: the child's JSON report, its wall
time, its peak resident memory (`ru_maxrss` from `os.wait4`), the CPU other processes and
other guests (steal) used meanwhile, the package versions, the exact command and the UTC
time. Results live in a JSON file next to the Markdown (docs/benchmarks.json): a suite not
run this time keeps its last results and date, and a suite that fails keeps its previous
results (the run then exits 1). The part of the Markdown between the two `run_all` markers
is rendered from that file: every target with its figure and met / NOT met, then one table
per suite. The rest of the file (methods, profiles) is prose and is left alone.

This module is the command line; the suite table is `benchmarks.suites`, running a suite
`benchmarks.suite_runner`, judging targets `benchmarks.suite_targets`, the tables
`benchmarks.suite_tables`, the Markdown and the results file `benchmarks.summary`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

from benchmarks.suite_runner import REPO, machine_facts, run_suite
from benchmarks.suite_targets import smallest_preset_save_interval, suite_targets
from benchmarks.suites import SUITE_NAMES, SUITES
from benchmarks.summary import (
  BEGIN,
  END,
  check_markdown,
  load_results,
  render,
  save_results,
  write_markdown,
)

__all__ = ["BEGIN", "END", "SUITES", "SUITE_NAMES", "main", "render", "run_suite",
           "smallest_preset_save_interval", "suite_targets", "write_markdown"]

DEFAULT_OUT = REPO / "docs" / "benchmarks.md"


def main(argv: list[str] | None = None) -> int:
  """The command line; returns the exit status (1 when a suite failed)."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default=None,
                      help=f"comma-separated suites (default all): {', '.join(SUITE_NAMES)}")
  parser.add_argument("--quick", action="store_true",
                      help="tiny settings, to check that everything runs (figures meaningless)")
  parser.add_argument("--render", action="store_true",
                      help="run nothing: re-render the Markdown from the stored results")
  parser.add_argument("--out", default=None,
                      help=f"Markdown to update (default {DEFAULT_OUT.relative_to(REPO)}; with "
                      "--quick, none: the summary is only printed); results go to the same "
                      "name with .json")
  args = parser.parse_args(argv)
  if args.render and (args.only or args.quick):
    parser.error("--render runs nothing; it takes no --only or --quick")
  names = () if args.render else SUITE_NAMES if args.only is None else tuple(
      s.strip() for s in args.only.split(",") if s.strip())
  unknown = [n for n in names if n not in SUITE_NAMES]
  if unknown or not (names or args.render):
    parser.error(f"unknown suites {unknown}; known: {', '.join(SUITE_NAMES)}")
  out = Path(args.out) if args.out else (None if args.quick else DEFAULT_OUT)
  missing = sorted({p for s in SUITES if s.name in names for p in s.needs
                    if importlib.util.find_spec(p) is None})
  if missing:
    needing = [s.name for s in SUITES if s.name in names and set(s.needs) & set(missing)]
    raise SystemExit(f"error: suites {', '.join(needing)} compare against HF peers and need "
                     f"{', '.join(missing)}, which are not installed: pip install -e '.[bench]' "
                     "(or leave them out with --only)")

  if out is not None:
    check_markdown(out)
  results_path = out.with_suffix(".json") if out else None
  results = load_results(results_path)
  if args.quick:
    full = [n for n in names if n in results["suites"]
            and not results["suites"][n].get("quick")]
    if full:
      raise SystemExit(f"error: --quick would replace the full-settings results of "
                       f"{', '.join(full)} in {results_path}; write smoke runs elsewhere "
                       "(--quick --out /tmp/quick.md)")
  if names:  # --render keeps the stored machine line
    results["machine"] = facts = machine_facts()

  failed = []
  with tempfile.TemporaryDirectory(prefix="run_all_") as workdir:
    for suite in SUITES:
      if suite.name not in names:
        continue
      entry = run_suite(suite, args.quick, Path(workdir))
      if entry["exit_code"] != 0:
        failed.append(f"{suite.name} ({entry['error']})")
        continue  # the previous results of this suite, if any, stay
      entry["machine"] = facts
      results["suites"][suite.name] = entry
      if results_path is not None:  # saved after every suite: a later failure loses nothing
        save_results(results_path, results)

  section = render(results, SUITES)
  if out is None:
    print("\n" + section)
  else:
    write_markdown(out, section)
    print(f"\nwrote {out} and {results_path}")
  for suite in SUITES:
    entry = results["suites"].get(suite.name)
    if suite.name in names and entry is not None:
      for t in suite_targets(suite, entry):
        print(f"{t.verdict().strip('*'):10s}  {t.what}: {t.figure} (goal {t.goal})")
  if failed:
    print("failed: " + "; ".join(failed), file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
