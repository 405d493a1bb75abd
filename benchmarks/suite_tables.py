"""The Markdown table of each suite's report in the generated section of docs/benchmarks.md."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.suite_targets import Report, pct


def train_table(report: Report) -> list[str]:
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
        f"{pct(r['ours_mfu'])} | {pct(r['hf_mfu'])} | {1e3 * r['ours_median_s']:.1f} | "
        f"{1e3 * r['hf_median_s']:.1f} | {r['ours_compile_s']:.1f} | "
        f"{r['ours_first_loss']:.2f}→{r['ours_last_loss']:.2f} / "
        f"{r['hf_first_loss']:.2f}→{r['hf_last_loss']:.2f} |")
  return lines


def objective_table(unit: str, extra: tuple[tuple[str, str, str], ...] = ()
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


def checkpoint_table(report: Report) -> list[str]:
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


def lora_table(report: Report) -> list[str]:
  from benchmarks import bench_lora

  r = report
  return [(f"{r['shape']}: {r['num_layers']} layers, d={r['hidden_size']}, {r['num_heads']} "
           f"heads, FFN {r['intermediate_size']}, V={r['vocab_size']}, B×L = "
           f"{r['batch_size']}×{r['seq_len']}; median of {r['steps']} steps after "
           f"{r['warmup']} warm-up, {r['rounds']} interleaved rounds; peak host memory "
           f"{r['memory']}; the frozen base, saved once in lora_base/: "
           f"{(r['lora_base_bytes'] or 0) / 2**20:,.1f} MB."), "", *bench_lora.table(r)]


def gemm_table(report: Report) -> list[str]:
  lines = ["| tokens × d_in → d_out | XLA GFLOP/s | torch GFLOP/s | XLA/torch |",
           "|---|---:|---:|---:|"]
  for r in report["results"]:
    lines.append(f"| {r['tokens']} × {r['d_in']} → {r['d_out']} | {r['xla_gflops']:.1f} | "
                 f"{r['torch_gflops']:.1f} | {r['xla_gflops'] / r['torch_gflops']:.2f} |")
  return lines


def generate_table(report: Report) -> list[str]:
  """One row per model: tokens/s both sides, prefill and decode split, tokens identical."""
  lines = [(f"batch 1, greedy, median of {report['results'][0]['repeats']} calls per side; "
            f"torch {report['torch']}, transformers {report['transformers']}; HF at the faster "
            "of 2 and 1 torch threads (HF threads column). Prefill: a call with one new token; "
            "decode: the rest of a full call per further token."), "",
           ("| model | prompt + new | ours tokens/s | HF tokens/s | ours/HF | ours prefill ms | "
            "HF prefill ms | ours decode ms/token | HF decode ms/token | HF threads | "
            "ours compile s | tokens identical |"),
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
  for r in report["results"]:
    same = "yes" if r["identical"] else f"no (from {r['first_difference']})"
    lines.append(
        f"| {r['model']} ({r['num_layers']}L, d={r['hidden_size']}, {r['num_heads']}H/"
        f"{r['num_kv_heads']}KV, FFN {r['intermediate_size']}, V={r['vocab_size']}; HF "
        f"{r['hf_class']}, {r['hf_attn_implementation']}) | {r['prompt_len']} + "
        f"{r['new_tokens']} | {r['ours_tokens_per_s']:,.0f} | {r['hf_tokens_per_s']:,.0f} | "
        f"{r['ratio']:.2f}× | {1e3 * r['ours_prefill_s']:.1f} | {1e3 * r['hf_prefill_s']:.1f} | "
        f"{1e3 * r['ours_decode_s_per_token']:.2f} | {1e3 * r['hf_decode_s_per_token']:.2f} | "
        f"{r['hf_threads']} | {r['ours_compile_s']:.1f} | {same} |")
  return lines


def prepare_table(report: Report) -> list[str]:
  lines = [(f"Load average (1, 5, 15 min) before {report['load_before']}, after "
            f"{report['load_after']}, on {report['cpus']} cores; blocks of "
            f"{report['block_length']}. cores used = CPU seconds (parent + workers) / wall."), "",
           ("| side | workers | corpus MB | s | tokens/s | docs/s | parent CPU s | workers CPU s "
            "| cores used | peak MB all processes (parent, largest worker) |"),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in report["results"]:
    side = "ours prepare" if r["side"] == "ours" else "HF datasets load + map"
    cpu = r["parent_cpu_s"] + r["workers_cpu_s"]
    lines.append(f"| {side} | {r['workers']} | {r['size_mb']} | {r['seconds']:.1f} | "
                 f"{r['tokens_per_s']:,} | {r['documents_per_s']:,} | {r['parent_cpu_s']:.1f} | "
                 f"{r['workers_cpu_s']:.1f} | {cpu / r['seconds']:.2f} | {r['peak_mb']} "
                 f"({r['parent_peak_mb']}, {r['worker_peak_mb']}) |")
  return lines
