"""The attention-kernel switch: `model.attention_kernel=splash` runs the Pallas splash-attention
kernel (here in Pallas interpret mode on CPU) and gives what XLA attention gives; calls and
families it cannot serve fall back to XLA with a log line."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like import config as config_lib
from t5x_like import models
from t5x_like.families.bert import model as bert
from t5x_like.families.llama import model as llama
from t5x_like.models import layers

B, L, H, K = 2, 128, 2, 16


def _reference(q, k, v, seg_q, seg_kv, causal):
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k)
  keep = (seg_q[:, :, None] == seg_kv[:, None, :])[:, None]
  if causal:
    keep = keep & jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))[None, None]
  scores = jnp.where(keep, scores, jnp.finfo(jnp.float32).min)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v)


def _segments() -> np.ndarray:
  """Row 0: two packed examples then padding (0); row 1: one example then padding."""
  seg = np.zeros((B, L), np.int32)
  seg[0, :50], seg[0, 50:110] = 1, 2
  seg[1, :90] = 1
  return seg


@pytest.mark.parametrize("causal", [False, True])
def test_kernel_equals_softmax_attention_forward_and_backward(causal):
  kq, kk, kv, kg = jax.random.split(jax.random.key(0), 4)
  q, k, v, g = (jax.random.normal(key, (B, L, H, K)) for key in (kq, kk, kv, kg))
  seg = jnp.asarray(_segments())
  real = np.asarray(seg)[:, :, None, None] != 0  # padding rows' outputs are not compared

  ours = jax.jit(lambda q, k, v: layers.splash_attention(q, k, v, seg, seg, causal))
  theirs = jax.jit(lambda q, k, v: _reference(q, k, v, seg, seg, causal))
  np.testing.assert_allclose(np.where(real, ours(q, k, v), 0),
                             np.where(real, theirs(q, k, v), 0), atol=1e-5)
  loss = lambda fn: lambda *a: jnp.sum(jnp.where(real, fn(*a) * g, 0.0))
  grads = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(q, k, v)
  expected = jax.jit(jax.grad(loss(theirs), argnums=(0, 1, 2)))(q, k, v)
  for ours_g, their_g in zip(grads, expected):
    np.testing.assert_allclose(ours_g, their_g, atol=1e-5)


def _assert_splash_equals_xla(xla, splash, params, real, *args, **kwargs) -> str:
  """The masked log-likelihood at the `real` positions, its logits and its gradients are
  XLA's with the splash model; returns the splash model's lowered HLO text."""
  def loss(model):
    def f(p):
      logits = model.apply(p, *args, **kwargs)
      return jnp.sum(jnp.where(real[..., None], jax.nn.log_softmax(logits), 0.0)), logits
    return jax.jit(jax.value_and_grad(f, has_aux=True))

  (value_x, logits_x), grads_x = loss(xla)(params)
  (value_s, logits_s), grads_s = loss(splash)(params)
  np.testing.assert_allclose(np.asarray(logits_s)[real], np.asarray(logits_x)[real], atol=1e-4)
  np.testing.assert_allclose(value_s, value_x, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(grads_s), jax.tree_util.tree_leaves(grads_x)):
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-3)
  return jax.jit(splash.apply).lower(params, *args, **kwargs).as_text()


def _bert(kernel: str, **extra) -> bert.BertForMaskedLM:
  values = {"vocab_size": 128, "hidden_size": H * K, "num_layers": 2, "num_heads": H,
            "intermediate_size": 64, "max_position_embeddings": L, "dropout_rate": 0.0,
            "attention_dropout_rate": 0.0, "attention_kernel": kernel}
  values.update(extra)
  return bert.BertForMaskedLM(bert.BertConfig(**values))


@pytest.mark.parametrize("packed", [True, False])
def test_bert_with_splash_equals_xla(packed):
  seg = _segments()
  ids = np.random.default_rng(0).integers(5, 128, (B, L)).astype(np.int32) * (seg > 0)
  kwargs = {"segment_ids": seg} if packed else {"attention_mask": (seg > 0).astype(np.int32)}
  xla, splash = _bert("xla"), _bert("splash")
  params = jax.jit(xla.init)(jax.random.key(1), ids, **kwargs)
  hlo = _assert_splash_equals_xla(xla, splash, params, seg > 0, ids, **kwargs)
  # and the kernel really ran: its HLO has the interpreted Pallas grid loop, XLA's has none
  assert "while" in hlo
  assert "while" not in jax.jit(xla.apply).lower(params, ids, **kwargs).as_text()


def test_calls_the_kernel_cannot_serve_fall_back_with_a_log_line(caplog):
  layers._fallbacks_logged.clear()  # pylint: disable=protected-access
  short = 96  # not a multiple of the 128-token block
  ids = np.random.default_rng(0).integers(5, 128, (B, short)).astype(np.int32)
  params = jax.jit(_bert("xla").init)(jax.random.key(1), ids)
  with caplog.at_level(logging.WARNING, logger=layers.__name__):
    got = _bert("splash").apply(params, ids)
  np.testing.assert_array_equal(got, _bert("xla").apply(params, ids))
  assert "not multiples of the kernel's 128-token block; using XLA attention" in caplog.text

  caplog.clear()  # attention dropout in training: the kernel has none
  ids = np.random.default_rng(0).integers(5, 128, (B, L)).astype(np.int32)
  model = _bert("splash", attention_dropout_rate=0.1)
  with caplog.at_level(logging.WARNING, logger=layers.__name__):
    model.apply(params, ids, deterministic=False, rngs={"dropout": jax.random.key(2)})
  assert "attention-probability dropout is on" in caplog.text


@pytest.mark.parametrize("family,why", [("t5", "relative position bias"),
                                        ("xlnet", "relative attention"), ("mpt", "ALiBi bias")])
def test_families_without_the_kernel_say_so(caplog, family, why):
  models._SAID.discard(family)  # pylint: disable=protected-access
  cfg = config_lib.model_section(family, vocab_size=128, hidden_size=32, num_layers=1,
                                 num_heads=2, intermediate_size=64, attention_kernel="splash")
  with caplog.at_level(logging.WARNING, logger=models.__name__):
    models.build(cfg)
  assert f"model.attention_kernel=splash: {family} uses XLA attention" in caplog.text
  assert why in caplog.text


def _llama(kernel: str) -> llama.LlamaForCausalLM:
  # grouped-query: 4 query heads read 2 kv heads
  return llama.LlamaForCausalLM(llama.LlamaConfig(
      vocab_size=128, hidden_size=4 * K, num_layers=2, num_heads=4, num_kv_heads=2,
      intermediate_size=64, attention_kernel=kernel))


@pytest.mark.parametrize("packed", [True, False])
def test_llama_with_splash_equals_xla(packed):
  """Causal splash attention with segment ids and grouped-query heads: the loss, logits and
  gradients of XLA's masked attention; packed rows restart their positions per document."""
  seg = _segments() if packed else np.ones((B, L), np.int32)
  ids = np.random.default_rng(0).integers(5, 128, (B, L)).astype(np.int32)
  args = {"segment_ids_BL": seg} if packed else {}
  if packed:
    args["positions_BL"] = np.concatenate([np.arange(50), np.arange(60), np.arange(18)])[
        None].repeat(B, 0).astype(np.int32)
  xla, splash = _llama("xla"), _llama("splash")
  params = jax.jit(xla.init)(jax.random.key(1), ids, **args)
  assert "while" in _assert_splash_equals_xla(xla, splash, params, seg > 0, ids, **args)


