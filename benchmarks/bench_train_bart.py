"""Training throughput of our jitted BART denoising step versus HF
`BartForConditionalGeneration` (PyTorch) on the same shape, in the same invocation.

Both sides train the same BART architecture (post-LN, GELU, learned positions with offset 2,
layernorm_embedding, tied head + final_logits_bias, dropout 0) with AdamW (same lr, betas, eps,
weight decay with biases/LayerNorm excluded, global-norm clipping at 1.0) on the same batches:
the default noise mix (text infilling 0.3, Poisson(3), sentence permutation 1.0) from
`denoising.make_example` on random blocks, each block one (padded) row: sources of at most
`seq_len` tokens with segment ids/positions for ours and the equivalent attention mask for HF,
targets the clean `<s> block </s>`, decoder inputs the targets shifted right from `</s>`.
Batches are pre-built on the device for both sides; steps are timed one by one after
warm-up, compilation is excluded and reported separately, and the two sides alternate in
rounds so machine noise hits both alike. Run from the repo root:

  python -m benchmarks.bench_train_bart [--shapes bart_small_bench] [--steps 20] [--warmup 3]
      [--rounds 4] [--json out.json]

Tokens/s counts the row positions of both streams (B x (source + target)); MFU uses the same
analytic FLOP count for both sides (`t5x_like.flops.train_flops_per_step`, full rows).
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import platform
from typing import Any

import jax
import numpy as np

from benchmarks.bench_train import (
  TORCH_THREADS,
  Side,
  add_side_stats,
  autocast,
  build_ours,
  measure_peaks,
  parse_args,
  run_interleaved,
  write_report,
)
from data_pipelines import packing
from data_pipelines.objectives import denoising
from data_pipelines.vocab import VocabInfo
from pretrain import data as data_glue
from t5x_like import flops
from t5x_like.config import Config, load_config
from t5x_like.objectives import denoising as denoising_objective

SHAPES: dict[str, tuple[str, ...]] = {
    # A BART-small shape like the T5 one: 4+4 layers, d=256, rows of 128 + 128.
    "bart_small_bench": ("model.num_layers=4", "model.num_decoder_layers=4",
                         "model.hidden_size=256", "model.num_heads=4",
                         "model.intermediate_size=1024", "model.vocab_size=8000",
                         "model.max_position_embeddings=128", "data.seq_len=128",
                         "train.batch_size=16"),
    "bart_tiny": (),
}
# Constant learning rate on both sides (HF's loop below has no schedule).
COMMON_OVERRIDES = ("mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1", "optim.grad_accum_steps=1",
                    "model.dropout_rate=0.0", "model.attention_dropout_rate=0.0",
                    "optim.schedule=constant", "optim.warmup_steps=0")
NUM_BATCHES = 4


def shape_config(name: str, total_steps: int, dtype: str = "float32") -> Config:
  config = load_config("bart_tiny", [*SHAPES[name], *COMMON_OVERRIDES,
                                     f"train.steps={total_steps}",
                                     f"model.dtype={dtype}"])
  return data_glue.resolve_lengths(config)


def make_batches(config: Config, vocab: VocabInfo, count: int,
                 seed: int) -> list[dict[str, np.ndarray]]:
  """int32 batches of one-segment rows: input_ids, segment_ids, positions [B, L];
  decoder_input_ids, labels, decoder_segment_ids, decoder_positions [B, T]."""
  d = config.data
  params = denoising_objective.params(config)
  raw = data_glue.block_length(config)
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    # The synthetic vocabulary makes ~1/20 of the ids sentence ends, so random blocks hold
    # about 6 sentences each and sentence permutation has work to do.
    blocks = rng.choice(vocab.normal_ids, size=(config.train.batch_size, raw)).astype(np.int32)
    rows = []
    for block in blocks:
      ex = denoising.make_example(block, rng, params, vocab)
      row = packing.pack_one([ex], {"input_ids": d.seq_len, "labels": d.target_len},
                             groups={"input_ids": "", "labels": "decoder_"})
      targets = np.where(row["labels"] < 0, 0, row["labels"])
      row["decoder_input_ids"] = packing.shift_right_per_segment(
          targets, row["decoder_segment_ids"], vocab.eos_id)
      rows.append(row)
    batches.append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  return batches


def build_hf(config: Config, batches: list[dict[str, np.ndarray]]) -> Side:
  """HF `BartForConditionalGeneration` + `torch.optim.AdamW`, same config and batches."""
  import torch
  import transformers

  m, o = config.model, config.optim
  torch.manual_seed(config.train.seed)
  hf_config = transformers.BartConfig(
      vocab_size=m.vocab_size, d_model=m.hidden_size, encoder_layers=m.num_layers,
      decoder_layers=m.num_decoder_layers or m.num_layers, encoder_attention_heads=m.num_heads,
      decoder_attention_heads=m.num_heads, encoder_ffn_dim=m.intermediate_size,
      decoder_ffn_dim=m.intermediate_size, max_position_embeddings=m.max_position_embeddings,
      activation_function=m.hidden_act, dropout=m.dropout_rate,
      attention_dropout=m.attention_dropout_rate, activation_dropout=0.0,
      init_std=m.initializer_range, scale_embedding=m.scale_embedding, pad_token_id=0,
      bos_token_id=3, eos_token_id=1, decoder_start_token_id=1, forced_eos_token_id=1)
  model = transformers.BartForConditionalGeneration(hf_config).to(torch.float32)
  model.train()
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    (no_decay if "bias" in name or "layer_norm" in name or "layernorm" in name
     else decay).append(p)
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
  torch_batches = [{
      "input_ids": torch.from_numpy(b["input_ids"].astype(np.int64)),
      "attention_mask": torch.from_numpy((b["segment_ids"] > 0).astype(np.int64)),
      "decoder_input_ids": torch.from_numpy(b["decoder_input_ids"].astype(np.int64)),
      "labels": torch.from_numpy(b["labels"].astype(np.int64))} for b in batches]

  def run(i: int) -> float:
    batch = torch_batches[i % len(torch_batches)]
    opt.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    if o.grad_clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip_norm)
    opt.step()
    return float(out.loss.detach())

  return Side(run)


def bench_shape(name: str, steps: int, warmup: int, rounds: int, peak: float,
                vocab: VocabInfo, dtype: str = "float32") -> dict[str, Any]:
  config = shape_config(name, total_steps=warmup + steps + 1, dtype=dtype)
  batches = make_batches(config, vocab, NUM_BATCHES, seed=0)
  ours, compile_s = build_ours(config, batches)
  hf = autocast(build_hf(config, batches), dtype)
  run_interleaved(ours, hf, steps, warmup, rounds)
  m, d, b = config.model, config.data, config.train.batch_size
  tokens = b * (d.seq_len + d.target_len)
  flops_per_step = flops.train_flops_per_step(config)
  source_fill = float(np.mean([np.mean(x["segment_ids"] > 0) for x in batches]))
  row: dict[str, Any] = {
      "shape": name, "dtype": dtype, "batch_size": b, "inputs": d.seq_len,
      "targets": d.target_len,
      "hidden_size": m.hidden_size, "num_layers": m.num_layers,
      "num_decoder_layers": m.num_decoder_layers, "num_heads": m.num_heads,
      "intermediate_size": m.intermediate_size, "vocab_size": m.vocab_size,
      "source_fill": source_fill, "steps": steps, "warmup": warmup, "rounds": rounds,
      "flops_per_step": flops_per_step, "ours_compile_s": compile_s}
  return add_side_stats(row, ours, hf, tokens, flops_per_step, peak)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args, shapes = parse_args(argv, __doc__.splitlines()[0], SHAPES, "bart_small_bench",
                             dtypes=True)
  import torch
  import transformers

  # XLA's CPU backend flushes float32 denormals to zero; x86 handles them in microcode (~100x
  # slower), and Adam's second moments of tiny gradients reach them: flush in torch too.
  torch.set_flush_denormal(True)
  xla_peak, torch_peak, peak = measure_peaks(args.dtype)
  vocab = VocabInfo.synthetic(8000, sentence_end_every=20)
  rows = [bench_shape(s, args.steps, args.warmup, args.rounds, peak, vocab, args.dtype)
          for s in shapes]

  print(f"BART train step, median of {args.steps} steps after {args.warmup} warm-up, "
        f"{args.rounds} interleaved rounds; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}); jax {jax.__version__}, torch "
        f"{torch.__version__} ({TORCH_THREADS} threads), transformers {transformers.__version__}")
  print(f"{args.dtype} 1024^3 matmul peak: XLA {xla_peak / 1e9:.1f} GFLOP/s, torch "
        f"{torch_peak / 1e9:.1f} GFLOP/s; MFU uses {peak / 1e9:.1f} GFLOP/s\n")
  print("| shape | B×(source+target) | source fill | ours tokens/s | HF tokens/s | ours/HF | "
        "ours MFU | HF MFU | ours ms/step | HF ms/step | ours compile s | "
        "loss first→last (ours / HF) |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
  for r in rows:
    print(f"| {r['shape']} ({r['num_layers']}+{r['num_decoder_layers']}L, "
          f"d={r['hidden_size']}, {r['num_heads']}H, FFN {r['intermediate_size']}, "
          f"V={r['vocab_size']}) | {r['batch_size']}×({r['inputs']}+{r['targets']}) | "
          f"{100 * r['source_fill']:.0f}% | "
          f"{r['ours_tokens_per_s']:,.0f} | {r['hf_tokens_per_s']:,.0f} | {r['ratio']:.2f}× | "
          f"{100 * r['ours_mfu']:.1f}% | {100 * r['hf_mfu']:.1f}% | "
          f"{1e3 * r['ours_median_s']:.1f} | {1e3 * r['hf_median_s']:.1f} | "
          f"{r['ours_compile_s']:.1f} | {r['ours_first_loss']:.2f}→{r['ours_last_loss']:.2f} / "
          f"{r['hf_first_loss']:.2f}→{r['hf_last_loss']:.2f} |")
  return write_report(args.json, xla_peak, torch_peak, rows, args.dtype)


if __name__ == "__main__":
  main()
