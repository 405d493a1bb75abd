"""Training throughput of our jitted Llama causal-LM step versus HF `LlamaForCausalLM`
(PyTorch) on the same shape, in the same invocation.

Both sides train the same Llama (RMSNorm, RoPE, grouped-query attention, SwiGLU, untied head,
no biases, no dropout; HF's config is the one our exporter writes) with AdamW (same lr,
betas 0.9 / 0.95, eps, weight decay 0.1 except on the RMSNorm scales, global-norm clipping
at 1.0, constant lr) on the same batches: rows of the real `causal_lm` objective in blocks
mode (data.pack_documents=false) on random blocks of L + 1 tokens, `input_ids = s[:-1]`,
`labels = s[1:]`, every position scored. Batches are pre-built on the device for both sides;
steps are timed one by one after warm-up, compilation is excluded and reported separately,
and the two sides alternate in rounds so machine noise hits both alike
(`benchmarks.train_harness`). Run from the repo root:

  python -m benchmarks.bench_train_llama [--shapes llama_tiny,llama_small_bench] [--steps 20]
      [--warmup 3] [--rounds 4] [--json out.json]

The loss is the same on both sides, token for token: our labels are already shifted, so HF
gets them as `shift_labels` too (its `ForCausalLMLoss` then skips its own shift). Passing
them only as `labels` would make HF score logits[i] against labels[i + 1], and the usual
repair (`labels = [-100] + ours[:-1]`) loses the last position's target.

Tokens/s counts row positions (B x L); MFU uses the same analytic FLOP count for both sides
(`t5x_like.families.llama.flops.train_flops_per_step`: the full L x L attention square).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import train_harness
from benchmarks.train_spec import Batch, TrainSpec, adamw, stack_rows, torch_inputs
from data_pipelines.vocab import VocabInfo
from pretrain import data as data_glue
from t5x_like import models
from t5x_like.config import Config
from t5x_like.families.llama import export as llama_export
from t5x_like.objectives import causal_lm as causal_lm_objective


def make_batches(config: Config, vocab: VocabInfo, count: int, seed: int) -> list[Batch]:
  """int32 batches of the objective's rows: input_ids, labels [B, L]."""
  example = causal_lm_objective.make_example(config, vocab)
  raw = data_glue.block_length(config)
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    blocks = rng.choice(vocab.normal_ids, size=(config.train.batch_size, raw)).astype(np.int32)
    batches.append(stack_rows([example(block, rng) for block in blocks]))
  return batches


def row_fields(config: Config, batches: list[Batch]) -> dict[str, Any]:
  m = config.model
  return {"batch_size": config.train.batch_size, "seq_len": config.data.seq_len,
          "hidden_size": m.hidden_size, "num_layers": m.num_layers, "num_heads": m.num_heads,
          "num_kv_heads": m.num_kv_heads or m.num_heads,
          "intermediate_size": m.intermediate_size, "vocab_size": m.vocab_size}


def hf_model(config: Config) -> Any:
  """HF `LlamaForCausalLM` with the config.json our exporter writes for this model."""
  import transformers

  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      **llama_export.hf_config_dict(models.module_config(config.model))))
  # An untied head on both sides: the head's gradient and AdamW state are a large share of
  # a small model's step.
  assert model.lm_head.weight is not model.model.embed_tokens.weight
  return model


def hf_inputs(batch: Batch) -> dict[str, Any]:
  """input_ids, and our (already shifted) labels as both `labels` and `shift_labels`."""
  out = torch_inputs(batch)
  out["shift_labels"] = out["labels"]
  return out


SPEC = TrainSpec(
    family="Llama", description=__doc__.splitlines()[0], preset="llama_tiny",
    shapes={
        # The size of the other families' small shapes: 4 layers, d=256, rows of 128; 4 query
        # heads over 2 kv heads as llama_tiny, SwiGLU ~8/3 x d (688, a multiple of 16).
        "llama_small_bench": ("model.num_layers=4", "model.hidden_size=256",
                              "model.num_heads=4", "model.num_kv_heads=2",
                              "model.intermediate_size=688", "model.vocab_size=8000",
                              "data.seq_len=128", "train.batch_size=16"),
        "llama_tiny": (),
    },
    default_shapes="llama_tiny,llama_small_bench",
    # Blocks mode: full rows, every position scored (the preset packs documents with BOS).
    overrides=("model.dropout_rate=0.0", "data.pack_documents=false",
               "objective.add_bos=false", "objective.z_loss=0.0"),
    make_batches=make_batches, row_fields=row_fields, hf_model=hf_model,
    # Ours spares the RMSNorm `scale`s (optimizer._NO_DECAY); HF calls them `*norm.weight`.
    hf_optimizer=lambda model, config: adamw(model, config.optim, lambda name: "norm" in name),
    hf_inputs=hf_inputs,
    flush_denormals=True)  # Adam's second moments of tiny gradients reach float32 denormals


def main(argv: list[str] | None = None) -> dict[str, Any]:
  return train_harness.main(SPEC, argv)


if __name__ == "__main__":
  main()
