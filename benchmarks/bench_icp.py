"""Throughput of the In-Context Pretraining order (`data_pipelines.icp.order_documents`):
documents/s for synthetic corpora of N documents of `--length` token ids, each from one of
`--topics` planted topics (half its tokens from the topic's 200 ids, half from a Zipfian
background over 8,000 ids). Reports the seconds per stage (TF-IDF embedding, kNN — exact up
to 20,000 documents, an inverted-file search on faiss above —, duplicates, path), the peak resident memory and the
fraction of adjacent same-topic documents (random order: 1 / topics).

Run from the repo root (all cores; faiss-cpu installed for N > 20,000):

  python -m benchmarks.bench_icp --n 10000 100000 1000000 [--json out.json]

`--effect RANDOM_RUN ICP_RUN` instead evaluates two causal-LM runs (trained with
data.order=random and data.order=icp, blocks mode) on the validation blocks of both orders:
the mean loss of the targets in a block's first document, in its later documents (after an
EOS: where related earlier documents can help) and overall (docs/objectives.md).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# isort: split
import argparse
import json
import platform
import resource
import time

import numpy as np

from data_pipelines import icp


def synthetic(n: int, length: int, topics: int, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
  """(uint16[n, length] token ids, int64[n] topic of each document)."""
  rng = np.random.default_rng(seed)
  topic = rng.integers(0, topics, n)
  words = rng.integers(0, 8000, (topics, 200)).astype(np.uint16)
  half = length // 2
  own = np.take_along_axis(words[topic], rng.zipf(1.5, (n, half)) % 200, axis=1)
  background = (rng.zipf(1.3, (n, length - half)) % 8000).astype(np.uint16)
  return rng.permuted(np.concatenate([own, background], axis=1), axis=1), topic


def run(n: int, length: int, topics: int) -> dict:
  ids, topic = synthetic(n, length, topics)
  docs = list(ids)
  start = time.perf_counter()
  path, report = icp.order_documents(docs, icp.OrderSpec(), what=f"{n} synthetic")
  seconds = time.perf_counter() - start
  return {"documents": n, "tokens_per_document": length, "seconds": round(seconds, 2),
          "documents_per_s": round(n / seconds), "stages_s": report.seconds,
          "paths": report.num_paths, "duplicates": report.num_duplicates,
          "adjacent_same_topic": round(float(np.mean(topic[path[1:]] == topic[path[:-1]])), 3),
          "random_same_topic": round(1 / topics, 3),
          "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def effect(workdirs: dict[str, str]) -> dict:
  """{model order: {data order: {first, later, overall, tokens}}} held-out losses."""
  from array_record.python import array_record_data_source

  from pretrain import data as data_lib
  from t5x_like import pretrained

  models = {name: pretrained.load_pretrained(w) for name, w in workdirs.items()}
  blocks = {}
  for name, model in models.items():
    _, tokenizer, manifest = data_lib.prepare_for(model.config)
    source = array_record_data_source.ArrayRecordDataSource(manifest.shard_paths("validation"))
    blocks[name] = np.stack([np.frombuffer(source[i], manifest.dtype).astype(np.int32)
                             for i in range(len(source))])
    eos = tokenizer.vocab_info().eos_id
  out = {}
  for name, model in models.items():
    out[name] = {}
    for data_name, rows in blocks.items():
      inputs, labels = rows[:, :-1], rows[:, 1:]
      losses = []
      for i in range(0, len(rows), 16):
        logits = model.logits({"input_ids": inputs[i:i + 16]})
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
            -1, keepdims=True)) - logits.max(-1, keepdims=True)
        losses.append(-np.take_along_axis(logp, labels[i:i + 16, :, None], -1)[..., 0])
      loss = np.concatenate(losses)
      later = np.cumsum(inputs == eos, axis=1) >= 1  # an earlier document is in the context
      out[name][data_name] = {"first": round(float(loss[~later].mean()), 4),
                              "later": round(float(loss[later].mean()), 4),
                              "overall": round(float(loss.mean()), 4),
                              "later_fraction": round(float(later.mean()), 3)}
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
  parser.add_argument("--length", type=int, default=100)
  parser.add_argument("--topics", type=int, default=100)
  parser.add_argument("--json")
  parser.add_argument("--effect", nargs=2, metavar=("RANDOM_RUN", "ICP_RUN"))
  args = parser.parse_args()
  if args.effect:
    print(json.dumps(effect(dict(zip(("random", "icp"), args.effect))), indent=2))
    return
  rows = []
  for n in args.n:
    rows.append(run(n, args.length, args.topics))
    print(json.dumps(rows[-1]), flush=True)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"machine": platform.processor() or platform.machine(),
                 "cpus": os.cpu_count(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