def test_llama_prefix_lm_and_decoding_use_xla_with_a_log_line(caplog):
  layers._fallbacks_logged.clear()  # pylint: disable=protected-access
  ids = np.random.default_rng(0).integers(5, 128, (B, L)).astype(np.int32)
  prefix = np.zeros((B, L), bool)
  prefix[:, :20] = True
  params = jax.jit(_llama("xla").init)(jax.random.key(1), ids)
  with caplog.at_level(logging.WARNING, logger=layers.__name__):
    got = jax.jit(_llama("splash").apply)(params, ids, prefix_BL=prefix)
  np.testing.assert_array_equal(got, jax.jit(_llama("xla").apply)(params, ids, prefix_BL=prefix))
  assert "Llama: prefix-LM rows" in caplog.text and "using XLA attention" in caplog.text
  cache = jax.eval_shape(lambda: _llama("splash").init(jax.random.key(0), ids,
                                                       decode=True))["cache"]
  layers._fallbacks_logged.clear()  # pylint: disable=protected-access
  caplog.clear()  # a decoding step over the cache (not only its init) says so
  with caplog.at_level(logging.WARNING, logger=layers.__name__):
    jax.eval_shape(lambda c: _llama("splash").apply({**params, "cache": c}, ids[:, :1],
                                                    decode=True, mutable=["cache"]), cache)
  assert "Llama: decoding attends over the key/value cache" in caplog.text


