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
results (the run then exits 1). The part of the Markdown between the two `run_all` markers is rendered from that file: every target with its
figure and met / NOT met, then one table per suite. The rest of the file (methods, profiles)
is prose and is left alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BEGIN = "<!-- run_all:begin -->"
END = "<!-- run_all:end -->"
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"

Report = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Target:
  what: str
  figure: str
  goal: str
  met: bool | None  # None: not judged (quick settings, or a report that cannot be read)

  def verdict(self) -> str:
    return "not judged" if self.met is None else ("met" if self.met else "**NOT met**")


@dataclasses.dataclass(frozen=True)
class Suite:
  name: str
  module: str
  title: str
  args: tuple[str, ...]
  quick_args: tuple[str, ...]
  targets: Callable[[Report], list[Target]]
  table: Callable[[Report], list[str]]
  needs: tuple[str, ...] = ()  # importable packages the suite's child needs


def _pct(x: float) -> str:
  return f"{100 * x:.1f}%"


# ---- targets ---------------------------------------------------------------------------


def _train_targets(peer: str, min_ratio: float, mfu_shapes: dict[str, float] | None = None
                   ) -> Callable[[Report], list[Target]]:
  def targets(report: Report) -> list[Target]:
    out = []
    for r in report["results"]:
      out.append(Target(f"{r['shape']}: train tokens/s vs HF {peer}", f"{r['ratio']:.2f}×",
                        f"≥ {min_ratio:.2f}×", r["ratio"] >= min_ratio))
      want = (mfu_shapes or {}).get(r["shape"])
      if want is not None:
        out.append(Target(f"{r['shape']}: MFU (measured matmul peak)", _pct(r["ours_mfu"]),
                          f"≥ {100 * want:.0f}%", r["ours_mfu"] >= want))
    return out
  return targets


def _rate_target(what: str) -> Callable[[Report], list[Target]]:
  def targets(report: Report) -> list[Target]:
    rate, want = report["results"][0]["tokens_per_s"], report["target_tokens_per_s"]
    return [Target(what, f"{rate / 1e6:.2f} M/s", f"≥ {want / 1e6:.1f} M/s", rate >= want)]
  return targets


def _mlm_targets(report: Report) -> list[Target]:
  row = next(r for r in report["results"]
             if r["variant"].startswith("ours make_example, token, rng per record"))
  return [Target("MLM objective tokens/s vs HF DataCollatorForLanguageModeling (one core)",
                 f"{row['vs_hf']:.2f}×", "≥ 1.50×", row["vs_hf"] >= 1.5)]


@functools.cache
def smallest_preset_save_interval() -> tuple[int, str]:
  """(checkpoint.every, preset) of the preset that saves most often."""
  from t5x_like import config as config_lib

  return min((config_lib.load_config(name).checkpoint.every, name)
             for name in config_lib.list_presets())


def _checkpoint_targets(report: Report) -> list[Target]:
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


# ---- tables ----------------------------------------------------------------------------


def _train_table(report: Report) -> list[str]:
  dtype = report.get("dtype", "float32")
  lines = [(f"{dtype} 1024³ matmul peak: XLA {report['xla_matmul_peak'] / 1e9:.1f} GFLOP/s, torch "
           f"{report['torch_matmul_peak'] / 1e9:.1f} GFLOP/s (MFU uses the larger); torch "
           f"{report['torch']}, transformers {report['transformers']}, "
           f"{report['torch_threads']} torch threads."), "",
           ("| shape | tokens/step | ours tokens/s | HF tokens/s | ours/HF | ours MFU | HF MFU | "
           "ours ms/step | HF ms/step | ours compile s | loss first→last (ours / HF) |"),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
  for r in report["results"]:
    per_row = r["seq_len"] if "inputs" not in r else r["inputs"] + r["targets"]
    tokens = r["batch_size"] * per_row
    lines.append(
        f"| {r['shape']} | {r['batch_size']}×{per_row} = {tokens:,} | "
        f"{r['ours_tokens_per_s']:,.0f} | {r['hf_tokens_per_s']:,.0f} | {r['ratio']:.2f}× | "
        f"{_pct(r['ours_mfu'])} | {_pct(r['hf_mfu'])} | {1e3 * r['ours_median_s']:.1f} | "
        f"{1e3 * r['hf_median_s']:.1f} | {r['ours_compile_s']:.1f} | "
        f"{r['ours_first_loss']:.2f}→{r['ours_last_loss']:.2f} / "
        f"{r['hf_first_loss']:.2f}→{r['hf_last_loss']:.2f} |")
  return lines


def _objective_table(unit: str, extra: tuple[tuple[str, str, str], ...] = ()
                     ) -> Callable[[Report], list[str]]:
  """Variant rows: tokens/s, µs/record, spread when timed, then `extra` (header, key, fmt)."""
  def table(report: Report) -> list[str]:
    rows = report["results"]
    n = report["n"]
    spread = "min_s" in rows[0]
    head = f"| variant | {unit} | µs/record |" + (" spread (µs/record) |" if spread else "")
    head += "".join(f" {h} |" for h, _, _ in extra)
    lines = [head, "|---|---:|---:|" + ("---:|" if spread else "") + "---:|" * len(extra)]
    for r in rows:
      line = f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['us_per_record']:.1f} |"
      if spread:
        line += f" {1e6 * r['min_s'] / n:.1f}–{1e6 * r['max_s'] / n:.1f} |"
      line += "".join(" – |" if r.get(k) is None else f" {format(r[k], fmt)} |"
                      for _, k, fmt in extra)
      lines.append(line)
    return lines
  return table


