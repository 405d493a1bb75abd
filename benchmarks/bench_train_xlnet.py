"""Training throughput of our jitted XLNet permutation-LM step versus HF `XLNetLMHeadModel`
(PyTorch) on the same shape and the same inputs, in the same invocation.

Both sides train the same XLNet (post-LN, relative attention, two streams, tied head with
bias, dropout 0) with AdamW (same lr, betas, eps, weight decay with biases/LayerNorm
excluded, global-norm clipping at 1.0, constant lr) on the same batches from
`permutation_lm.make_example` on random blocks: `input_ids`, `token_type_ids`, `perm_mask`
[B, L, L], `target_mapping` [B, P, L], `labels` [B, P] (P = L/6). Batches are pre-built on the
device for both sides; steps are timed one by one after warm-up, compilation is excluded and
reported separately, and the sides alternate in rounds (`benchmarks.train_harness`). Run from
the repo root:

  python -m benchmarks.bench_train_xlnet [--shapes xlnet_small_bench] [--steps 20]
      [--warmup 3] [--rounds 4] [--json out.json]

Tokens/s counts row positions (B x L); MFU uses the same analytic FLOP count for both sides
(`t5x_like.families.xlnet.flops.train_flops_per_step`: the FLOPs the model needs, query stream on the
P targets only).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import train_harness
from benchmarks.train_spec import Batch, TrainSpec, adamw, stack_rows, torch_inputs
from data_pipelines.objectives import permutation_lm
from data_pipelines.vocab import VocabInfo
from pretrain import data as data_glue
from t5x_like import models
from t5x_like.config import Config
from t5x_like.families.xlnet import model as xlnet
from t5x_like.objectives import permutation_lm as permutation_objective


def make_batches(config: Config, vocab: VocabInfo, count: int, seed: int) -> list[Batch]:
  """Batches of `permutation_lm.make_example` rows on random blocks."""
  params = permutation_objective.params(config)
  raw = data_glue.block_length(config)
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    blocks = rng.choice(vocab.normal_ids, size=(config.train.batch_size, raw)).astype(np.int32)
    batches.append(stack_rows([permutation_lm.make_example(block, rng, params, vocab)
                               for block in blocks]))
  return batches


def row_fields(config: Config, batches: list[Batch]) -> dict[str, Any]:
  m = config.model
  return {"batch_size": config.train.batch_size, "seq_len": config.data.seq_len,
          "num_predict": int(batches[0]["labels"].shape[1]), "hidden_size": m.hidden_size,
          "num_layers": m.num_layers, "num_heads": m.num_heads,
          "intermediate_size": m.intermediate_size, "vocab_size": m.vocab_size}


def hf_model(config: Config) -> Any:
  """HF `XLNetLMHeadModel` with the config our converter maps ours to."""
  import transformers

  return transformers.XLNetLMHeadModel(transformers.XLNetConfig(
      **xlnet.hf_config_dict(models.module_config(config.model)), pad_token_id=0,
      bos_token_id=3, eos_token_id=1))


SPEC = TrainSpec(
    family="XLNet", description=__doc__.splitlines()[0], preset="xlnet_tiny",
    shapes={
        # The size of the other families' small shapes: 4 layers, d=256, rows of 128.
        "xlnet_small_bench": ("model.num_layers=4", "model.hidden_size=256",
                              "model.num_heads=4", "model.intermediate_size=1024",
                              "model.vocab_size=8000", "data.seq_len=128",
                              "train.batch_size=16"),
        "xlnet_tiny": (),
    },
    default_shapes="xlnet_small_bench", overrides=("model.dropout_rate=0.0",),
    make_batches=make_batches, row_fields=row_fields, hf_model=hf_model,
    hf_optimizer=lambda model, config: adamw(
        model, config.optim, lambda name: name.endswith("bias") or "layer_norm" in name),
    # perm_mask and target_mapping are float32 masks in HF's API, the rest ids.
    hf_inputs=lambda batch: torch_inputs(batch, ("input_ids", "token_type_ids", "labels"),
                                         ("perm_mask", "target_mapping")),
    flush_denormals=True)  # Adam's second moments of tiny gradients reach float32 denormals


def main(argv: list[str] | None = None) -> dict[str, Any]:
  return train_harness.main(SPEC, argv)


if __name__ == "__main__":
  main()
