"""Data preparation throughput: `prepare.prepare` (read, split, tokenize, cut blocks of 512,
write ArrayRecord shards) with 1 and 2 worker processes, against HF `datasets`
(`load_dataset("json")` + `map(batched=True, num_proc=2)`) encoding the same JSON lines with
the same SentencePiece model (the bundled 8k one); and the peak host memory (the resident
sets of the process and all its workers, sampled every 50 ms) as the corpus grows.

The corpus is generated: documents of 1-6 paragraphs drawn with a fixed seed from the bundled
English and Korean corpora, written as JSON lines of `--sizes` MB each. Every run is a child
process of its own (clean peak memory); CPU seconds of the parent and of its workers are
reported, which says where the time went. Each configuration runs `--repeats` (3) times, the
rounds interleaved, and the median run is reported. The load average before and after is
recorded: the figures are only as good as the machine was quiet.

  python -m benchmarks.bench_prepare --sizes 100 400 [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# isort: split
import argparse
import json
import random
import resource
import subprocess
import tempfile
import threading
import time

_BLOCK = 512


def generate(path: str, megabytes: int, seed: int = 0) -> int:
  """Writes ~`megabytes` MB of JSON lines; returns the number of documents."""
  from data_pipelines import sources
  paragraphs = list(sources.read_documents("bundled_all"))
  rng = random.Random(seed)
  target, written, n = megabytes * 10**6, 0, 0
  with open(path, "w", encoding="utf-8") as f:
    while written < target:
      text = "\n\n".join(rng.choice(paragraphs) for _ in range(rng.randint(1, 6)))
      line = json.dumps({"text": text, "id": n}, ensure_ascii=False) + "\n"
      written += len(line.encode("utf-8"))
      f.write(line)
      n += 1
  return n


class Sampler:
  """Every 50 ms: the resident memory of this process and of all its descendants (workers are
  children of a fork server), and each descendant's CPU seconds as last seen."""

  def __init__(self):
    import psutil
    self._me = psutil.Process()
    self.peak_total = self.peak_worker = 0
    self._cpu: dict[int, float] = {}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self) -> None:
    import psutil
    while not self._stop.wait(0.05):
      total = self._me.memory_info().rss
      for child in self._me.children(recursive=True):
        try:
          rss, times = child.memory_info().rss, child.cpu_times()
        except psutil.Error:
          continue
        total += rss
        self.peak_worker = max(self.peak_worker, rss)
        self._cpu[child.pid] = times.user + times.system
      self.peak_total = max(self.peak_total, total)

  def finish(self) -> dict:
    self._stop.set()
    self._thread.join()
    me = resource.getrusage(resource.RUSAGE_SELF)
    return {"parent_cpu_s": round(me.ru_utime + me.ru_stime, 1),
            "workers_cpu_s": round(sum(self._cpu.values()), 1),
            "parent_peak_mb": round(me.ru_maxrss / 1024),
            "worker_peak_mb": round(self.peak_worker / 2**20),
            "peak_mb": round(max(self.peak_total, me.ru_maxrss * 1024) / 2**20)}


def child_ours(corpus: str, workers: int, out: str) -> dict:
  from data_pipelines import prepare
  from data_pipelines.tokenizer import load_tokenizer
  tokenizer = load_tokenizer("bundled")
  sampler = Sampler()
  start = time.perf_counter()
  manifest = prepare.prepare(corpus, tokenizer, _BLOCK, out, workers=workers)
  seconds = time.perf_counter() - start
  usage = sampler.finish()
  splits = manifest.splits.values()
  documents = sum(s.num_documents for s in splits)
  tokens = sum(s.num_tokens - max(0, s.num_documents - 1) for s in splits)  # no separators
  return {"seconds": round(seconds, 2), "documents": documents, "tokens": tokens, **usage}


def _encode_sp(batch):
  import sentencepiece as spm

  from data_pipelines.tokenizer import bundled_tokenizer_path
  global _SP  # one model per map process
  if "_SP" not in globals():
    _SP = spm.SentencePieceProcessor(model_file=bundled_tokenizer_path())
  return {"input_ids": _SP.encode(batch["text"], out_type=int)}