def test_unknown_kernel_is_refused():
  with pytest.raises(config_lib.ConfigError, match="attention_kernel"):
    config_lib.load_config("bert_tiny", ["model.attention_kernel=flash"])


def test_train_steps_on_a_sharded_mesh_equal_xla():
  """Through the trainer's jitted step on data=2 x fsdp=2 x tensor=2 (heads split over
  `tensor`): losses and parameters after 2 steps equal the XLA kernel's."""
  from tests.t5x_like.conftest import mlm_batches, tiny_config
  from tests.t5x_like.test_sharding import _train, assert_params_close

  mesh = {"data": 2, "fsdp": 2, "tensor": 2}
  common = {"seq_len": 128}
  xla = tiny_config(mesh=mesh, data=common, model={"max_position_embeddings": 128})
  splash = tiny_config(mesh=mesh, data=common, model={"max_position_embeddings": 128,
                                                      "attention_kernel": "splash"})
  batches = mlm_batches(xla, 2)
  state_x, losses_x, _, _ = _train(xla, batches, 2)
  state_s, losses_s, _, _ = _train(splash, batches, 2)
  np.testing.assert_allclose(losses_s, losses_x, rtol=1e-5)
  assert_params_close(state_x.params, state_s.params, atol=1e-5)


def _bart(kernel: str):
  from t5x_like.families.bart import model as bart
  return bart.BartForConditionalGeneration(bart.BartConfig(
      vocab_size=128, hidden_size=H * K, num_layers=1, num_decoder_layers=1, num_heads=H,
      intermediate_size=64, max_position_embeddings=L, dropout_rate=0.0,
      attention_dropout_rate=0.0, attention_kernel=kernel))


@pytest.mark.parametrize("packed", [True, False])
def test_bart_with_splash_equals_xla(packed):
  """Encoder self-attention, causal decoder self-attention and cross-attention all on the
  kernel: logits and gradients at real decoder positions equal XLA's."""
  seg = _segments()
  dec = np.zeros_like(seg)  # decoder rows: the same examples, other lengths
  dec[0, :40], dec[0, 40:100] = 1, 2
  dec[1, :70] = 1
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 128, (B, L)).astype(np.int32) * (seg > 0)
  dec_ids = rng.integers(5, 128, (B, L)).astype(np.int32) * (dec > 0)
  if packed:
    kwargs = {"segment_ids": seg, "decoder_segment_ids": dec}
  else:
    kwargs = {"attention_mask": (seg > 0).astype(np.int32),
              "decoder_attention_mask": (dec > 0).astype(np.int32)}
  xla, splash = _bart("xla"), _bart("splash")
  params = jax.jit(xla.init)(jax.random.key(1), ids, dec_ids, **kwargs)
  hlo = _assert_splash_equals_xla(xla, splash, params, dec > 0, ids, dec_ids, **kwargs)
  assert hlo.count("while") >= 3  # the kernel ran for all three attentions
