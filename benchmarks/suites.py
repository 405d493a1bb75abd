"""The suites `benchmarks.run_all` runs: module, full and quick arguments, targets, table.

Each suite is one benchmark module run as its own child process with the arguments here; its
JSON report is judged by `targets` (`benchmarks.suite_targets`) and rendered by `table`
(`benchmarks.suite_tables`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from benchmarks.suite_tables import (
  checkpoint_table,
  gemm_table,
  generate_table,
  lora_table,
  objective_table,
  prepare_table,
  train_table,
)
from benchmarks.suite_targets import (
  Report,
  Target,
  checkpoint_targets,
  generate_targets,
  lora_targets,
  mlm_targets,
  prepare_targets,
  rate_target,
  train_targets,
)


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


_HF = ("torch", "transformers")
_TRAIN_FULL = ("--steps", "20", "--warmup", "3", "--rounds", "4")
_TRAIN_QUICK = ("--steps", "2", "--warmup", "1", "--rounds", "2")

SUITES: tuple[Suite, ...] = (
    Suite("train_bert", "bench_train", "Train: BERT MLM vs HF BertForMaskedLM",
          ("--shapes", "bert_tiny,bert_small", *_TRAIN_FULL), ("--shapes", "bert_tiny", *_TRAIN_QUICK),
          train_targets("BertForMaskedLM", 1.25, {"bert_small": 0.70}), train_table, _HF),
    Suite("train_t5", "bench_train_t5", "Train: T5 span corruption vs HF "
          "T5ForConditionalGeneration", ("--shapes", "t5_small_bench", *_TRAIN_FULL),
          ("--shapes", "t5_tiny", *_TRAIN_QUICK),
          train_targets("T5ForConditionalGeneration", 1.2), train_table, _HF),
    Suite("train_bart", "bench_train_bart", "Train: BART denoising vs HF "
          "BartForConditionalGeneration", ("--shapes", "bart_small_bench", *_TRAIN_FULL),
          ("--shapes", "bart_tiny", *_TRAIN_QUICK),
          train_targets("BartForConditionalGeneration", 1.2), train_table, _HF),
    Suite("train_t5_bf16", "bench_train_t5", "Train: T5 in bf16 mixed precision (ours "
          "model.dtype=bfloat16, HF under torch.autocast bf16; context, no target)",
          ("--shapes", "t5_small_bench", "--dtype", "bfloat16", *_TRAIN_FULL),
          ("--shapes", "t5_tiny", "--dtype", "bfloat16", *_TRAIN_QUICK),
          lambda report: [], train_table, _HF),
    Suite("train_bart_bf16", "bench_train_bart", "Train: BART in bf16 mixed precision (ours "
          "model.dtype=bfloat16, HF under torch.autocast bf16; context, no target)",
          ("--shapes", "bart_small_bench", "--dtype", "bfloat16", *_TRAIN_FULL),
          ("--shapes", "bart_tiny", "--dtype", "bfloat16", *_TRAIN_QUICK),
          lambda report: [], train_table, _HF),
    Suite("train_xlnet", "bench_train_xlnet", "Train: XLNet permutation LM vs HF "
          "XLNetLMHeadModel", ("--shapes", "xlnet_small_bench", *_TRAIN_FULL),
          ("--shapes", "xlnet_tiny", *_TRAIN_QUICK),
          train_targets("XLNetLMHeadModel", 1.2), train_table, _HF),
    Suite("train_llama", "bench_train_llama", "Train: Llama causal LM vs HF LlamaForCausalLM",
          ("--shapes", "llama_tiny,llama_small_bench", *_TRAIN_FULL),
          ("--shapes", "llama_tiny", *_TRAIN_QUICK),
          train_targets("LlamaForCausalLM", 1.2), train_table, _HF),
    Suite("train_electra", "bench_train_electra", "Train: ELECTRA generator + discriminator "
          "vs HF ElectraForMaskedLM + ElectraForPreTraining (objective in PyTorch)",
          ("--shapes", "electra_tiny,electra_small_bench", *_TRAIN_FULL),
          ("--shapes", "electra_tiny", *_TRAIN_QUICK),
          train_targets("ElectraForMaskedLM + ElectraForPreTraining", 1.2), train_table, _HF),
    Suite("train_albert", "bench_train_albert", "Train: ALBERT n-gram MLM + sentence order "
          "vs HF AlbertForPreTraining (same objective)",
          ("--shapes", "albert_tiny,albert_base_bench", *_TRAIN_FULL),
          ("--shapes", "albert_tiny", *_TRAIN_QUICK),
          train_targets("AlbertForPreTraining", 1.2), train_table, _HF),
    Suite("generate", "bench_generate", "Greedy generation (KV cache, batch 1) vs HF generate "
          "on the same exported weights",
          ("--models", "llama_small_bench,mpt_small_bench", "--prompt-len", "32",
           "--new-tokens", "128", "--repeats", "5"),
          ("--models", "llama_small_bench", "--prompt-len", "8", "--new-tokens", "8",
           "--repeats", "1"),
          generate_targets(1.5), generate_table, _HF),
    Suite("checkpoint", "bench_checkpoint", "Checkpoint cost during training (ours only)",
          ("--shape", "bert_small", "--steps", "20", "--every", "10", "--rounds", "3"),
          ("--shape", "bert_tiny", "--steps", "4", "--every", "2", "--rounds", "1"),
          checkpoint_targets, checkpoint_table),
    Suite("lora", "bench_lora", "LoRA (rank 8) vs full training, BERT-base shape (ours only)",
          ("--shape", "bert_base", "--steps", "6", "--warmup", "1", "--rounds", "3"),
          ("--shape", "bert_micro", "--steps", "2", "--warmup", "1", "--rounds", "1"),
          lora_targets, lora_table),
    Suite("mlm_objective", "bench_mlm_objective", "MLM objective vs HF "
          "DataCollatorForLanguageModeling, L=512, one core",
          ("--length", "512", "--n", "2000", "--repeats", "5"),
          ("--length", "128", "--n", "64", "--repeats", "2"),
          mlm_targets, objective_table("tokens/s", (("selected/record", "selected_per_record",
                                                      ".1f"), ("vs HF", "vs_hf", ".2f"))),
          ("transformers",)),
    Suite("span_corruption", "bench_span_corruption", "Span corruption objective (T5), inputs "
          "512, one core", ("--inputs-length", "512", "--n", "2000", "--repeats", "7"),
          ("--inputs-length", "128", "--n", "64", "--repeats", "2"),
          rate_target("span corruption objective, raw tokens/s on one core"),
          objective_table("raw tokens/s", (("vs naive loop", "vs_naive", ".2f"),))),
    Suite("ul2", "bench_ul2", "UL2 mixture of denoisers (R1 R2 X1-X4 S, paradigm tokens), inputs "
          "512, one core", ("--inputs-length", "512", "--n", "2000", "--repeats", "7"),
          ("--inputs-length", "128", "--n", "64", "--repeats", "2"),
          rate_target("UL2 mixture objective, raw tokens/s on one core"),
          objective_table("raw tokens/s")),
    Suite("denoising", "bench_denoising", "Denoising objective (BART), length 512, one core",
          ("--length", "512", "--n", "2000", "--repeats", "7"),
          ("--length", "128", "--n", "64", "--repeats", "2"),
          rate_target("denoising objective (default mix), target tokens/s on one core"),
          objective_table("target tokens/s", (("mean source len", "mean_source_length",
                                                ".1f"),))),
    Suite("permutation_lm", "bench_permutation_lm", "Permutation LM objective (XLNet), length "
          "512, one core", ("--length", "512", "--n", "2000", "--repeats", "7"),
          ("--length", "128", "--n", "64", "--repeats", "2"),
          rate_target("permutation LM objective, row tokens/s on one core"),
          objective_table("row tokens/s", (("predicted/record", "predicted_per_record", ".1f"),
                                            ("vs HF", "vs_hf", ".2f"))), ("transformers",)),
    Suite("prepare", "bench_prepare", "Data preparation (`pretrain data prepare`): tokens/s "
          "with 1 and 2 workers vs HF datasets map(num_proc=2), peak memory as the corpus grows",
          ("--sizes", "100", "400"), ("--sizes", "4", "8"), prepare_targets, prepare_table,
          ("datasets",)),
    Suite("gemm", "bench_gemm", "f32 GEMMs of the train-step shapes, XLA vs torch (context, no "
          "target)", ("--repeats", "30"), ("--repeats", "2"), lambda report: [], gemm_table,
          ("torch",)),
)
SUITE_NAMES = tuple(s.name for s in SUITES)