def child_hf(corpus: str, num_proc: int, cache: str) -> dict:
  import datasets
  datasets.disable_progress_bars()
  sampler = Sampler()
  start = time.perf_counter()
  ds = datasets.load_dataset("json", data_files=corpus, split="train", cache_dir=cache)
  loaded = time.perf_counter()
  ds = ds.map(_encode_sp, batched=True, num_proc=num_proc, remove_columns=ds.column_names)
  mapped = time.perf_counter()
  usage = sampler.finish()
  tokens = sum(len(x) for batch in ds.iter(10_000) for x in batch["input_ids"])
  return {"seconds": round(mapped - start, 2), "load_s": round(loaded - start, 2),
          "map_s": round(mapped - loaded, 2), "documents": len(ds), "tokens": tokens,
          "datasets": datasets.__version__, **usage}


def _child(*args: str) -> dict:
  out = subprocess.run([sys.executable, "-m", "benchmarks.bench_prepare", "--child", *args],
                       capture_output=True, text=True, check=False,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if out.returncode:
    raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[100, 400],
                      help="corpus sizes in MB, each run on 2 and 1 workers; the first one "
                           "also with HF")
  parser.add_argument("--repeats", type=int, default=3,
                      help="runs of each configuration, interleaved; the median is reported")
  parser.add_argument("--json")
  parser.add_argument("--child", nargs=4, metavar=("KIND", "CORPUS", "N", "OUT"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    kind, corpus, n, out = args.child
    result = (child_ours if kind == "ours" else child_hf)(corpus, int(n), out)
    print(json.dumps(result))
    return
  report = {"load_before": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
            "block_length": _BLOCK, "results": []}
  with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
    for i, size in enumerate(args.sizes):
      corpus = os.path.join(tmp, f"corpus_{size}mb.jsonl")
      documents = generate(corpus, size)
      runs = [("ours", 2), ("ours", 1)] + ([("hf", 2)] if i == 0 else [])
      results: dict[tuple[str, int], list[dict]] = {run: [] for run in runs}
      for _ in range(args.repeats):  # rounds interleave the configurations (drifting load)
        for kind, n in runs:
          out = os.path.join(tmp, f"out_{kind}_{n}_{size}")
          results[kind, n].append(_child(kind, corpus, str(n), out))
          subprocess.run(["rm", "-rf", out], check=False)
      for kind, n in runs:
        tries = sorted(results[kind, n], key=lambda r: r["seconds"])
        result = tries[len(tries) // 2]  # the median run (by wall time)
        row = {"side": kind, "workers": n, "size_mb": size, "generated_documents": documents,
               "tokens_per_s": round(result["tokens"] / result["seconds"]),
               "documents_per_s": round(result["documents"] / result["seconds"]),
               "seconds_all": [r["seconds"] for r in results[kind, n]], **result}
        report["results"].append(row)
        print(json.dumps(row), flush=True)
      os.remove(corpus)
  report["load_after"] = [round(x, 2) for x in os.getloadavg()]
  rows = {(r["side"], r["workers"], r["size_mb"]): r for r in report["results"]}
  first, last = args.sizes[0], args.sizes[-1]
  # 2 workers over 1 at each size: a run's fixed costs (starting the workers, loading the
  # model) weigh less as the corpus grows; the target is read at the largest size.
  report["speedup_2_vs_1_by_size"] = {
      size: round(rows["ours", 2, size]["tokens_per_s"] / rows["ours", 1, size]["tokens_per_s"],
                  2) for size in args.sizes}
  report["speedup_2_vs_1"] = report["speedup_2_vs_1_by_size"][last]
  report["vs_hf"] = round(rows["ours", 2, first]["tokens_per_s"]
                          / rows["hf", 2, first]["tokens_per_s"], 2)
  report["memory_growth"] = round(rows["ours", 2, last]["peak_mb"]
                                  / rows["ours", 2, first]["peak_mb"], 2)
  print(json.dumps({k: v for k, v in report.items() if k != "results"}))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()
