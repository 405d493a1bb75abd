"""Analytic model FLOPs per training step and the measured matmul peak, for MFU.

The formulas every family composes are here (an encoder stack, an encoder-decoder); each
family's count per training step is its `Family.flops` (in its own unit), looked up by
`train_flops_per_step`.

MFU = FLOPs the model actually needs / step time / measured matmul peak of this machine.
Only matmul FLOPs count (the usual convention): projections, FFN, attention scores and
context, and the output head at the positions that are actually scored. Backward = 2x forward.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.config import Config


def encoder_forward_flops(batch: int, length: int, hidden: int, ffn: int, layers: int) -> float:
  """Matmul FLOPs of a Transformer encoder stack's forward pass."""
  per_token_layer = 2 * (4 * hidden * hidden + 2 * hidden * ffn)  # q,k,v,o + FFN in/out
  attention = 2 * 2 * length * hidden  # scores q.k and context p.v, per token per layer
  return float(batch * length * layers * (per_token_layer + attention))


def encoder_decoder_forward_flops(batch: int, inputs: int, targets: int, hidden: int,
                                  inner: int, ffn: int, enc_layers: int, dec_layers: int,
                                  vocab: int, gated: bool = True) -> float:
  """Matmul FLOPs of a T5-style encoder-decoder forward pass with a full LM head.

  inner = heads * head_dim (T5's d_kv need not divide d_model); a gated FFN has three
  matrices. Cross attention projects k and v once per encoder token and decoder layer.
  """
  ffn_mats = 3 if gated else 2
  attn_proj = 4 * hidden * inner  # q, k, v, o per token
  enc_token = 2 * (attn_proj + ffn_mats * hidden * ffn) + 2 * 2 * inputs * inner
  dec_token = (2 * (attn_proj + 2 * hidden * inner + ffn_mats * hidden * ffn) +
               2 * 2 * targets * inner + 2 * 2 * inputs * inner)
  cross_kv = 2 * 2 * hidden * inner * inputs  # per row and decoder layer
  head = 2 * hidden * vocab * targets
  return float(batch * (inputs * enc_layers * enc_token + targets * dec_layers * dec_token +
                        dec_layers * cross_kv + head))


def seq2seq_train_flops_per_step(config: Config, gated: bool, head_dim: int = 0) -> float:
  """Training FLOPs of one optimizer step of an encoder-decoder (3x forward) on full rows:
  a gated FFN with heads of `head_dim` (T5; 0 = hidden_size / heads) or a two-matrix FFN
  with hidden_size split over the heads (BART)."""
  m, d = config.model, config.data
  inner = m.num_heads * (head_dim or m.hidden_size // m.num_heads)
  return 3.0 * encoder_decoder_forward_flops(
      config.train.batch_size, d.seq_len, d.target_len, m.hidden_size, inner,
      m.intermediate_size, m.num_layers, m.num_decoder_layers or m.num_layers, m.vocab_size,
      gated=gated)


def train_flops_per_step(config: Config) -> float:
  """The family's analytic training FLOPs per optimizer step (its `Family.flops`)."""
  from t5x_like import families  # the families import this module's formulas

  family = families.get(config.model.family)
  if family.flops is None:
    raise ValueError(f"model family {family.name!r} declares no FLOP count")
  lora = getattr(config, "lora", None)  # (benchmarks and tests pass bare namespaces)
  if lora is not None and lora.rank:
    # LoRA: frozen weights get no gradient, so a step is forward + activation gradients,
    # 2x forward. Left out: the targeted layers' kernel gradients (layers.Dense multiplies by
    # W + s A B without adapter dropout; 6% of XLA's count on a small Llama with q/v targets)
    # and one third of the attention-score products' backward (no weight gradient to skip).
    return family.flops(config) * 2.0 / 3.0
  return family.flops(config)


@functools.cache
def measured_matmul_peak(dtype: str = "float32", size: int = 1024, repeats: int = 10) -> float:
  """FLOP/s of a large square matmul on the first local device, the best of `repeats`.

  The best, not the median: a peak is what the machine can do, and on a shared VM a short
  burst of repeats can land in a slow moment (a median once read half the usual figure and
  put a step's MFU near 100%).

  Uses the first local device only and reports per-device peak; callers multiply by the
  number of devices that run the step.
  """
  dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  device = jax.local_devices()[0]
  # The training loop calls this inside its multi-device mesh context, where jit refuses
  # arguments committed to one device: run under a one-device mesh of our own.
  with jax.set_mesh(jax.sharding.Mesh(np.array([device]), ("x",))):
    a = jax.device_put(jnp.ones((size, size), dt), device)
    b = jax.device_put(jnp.ones((size, size), dt), device)
    # float32 accumulation, as the models' products (layers.einsum): with bf16 operands
    # that is the fast GEMM on CPU (bf16 -> bf16 runs at float32 speed there).
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      matmul(a, b).block_until_ready()
      times.append(time.perf_counter() - start)
  return 2.0 * size ** 3 / min(times)