def _checkpoint_table(report: Report) -> list[str]:
  lines = [(f"train state {report['state_mb']:.1f} MB, compile {report['compile_s']:.1f} s; "
           f"{report['rounds']} interleaved rounds of {report['steps']} steps per kind, a save "
           f"every {report['every']} steps. Overhead: the whole window (steps, save() calls, "
           "the wait for the last write) over the same round's no-save window, minus one, "
           "median over rounds."), "",
           ("| saving | median step (ms) | save() blocks (ms) | final wait (ms) | "
           "one save, in step times | overhead on the window |"), "|---|---:|---:|---:|---:|---:|",
           f"| none | {report['step_ms']['none']:.1f} | – | – | – | – |"]
  for kind in ("async", "sync"):
    lines.append(f"| {kind} | {report['step_ms'][kind]:.1f} | "
                 f"{report['save_blocking_ms'][kind]:.1f} | {report['final_wait_ms'][kind]:.1f} | "
                 f"{report['save_cost_steps'][kind]:.2f} | {100 * report['overhead'][kind]:+.1f}% |")
  return lines


def _gemm_table(report: Report) -> list[str]:
  lines = ["| tokens × d_in → d_out | XLA GFLOP/s | torch GFLOP/s | XLA/torch |",
           "|---|---:|---:|---:|"]
  for r in report["results"]:
    lines.append(f"| {r['tokens']} × {r['d_in']} → {r['d_out']} | {r['xla_gflops']:.1f} | "
                 f"{r['torch_gflops']:.1f} | {r['xla_gflops'] / r['torch_gflops']:.2f} |")
  return lines


_HF = ("torch", "transformers")
_TRAIN_FULL = ("--steps", "20", "--warmup", "3", "--rounds", "4")
_TRAIN_QUICK = ("--steps", "2", "--warmup", "1", "--rounds", "2")

