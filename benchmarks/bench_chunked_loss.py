"""The LM head + cross-entropy of a decoder step, whole or in chunks of the sequence.

A probe for the train_llama gap (docs/benchmarks.md): half of a `llama_small_bench` step is
the head ([B*L, D] x [D, V]) and its loss over the float32 logits. This times that piece alone,
forward + backward under one `jax.jit`, with the logits made for the whole [B, L, V] at once
(as the task does) or chunk by chunk along L inside a `lax.scan`, with and without
`jax.checkpoint` (recomputing each chunk's logits in the backward). Every variant's loss is
checked against the whole one.

  python -m benchmarks.bench_chunked_loss [--batch 16 --length 128 --hidden 256 --vocab 8000]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def _stats(x_BLD: jax.Array, w_DV: jax.Array, y_BL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summed NLL and the count of targets at the maximum logit (the task's accuracy)."""
  logits = jnp.einsum("bld,dv->blv", x_BLD, w_DV)
  target = jnp.take_along_axis(logits, y_BL[..., None], -1)[..., 0]
  lse = jax.nn.logsumexp(logits, -1)
  best = jax.lax.stop_gradient(jnp.max(logits, -1))
  return jnp.sum(lse - target), jnp.sum(target >= best)


def _chunked(chunks: int, remat: bool):
  stats = jax.checkpoint(_stats) if remat else _stats

  def loss(x_BLD, w_DV, y_BL):
    b, length, d = x_BLD.shape
    xs = x_BLD.reshape(b, chunks, length // chunks, d).swapaxes(0, 1)
    ys = y_BL.reshape(b, chunks, length // chunks).swapaxes(0, 1)

    def body(carry, xy):
      nll, correct = stats(xy[0], w_DV, xy[1])
      return (carry[0] + nll, carry[1] + correct), None

    init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    return jax.lax.scan(body, init, (xs, ys))[0]
  return loss


def _time(fn, args, repeats: int) -> tuple[float, float, jax.Array]:
  step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))
  (loss, _), _ = jax.block_until_ready(step(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), min(times), loss


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--vocab", type=int, default=8000)
  parser.add_argument("--chunks", default="2,4,8,16")
  parser.add_argument("--repeats", type=int, default=8)
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(args.batch, args.length, args.hidden)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(args.hidden, args.vocab)) * 0.02, jnp.float32)
  y = jnp.asarray(rng.integers(0, args.vocab, (args.batch, args.length)), jnp.int32)
  print(f"head + loss, forward + backward: [{args.batch}x{args.length}, {args.hidden}] x "
        f"[{args.hidden}, {args.vocab}], float32; median / min of {args.repeats} calls")
  print("| variant | median ms | min ms |\n|---|---:|---:|")
  median, best, whole = _time(_stats, (x, w, y), args.repeats)
  print(f"| whole [B, L, V] logits | {median * 1e3:.0f} | {best * 1e3:.0f} |")
  for chunks in (int(c) for c in args.chunks.split(",")):
    for remat in (False, True):
      median, best, loss = _time(_chunked(chunks, remat), (x, w, y), args.repeats)
      np.testing.assert_allclose(float(loss), float(whole), rtol=1e-5)
      label = f"{chunks} chunks of L{' + jax.checkpoint' if remat else ''}"
      print(f"| {label} | {median * 1e3:.0f} | {best * 1e3:.0f} |", flush=True)


if __name__ == "__main__":
  main()
