"""Autoregressive generation for the decoder-only families: a KV cache and one compiled loop.

The family's module takes `decode=True` and keeps its keys and values in the flax "cache"
collection (sized by the length it was initialised with). `generate` runs the prompt through
it once (prefill), then `max_new_tokens - 1` single-token steps inside one `jax.lax.fori_loop`,
all in one `jax.jit`: the number of new tokens is a static shape, so nothing is compiled per
token. Sampling follows HF's order (temperature, then top-k, then top-p); temperature 0 is
greedy (argmax, as `generate(do_sample=False)`). A finished sequence (EOS) keeps emitting EOS
inside the loop and is cut on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.config import ConfigError


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  max_new_tokens: int = 64
  temperature: float = 0.0  # 0 = greedy
  top_k: int = 0  # 0 = no top-k filter
  top_p: float = 1.0  # 1 = no nucleus filter
  seed: int = 0

  def check(self) -> None:
    if self.max_new_tokens < 1:
      raise ConfigError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
    if not (math.isfinite(self.temperature) and self.temperature >= 0):
      raise ConfigError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
    if self.top_k < 0:
      raise ConfigError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
    if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
      raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")


@dataclasses.dataclass(frozen=True)
class Generated:
  tokens: list[int]  # the new tokens, up to and including EOS if it came
  compile_s: float
  run_s: float  # the compiled prefill + decode loop

  @property
  def tokens_per_s(self) -> float:
    return len(self.tokens) / self.run_s if self.run_s > 0 else float("inf")


def _filter(logits_V: jax.Array, sp: SamplingParams) -> jax.Array:
  """HF's logits warpers in HF's order: temperature, top-k, top-p (keeps at least one)."""
  logits_V = logits_V / sp.temperature
  if sp.top_k:
    kth = jax.lax.top_k(logits_V, min(sp.top_k, logits_V.shape[-1]))[0][-1]
    logits_V = jnp.where(logits_V < kth, -jnp.inf, logits_V)
  if sp.top_p < 1.0:
    order = jnp.argsort(-logits_V)
    probs = jax.nn.softmax(logits_V[order])
    before = jnp.cumsum(probs) - probs  # mass of the tokens ranked above
    keep_sorted = before < sp.top_p  # the first token always stays
    keep = jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)
    logits_V = jnp.where(keep, logits_V, -jnp.inf)
  return logits_V


def _pick(logits_V: jax.Array, key: jax.Array, sp: SamplingParams) -> jax.Array:
  if sp.temperature == 0:
    return jnp.argmax(logits_V).astype(jnp.int32)
  return jax.random.categorical(key, _filter(logits_V.astype(jnp.float32), sp)).astype(
      jnp.int32)


def empty_cache(module: Any, length: int) -> Any:
  """The module's zero KV cache for `length` positions (no parameters are initialised)."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, length),
                                                                           jnp.int32),
                                              decode=True))
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


@functools.partial(jax.jit, static_argnames=("module", "sp", "eos_id"))
def _run(module: Any, params: Any, cache: Any, prompt_1P: jax.Array, key: jax.Array,
         sp: SamplingParams, eos_id: int) -> jax.Array:
  def step(tokens_1T: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
    logits, updated = module.apply({"params": params, "cache": cache}, tokens_1T, decode=True,
                                   mutable=["cache"])
    return logits[0, -1], updated["cache"]

  keys = jax.random.split(key, sp.max_new_tokens)
  logits_V, cache = step(prompt_1P, cache)
  first = _pick(logits_V, keys[0], sp)
  out = jnp.full((sp.max_new_tokens,), eos_id, jnp.int32).at[0].set(first)

  def body(i: int, carry: tuple[jax.Array, Any, jax.Array]) -> tuple[jax.Array, Any, jax.Array]:
    out, cache, done = carry
    logits_V, cache = step(out[i - 1][None, None], cache)
    token = jnp.where(done, eos_id, _pick(logits_V, keys[i], sp))
    return out.at[i].set(token), cache, done | (token == eos_id)

  out, _, _ = jax.lax.fori_loop(1, sp.max_new_tokens, body, (out, cache, first == eos_id))
  return out


def generate(module: Any, params: Any, prompt: list[int] | np.ndarray, sp: SamplingParams,
             eos_id: int, max_length: int | None = None) -> Generated:
  """New tokens after `prompt` (one sequence).

  max_length: the family's context (e.g. Llama's max_position_embeddings); a prompt longer
  than it is refused, and the new tokens stop at it. None: no limit but the cache (ALiBi).
  """
  sp.check()
  prompt = np.asarray(prompt, np.int32)
  if prompt.ndim != 1 or len(prompt) == 0:
    raise ConfigError("the prompt is empty: give at least one token of text")
  if max_length is not None:
    if len(prompt) > max_length:
      raise ConfigError(f"the prompt has {len(prompt)} tokens, more than the model's context "
                        f"of {max_length} (model.max_position_embeddings)")
    sp = dataclasses.replace(sp, max_new_tokens=min(sp.max_new_tokens,
                                                    max_length - len(prompt)))
    if sp.max_new_tokens < 1:
      raise ConfigError(f"the prompt fills the model's context of {max_length} tokens: no "
                        f"room for a new one")
  cache = empty_cache(module, len(prompt) + sp.max_new_tokens)
  args = (module, params, cache, jnp.asarray(prompt)[None], jax.random.key(sp.seed))
  start = time.perf_counter()
  compiled = _run.lower(*args, sp=sp, eos_id=eos_id).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  out = np.asarray(jax.block_until_ready(compiled(*args[1:])))
  run_s = time.perf_counter() - start
  ends = np.flatnonzero(out == eos_id)
  tokens = out[: ends[0] + 1] if len(ends) else out
  return Generated(tokens=[int(t) for t in tokens], compile_s=compile_s, run_s=run_s)