SUITES: tuple[Suite, ...] = (
    Suite("train_bert", "bench_train", "Train: BERT MLM vs HF BertForMaskedLM",
          ("--shapes", "bert_tiny,bert_small", *_TRAIN_FULL), ("--shapes", "bert_tiny", *_TRAIN_QUICK),
          _train_targets("BertForMaskedLM", 1.25, {"bert_small": 0.70}), _train_table, _HF),
    Suite("train_t5", "bench_train_t5", "Train: T5 span corruption vs HF "
          "T5ForConditionalGeneration", ("--shapes", "t5_small_bench", *_TRAIN_FULL),
          ("--shapes", "t5_tiny", *_TRAIN_QUICK),
          _train_targets("T5ForConditionalGeneration", 1.2), _train_table, _HF),
    Suite("train_bart", "bench_train_bart", "Train: BART denoising vs HF "
          "BartForConditionalGeneration", ("--shapes", "bart_small_bench", *_TRAIN_FULL),
          ("--shapes", "bart_tiny", *_TRAIN_QUICK),
          _train_targets("BartForConditionalGeneration", 1.2), _train_table, _HF),
    Suite("train_t5_bf16", "bench_train_t5", "Train: T5 in bf16 mixed precision (ours "
          "model.dtype=bfloat16, HF under torch.autocast bf16; context, no target)",
          ("--shapes", "t5_small_bench", "--dtype", "bfloat16", *_TRAIN_FULL),
          ("--shapes", "t5_tiny", "--dtype", "bfloat16", *_TRAIN_QUICK),
          lambda report: [], _train_table, _HF),
    Suite("train_bart_bf16", "bench_train_bart", "Train: BART in bf16 mixed precision (ours "
          "model.dtype=bfloat16, HF under torch.autocast bf16; context, no target)",
          ("--shapes", "bart_small_bench", "--dtype", "bfloat16", *_TRAIN_FULL),
          ("--shapes", "bart_tiny", "--dtype", "bfloat16", *_TRAIN_QUICK),
          lambda report: [], _train_table, _HF),
    Suite("train_xlnet", "bench_train_xlnet", "Train: XLNet permutation LM vs HF "
          "XLNetLMHeadModel", ("--shapes", "xlnet_small_bench", *_TRAIN_FULL),
          ("--shapes", "xlnet_tiny", *_TRAIN_QUICK),
          _train_targets("XLNetLMHeadModel", 1.2), _train_table, _HF),
    Suite("checkpoint", "bench_checkpoint", "Checkpoint cost during training (ours only)",
          ("--shape", "bert_small", "--steps", "20", "--every", "10", "--rounds", "3"),
          ("--shape", "bert_tiny", "--steps", "4", "--every", "2", "--rounds", "1"),
          _checkpoint_targets, _checkpoint_table),
    Suite("mlm_objective", "bench_mlm_objective", "MLM objective vs HF "
          "DataCollatorForLanguageModeling, L=512, one core",
          ("--length", "512", "--n", "2000", "--repeats", "5"),
          ("--length", "128", "--n", "64", "--repeats", "2"),
          _mlm_targets, _objective_table("tokens/s", (("selected/record", "selected_per_record",
                                                      ".1f"), ("vs HF", "vs_hf", ".2f"))),
          ("transformers",)),
    Suite("span_corruption", "bench_span_corruption", "Span corruption objective (T5), inputs "
          "512, one core", ("--inputs-length", "512", "--n", "2000", "--repeats", "7"),
          ("--inputs-length", "128", "--n", "64", "--repeats", "2"),
          _rate_target("span corruption objective, raw tokens/s on one core"),
          _objective_table("raw tokens/s", (("vs naive loop", "vs_naive", ".2f"),))),
    Suite("denoising", "bench_denoising", "Denoising objective (BART), length 512, one core",
          ("--length", "512", "--n", "2000", "--repeats", "7"),
          ("--length", "128", "--n", "64", "--repeats", "2"),
          _rate_target("denoising objective (default mix), target tokens/s on one core"),
          _objective_table("target tokens/s", (("mean source len", "mean_source_length",
                                                ".1f"),))),
    Suite("permutation_lm", "bench_permutation_lm", "Permutation LM objective (XLNet), length "
          "512, one core", ("--length", "512", "--n", "2000", "--repeats", "7"),
          ("--length", "128", "--n", "64", "--repeats", "2"),
          _rate_target("permutation LM objective, row tokens/s on one core"),
          _objective_table("row tokens/s", (("predicted/record", "predicted_per_record", ".1f"),
                                            ("vs HF", "vs_hf", ".2f"))), ("transformers",)),
    Suite("gemm", "bench_gemm", "f32 GEMMs of the train-step shapes, XLA vs torch (context, no "
          "target)", ("--repeats", "30"), ("--repeats", "2"), lambda report: [], _gemm_table,
          ("torch",)),
)
SUITE_NAMES = tuple(s.name for s in SUITES)


