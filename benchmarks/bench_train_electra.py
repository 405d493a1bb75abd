"""Training throughput of our jitted ELECTRA step (generator + discriminator) versus HF
`ElectraForMaskedLM` + `ElectraForPreTraining` (PyTorch) with the same objective in PyTorch.

Both sides train the same two towers (shared embeddings: the HF discriminator's embeddings
module is the generator's; erf-GELU, dropout 0) with AdamW (same lr, betas, eps, weight decay
with biases/LayerNorm excluded, global-norm clipping at 1.0) on the same batches from the real
objective (`replaced_token_detection.make_example` on random blocks). The HF step: the
generator's MLM loss (HF's, logits at every position), Gumbel-max samples at the selected
positions from detached logits, the discriminator on the row with the samples in place
(labels 1 where the sample differs), loss = MLM + 50 x BCE over non-pad tokens, backward,
clip, step. Ours: the task `t5x_like/objectives/replaced_token_detection.py` (the generator
scores only the selected positions). Run from the repo root:

  python -m benchmarks.bench_train_electra [--shapes electra_tiny,electra_small_bench]
      [--steps 20] [--warmup 3] [--rounds 4] [--json out.json]
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

from benchmarks import train_harness
from benchmarks.train_spec import (
  Batch,
  TrainSpec,
  adamw,
  encoder_row_fields,
  stack_rows,
  torch_inputs,
)
from data_pipelines.objectives import replaced_token_detection as rtd
from data_pipelines.vocab import VocabInfo
from t5x_like.config import Config
from t5x_like.objectives import replaced_token_detection as rtd_objective


def make_batches(config: Config, vocab: VocabInfo, count: int, seed: int) -> list[Batch]:
  """`count` int32 batches [B, L] of the objective on random blocks (EOS every ~300)."""
  b, length = config.train.batch_size, config.data.seq_len
  params = rtd_objective.params(config)
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    blocks = rng.choice(vocab.normal_ids, size=(b, length - 2))
    blocks[rng.random(blocks.shape) < 1 / 300] = vocab.eos_id
    batches.append(stack_rows([rtd.make_example(block, rng, params, vocab)
                               for block in blocks.astype(np.int32)]))
  return batches


def row_fields(config: Config, batches: list[Batch]) -> dict[str, Any]:
  return encoder_row_fields(config, batches, "embedding_size", "generator_hidden_size")


def _electra_config(config: Config, tower: str) -> Any:
  import transformers

  m = config.model
  gen = tower == "generator"
  return transformers.ElectraConfig(
      vocab_size=m.vocab_size, embedding_size=m.embedding_size,
      hidden_size=m.generator_hidden_size if gen else m.hidden_size,
      num_hidden_layers=(m.generator_num_layers or m.num_layers) if gen else m.num_layers,
      num_attention_heads=m.generator_num_heads if gen else m.num_heads,
      intermediate_size=m.generator_intermediate_size if gen else m.intermediate_size,
      max_position_embeddings=m.max_position_embeddings, type_vocab_size=m.type_vocab_size,
      hidden_act=m.hidden_act, layer_norm_eps=m.layer_norm_eps,
      hidden_dropout_prob=m.dropout_rate, attention_probs_dropout_prob=m.attention_dropout_rate,
      initializer_range=m.initializer_range, pad_token_id=0)


def hf_model(config: Config) -> Any:
  """Generator + discriminator sharing one embeddings module, stepped on ELECTRA's loss."""
  import torch
  import transformers

  weight = config.objective.discriminator_weight

  class ElectraPair(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.generator = transformers.ElectraForMaskedLM(_electra_config(config, "generator"))
      self.discriminator = transformers.ElectraForPreTraining(
          _electra_config(config, "discriminator"))
      self.discriminator.electra.embeddings = self.generator.electra.embeddings

    def forward(self, input_ids, attention_mask, token_type_ids, labels):
      gen = self.generator(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids, labels=labels)
      selected = labels != -100
      logits = gen.logits.detach()[selected]
      gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp_min(1e-20)))
      sampled = torch.argmax(logits + gumbel, dim=-1)
      fake = input_ids.clone()
      fake[selected] = sampled
      replaced = (fake != torch.where(selected, labels, input_ids)).float()
      disc = self.discriminator(input_ids=fake, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).logits
      real = attention_mask.float()
      bce = torch.nn.functional.binary_cross_entropy_with_logits(disc, replaced,
                                                                 reduction="none")
      return types.SimpleNamespace(loss=gen.loss + weight * (bce * real).sum() / real.sum())

  return ElectraPair()


SPEC = TrainSpec(
    family="ELECTRA", description=__doc__.splitlines()[0], preset="electra_tiny",
    shapes={
        "electra_tiny": (),
        # ELECTRA-Small's towers at 4 layers (d=256, generator d=64), L=128, B=16.
        "electra_small_bench": (
            "model.num_layers=4", "model.hidden_size=256", "model.num_heads=4",
            "model.intermediate_size=1024", "model.embedding_size=128",
            "model.generator_hidden_size=64", "model.generator_num_heads=1",
            "model.generator_intermediate_size=256", "model.max_position_embeddings=128",
            "model.vocab_size=8000", "data.seq_len=128", "train.batch_size=16"),
    },
    default_shapes="electra_tiny,electra_small_bench",
    overrides=("model.dropout_rate=0.0", "model.attention_dropout_rate=0.0"),
    make_batches=make_batches, row_fields=row_fields, hf_model=hf_model,
    hf_optimizer=lambda model, config: adamw(
        model, config.optim, lambda name: name.endswith("bias") or "LayerNorm" in name),
    hf_inputs=lambda batch: torch_inputs(
        batch, ("input_ids", "attention_mask", "token_type_ids", "labels")))


def main(argv: list[str] | None = None) -> dict[str, Any]:
  return train_harness.main(SPEC, argv)


if __name__ == "__main__":
  main()