# ---- running ---------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
  """This environment minus forced virtual CPU devices (each benchmark uses one device)."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  else:
    env.pop("XLA_FLAGS", None)
  return env


def _cpu_s() -> tuple[float, float] | None:
  """(CPU seconds all of this machine's processes have used since boot, seconds stolen by
  the hypervisor) from /proc/stat; None off Linux."""
  try:
    with open("/proc/stat", encoding="ascii") as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  # user nice system idle iowait irq softirq steal ...: busy = user..softirq minus idle/iowait.
  tick = os.sysconf("SC_CLK_TCK")
  return (sum(fields[:7]) - fields[3] - fields[4]) / tick, fields[7] / tick


def run_suite(suite: Suite, quick: bool, workdir: Path) -> dict[str, Any]:
  """Runs one suite as a child process; returns its entry (report, wall s, peak RSS, ...)."""
  json_path = workdir / f"{suite.name}.json"
  args = suite.quick_args if quick else suite.args
  argv = [sys.executable, "-m", f"benchmarks.{suite.module}", *args, "--json", str(json_path)]
  shown = " ".join(["python", "-m", f"benchmarks.{suite.module}", *args])
  started = datetime.datetime.now(datetime.UTC)
  print(f"\n=== {suite.name}: {shown}", flush=True)
  cpu0, t0 = _cpu_s(), time.perf_counter()
  proc = subprocess.Popen(argv, cwd=REPO, env=_child_env())
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = code = os.waitstatus_to_exitcode(status)
  wall, cpu1 = time.perf_counter() - t0, _cpu_s()
  # How busy the machine was with anything but this benchmark (the noise indicator), and how
  # much CPU the hypervisor gave to other guests (steal), per second of the suite.
  others = steal = None
  if cpu0 is not None and cpu1 is not None:
    others = max(0.0, (cpu1[0] - cpu0[0] - usage.ru_utime - usage.ru_stime) / wall)
    steal = (cpu1[1] - cpu0[1]) / wall
  entry = {"suite": suite.name, "command": shown, "quick": quick, "exit_code": code,
           "utc": started.strftime("%Y-%m-%d %H:%M"), "wall_s": wall,
           "child_cpu_s": usage.ru_utime + usage.ru_stime, "other_cpu_cores": others,
           "steal_cores": steal, "peak_rss_mb": usage.ru_maxrss / 1024}
  if code == 0:
    try:
      entry["report"] = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
      entry["exit_code"] = -1
      entry["error"] = f"no readable JSON report at {json_path}: {e}"
  else:
    entry["error"] = f"exit code {code}"
  return entry


def machine_facts() -> dict[str, Any]:
  """Versions and CPU of this machine (read here, not in the children)."""
  import importlib.metadata as md

  def version(name: str) -> str:
    try:
      return md.version(name)
    except md.PackageNotFoundError:
      return "not installed"

  model = platform.processor() or platform.machine()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
          **{p: version(p) for p in ("jax", "flax", "optax", "numpy", "torch", "transformers")}}


# ---- rendering -------------------------------------------------------------------------


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


def _stale(suite: Suite, error: Exception) -> list[str]:
  return [(f"(This suite's stored report cannot be rendered — {type(error).__name__}: "
          f"{error} — it is probably from an older version of the benchmark; re-run it with "
          f"`python -m benchmarks.run_all --only {suite.name}`.)")]


_VERSIONED = ("python", "jax", "flax", "optax", "numpy", "torch", "transformers")


def _version_notes(entries: dict[str, Any], facts: dict[str, Any]) -> list[str]:
  """Lines naming the suites whose stored results were measured with other package versions
  than the machine line says (or before run_all recorded versions per suite)."""
  notes = []
  for suite in SUITES:
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


def render(results: dict[str, Any]) -> str:
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
  for suite in SUITES:
    e = entries.get(suite.name)
    if e is None:
      continue
    quick = " (quick)" if e.get("quick") else ""
    lines.append(f"| {suite.name}{quick} | {e.get('utc', '?')} | {e.get('wall_s', 0):.0f} | "
                 f"{_cores(e, 'other_cpu_cores')} | {_cores(e, 'steal_cores')} | "
                 f"{e.get('peak_rss_mb', 0):,.0f} | `{e.get('command', '?')}` |")
  lines += _version_notes(entries, facts)
  lines += ["", ("Other processes' CPU: CPU time the whole machine used during the suite minus the "
            "suite's own, per second (0 = a quiet machine; this VM has "
            f"{facts.get('nproc', '?')} cores). Steal: CPU time the hypervisor gave to other "
            "guests instead, per second (a busy host slows every suite without showing in "
            "the first figure). Peak host MB: the suite process's peak resident "
            "memory; the train suites hold both sides (JAX and PyTorch) in one process, the "
            "checkpoint suite only ours."), "",
            "### Targets", "", "| target | measured | goal | |", "|---|---:|---:|---|"]
  for suite in SUITES:
    e = entries.get(suite.name)
    if e is None:
      continue
    for t in suite_targets(suite, e):
      lines.append(f"| {t.what} | {t.figure} | {t.goal} | {t.verdict()} |")
  for suite in SUITES:
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


def main(argv: list[str] | None = None) -> int:
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
  results: dict[str, Any] = {"suites": {}}
  if results_path is not None and results_path.exists():
    try:
      results = json.loads(results_path.read_text(encoding="utf-8"))
    except ValueError as e:
      raise SystemExit(f"error: {results_path} is not valid JSON ({e}); fix or remove it")
    if not isinstance(results, dict) or not isinstance(results.get("suites", {}), dict):
      raise SystemExit(f"error: {results_path} is not a run_all results file; fix or remove it")
    results.setdefault("suites", {})
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
        tmp = results_path.with_name(results_path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, results_path)

  section = render(results)
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
