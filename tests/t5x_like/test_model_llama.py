"""Llama: logits parity with transformers both ways (import and export; tied / untied head, GQA /
MHA), packed documents, prefix LM, KV-cache decoding, scan / remat / bf16, 8-device sharding,
the FLOP count, the model section and the tokenizer export."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import sentencepiece as spm
import torch
import transformers
from jax.sharding import PartitionSpec as P

from t5x_like import config as config_lib
from t5x_like import families, hf_import, sharding
from t5x_like.families.llama import export as llama_export
from t5x_like.families.llama import flops as llama_flops
from t5x_like.families.llama import model as llama
from t5x_like.training import step as step_lib

# initializer_range 0.2 gives logits of std ~1, so the 1e-4 tolerances mean something.
GQA = llama.LlamaConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4,
                        num_kv_heads=2, intermediate_size=64, layer_norm_eps=1e-5,
                        rope_theta=500.0, initializer_range=0.2)
MHA = dataclasses.replace(GQA, hidden_size=64, num_kv_heads=0, rope_theta=10000.0)
CASES = {"gqa-untied": GQA, "gqa-tied": dataclasses.replace(GQA, tie_word_embeddings=True),
         "mha-untied": MHA, "mha-tied": dataclasses.replace(MHA, tie_word_embeddings=True)}
BUNDLED_SP = os.path.join(os.path.dirname(__file__), "..", "..", "data_pipelines", "corpora",
                          "tokenizer", "bundled_8k.model")


def _ids(batch: int = 2, length: int = 12, seed: int = 0, vocab: int = 128) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, (batch, length)).astype(np.int32)


@functools.cache
def _apply(config: llama.LlamaConfig):
  """Jitted apply (eager Flax is slow and these tests call it many times)."""
  return jax.jit(llama.LlamaForCausalLM(config).apply,
                 static_argnames=("deterministic", "decode", "mutable"))


@functools.cache
def _params(config: llama.LlamaConfig = GQA, seed: int = 0) -> dict:
  """Init params with the norm scales moved off 1, so a misplaced norm shows."""
  variables = jax.jit(llama.LlamaForCausalLM(config).init)(jax.random.key(seed), _ids())
  params = nn.meta.unbox(variables)["params"]
  rng = np.random.default_rng(seed)

  def perturb(path, x):
    if jax.tree_util.keystr(path).endswith("['scale']"):
      return (1.0 + 0.3 * rng.normal(size=x.shape)).astype(x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(perturb, params)


def _ours(config, params, *args, **kwargs) -> np.ndarray:
  return np.asarray(_apply(config)({"params": params}, *args, **kwargs))


def _hf_config(config: llama.LlamaConfig) -> transformers.LlamaConfig:
  return transformers.LlamaConfig(
      vocab_size=config.vocab_size, hidden_size=config.hidden_size,
      intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads, num_key_value_heads=config.kv_heads,
      rms_norm_eps=config.layer_norm_eps, rope_theta=config.rope_theta,
      initializer_range=config.initializer_range,
      tie_word_embeddings=config.tie_word_embeddings, attn_implementation="eager")


def _hf_logits(model, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids).long()).logits.numpy()


# --------------------------------------------------------------------------------------
# Parity with transformers.


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_from_transformers(tmp_path, case):
  config = CASES[case]
  torch.manual_seed(0)
  hf = transformers.LlamaForCausalLM(_hf_config(config)).eval()
  with torch.no_grad():  # norm weights off 1, so a swapped or dropped norm shows
    for name, tensor in hf.named_parameters():
      if "norm" in name:
        tensor.add_(0.3 * torch.randn(tensor.shape))
  hf.save_pretrained(str(tmp_path / "hf"))
  imported = hf_import.import_hf(str(tmp_path / "hf"))
  assert imported.family == "llama" and not imported.new_params and not imported.ignored
  assert imported.model_config == config  # the config.json fields round-trip
  ids = _ids(3, 16, seed=1)
  theirs = _hf_logits(hf, ids)
  ours = _ours(imported.model_config, imported.params, ids)
  diff = float(np.max(np.abs(ours - theirs)))
  print(f"import {case}: max |logits diff| {diff:.2e}, logits std {np.std(theirs):.2f}")
  assert np.std(theirs) > 0.5 and diff < 1e-4
  # Import then export gives back exactly the tensors HF saved.
  saved = safetensors.numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
  exported = llama_export.llama_to_hf_state_dict(imported.params, imported.model_config)
  assert sorted(exported) == sorted(saved)
  for name, value in saved.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)


# Import covers all four cases; export the two that differ in every respect (GQA untied,
# MHA tied).
@pytest.mark.parametrize("case", ["gqa-untied", "mha-tied"])
def test_export_loads_in_transformers(tmp_path, case):
  config = CASES[case]
  params = _params(config)
  out = llama_export.export_llama(params, config, str(tmp_path / "hf"))
  hf, info = transformers.AutoModelForCausalLM.from_pretrained(
      out, attn_implementation="eager", output_loading_info=True)
  assert isinstance(hf, transformers.LlamaForCausalLM)
  assert not any(info.values()), info  # no missing / unexpected / mismatched keys
  hf.eval()
  assert hf.config.num_key_value_heads == config.kv_heads
  assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == config.tie_word_embeddings
  ids = _ids(3, 16, seed=2)
  ours, theirs = _ours(config, params, ids), _hf_logits(hf, ids)
  diff = float(np.max(np.abs(ours - theirs)))
  print(f"export {case}: max |logits diff| {diff:.2e}, logits std {np.std(theirs):.2f}")
  assert np.std(theirs) > 0.5 and diff < 1e-4


def test_export_refuses_mismatched_params(tmp_path):
  with pytest.raises(ValueError, match="no lm_head"):
    llama_export.llama_to_hf_state_dict(_params(CASES["gqa-tied"]), GQA)
  with pytest.raises(ValueError, match="self_attn.k_proj.weight: got shape"):
    llama_export.llama_to_hf_state_dict(_params(GQA), dataclasses.replace(GQA, num_kv_heads=4))
  with pytest.raises(ValueError, match="divisible by num_heads"):
    llama_export.hf_config_dict(dataclasses.replace(GQA, hidden_size=30, head_dim=8))


def test_import_of_older_and_unsupported_configs(tmp_path):
  hf = transformers.LlamaForCausalLM(_hf_config(GQA)).eval()
  hf.save_pretrained(str(tmp_path / "hf"))
  folder = str(tmp_path / "hf")
  path = os.path.join(folder, "config.json")
  with open(path, encoding="utf-8") as f:
    base = json.load(f)
  # transformers 4.x wrote rope_theta / rope_scaling and, before 4.31, each layer's inv_freq.
  old = {k: v for k, v in base.items() if k != "rope_parameters"}
  old.update(rope_theta=500.0, rope_scaling=None)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(old, f)
  tensors = safetensors.numpy.load_file(os.path.join(folder, "model.safetensors"))
  inv_freq = np.zeros(4, np.float32)
  safetensors.numpy.save_file(
      {**tensors, "model.layers.0.self_attn.rotary_emb.inv_freq": inv_freq,
       "model.layers.1.self_attn.rotary_emb.inv_freq": inv_freq},
      os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  imported = hf_import.import_hf(folder)
  assert imported.model_config.rope_theta == 500.0
  assert sorted(imported.ignored) == ["model.rotary_emb.inv_freq.0",
                                      "model.rotary_emb.inv_freq.1"]
  for change, message in (({"rope_scaling": {"type": "linear", "factor": 2.0}}, "linear"),
                          ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "llama3"),
                          ({"attention_bias": True}, "no biases"),
                          ({"hidden_act": "swish"}, "swish")):
    with open(path, "w", encoding="utf-8") as f:
      json.dump({**old, **change}, f)
    with pytest.raises(hf_import.HFImportError, match=message):
      hf_import.import_hf(folder)


def test_tokenizer_export_prepends_bos(tmp_path):
  if not os.path.exists(BUNDLED_SP):
    pytest.skip("bundled_8k.model not built")
  sp = spm.SentencePieceProcessor(model_file=BUNDLED_SP)
  config = dataclasses.replace(GQA, vocab_size=sp.get_piece_size())
  out = llama_export.export_llama(_params(config), config, str(tmp_path / "hf"), BUNDLED_SP)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  text = "The quick brown fox jumps over the lazy dog."
  assert tok(text)["input_ids"] == [tok.bos_token_id] + sp.encode(text)
  assert (tok.bos_token, tok.eos_token, tok.padding_side) == ("<s>", "</s>", "left")
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    hf_cfg = json.load(f)
  assert (hf_cfg["bos_token_id"], hf_cfg["eos_token_id"]) == (tok.bos_token_id,
                                                               tok.eos_token_id)


# --------------------------------------------------------------------------------------
# Masks: packed documents, prefix LM.


def test_packed_documents_equal_each_alone():
  a, b = _ids(1, 7, seed=3)[0], _ids(1, 9, seed=4)[0]
  pad = 4
  row = np.concatenate([a, b, np.zeros(pad, np.int32)])[None]
  segments = np.array([[1] * 7 + [2] * 9 + [0] * pad], np.int32)
  positions = np.array([list(range(7)) + list(range(9)) + [0] * pad], np.int32)
  packed = _ours(GQA, _params(GQA), row, segments, positions)
  alone_a = _ours(GQA, _params(GQA), a[None])
  alone_b = _ours(GQA, _params(GQA), b[None])
  np.testing.assert_allclose(packed[0, :7], alone_a[0], atol=1e-5)
  np.testing.assert_allclose(packed[0, 7:16], alone_b[0], atol=1e-5)
  # A different first document leaves the second one's logits exactly as they were.
  other = row.copy()
  other[0, :7] = _ids(1, 7, seed=5)[0]
  changed = _ours(GQA, _params(GQA), other, segments, positions)
  assert np.abs(changed[0, :7] - packed[0, :7]).max() > 1e-2
  np.testing.assert_array_equal(changed[0, 7:16], packed[0, 7:16])
  assert np.isfinite(packed).all()  # padding rows see nothing and stay finite


def test_prefix_is_bidirectional_and_the_suffix_causal():
  ids = _ids(1, 12, seed=6)
  prefix = np.zeros((1, 12), bool)
  prefix[0, :5] = True
  base = _ours(GQA, _params(GQA), ids, prefix_BL=prefix)
  np.testing.assert_array_equal(_ours(GQA, _params(GQA), ids, prefix_BL=np.zeros_like(prefix)),
                                _ours(GQA, _params(GQA), ids))
  later_prefix = ids.copy()
  later_prefix[0, 4] = (ids[0, 4] + 1) % 128
  got = _ours(GQA, _params(GQA), later_prefix, prefix_BL=prefix)
  assert np.abs(got[0, 0] - base[0, 0]).max() > 1e-3  # the first token sees the last prefix
  later_suffix = ids.copy()
  later_suffix[0, 8] = (ids[0, 8] + 1) % 128
  got = _ours(GQA, _params(GQA), later_suffix, prefix_BL=prefix)
  np.testing.assert_array_equal(got[0, :8], base[0, :8])
  assert np.abs(got[0, 8:] - base[0, 8:]).max() > 1e-3
  # Packed: each document's prefix is its own.
  segments = np.array([[1] * 6 + [2] * 6], np.int32)
  positions = np.array([list(range(6)) * 2], np.int32)
  two = np.zeros((1, 12), bool)
  two[0, [0, 1, 6, 7, 8]] = True
  packed = _ours(GQA, _params(GQA), ids, segments, positions, two)
  alone = _ours(GQA, _params(GQA), ids[:, 6:], prefix_BL=two[:, 6:])
  np.testing.assert_allclose(packed[0, 6:], alone[0], atol=1e-5)


# --------------------------------------------------------------------------------------
# Decoding with the KV cache.


# The scanned stack's per-layer cache is checked by mpt's decode test (the same layer_stack).
@pytest.mark.parametrize("scan", [False])
def test_decode_matches_the_full_forward_and_compiles_once(scan):
  config = dataclasses.replace(GQA, scan_layers=scan)
  params = _params(GQA)
  if scan:
    params = _stacked(params, GQA.num_layers)
  model = llama.LlamaForCausalLM(config)
  length, prompt = 12, 5
  ids = _ids(2, length, seed=7)
  full = _ours(config, params, ids)
  cache = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((2, length), jnp.int32),
                                     decode=True)["cache"])()
  traces = []

  @jax.jit
  def step(cache, chunk):
    traces.append(chunk.shape)
    logits, variables = model.apply({"params": params, "cache": cache}, chunk, decode=True,
                                    mutable=["cache"])
    return logits, variables["cache"]

  logits, cache = step(cache, ids[:, :prompt])
  outs = [logits]
  for t in range(prompt, length):
    logits, cache = step(cache, ids[:, t:t + 1])
    outs.append(logits)
  np.testing.assert_allclose(np.concatenate(outs, axis=1), full, atol=1e-5)
  assert traces == [(2, prompt), (2, 1)]  # the prefill and one T=1 step, never again
  assert int(jax.tree_util.tree_leaves(cache["model"]["cache_index"])[0]) == length


def test_decode_after_a_prefix_prompt():
  params, model = _params(GQA), llama.LlamaForCausalLM(GQA)
  ids = _ids(1, 10, seed=8)
  prefix = np.zeros((1, 10), bool)
  prefix[0, :4] = True
  full = _ours(GQA, params, ids, prefix_BL=prefix)
  cache = jax.jit(lambda: model.init(jax.random.key(0), ids, decode=True)["cache"])()

  @jax.jit
  def step(cache, chunk, prefix=None):
    logits, variables = model.apply({"params": params, "cache": cache}, chunk, prefix_BL=prefix,
                                    decode=True, mutable=["cache"])
    return logits, variables["cache"]

  logits, cache_after = step(cache, ids[:, :6], prefix[:, :6])  # a bidirectional prompt
  outs = [logits]
  for t in range(6, 10):
    logits, cache_after = step(cache_after, ids[:, t:t + 1])
    outs.append(logits)
  np.testing.assert_allclose(np.concatenate(outs, axis=1), full, atol=1e-5)
  with pytest.raises(ValueError, match="takes no segment_ids"):
    model.apply({"params": params, "cache": cache}, ids, np.ones_like(ids), decode=True,
                mutable=["cache"])


# --------------------------------------------------------------------------------------
# Scan, remat, bf16.


def _stacked(params: dict, num_layers: int) -> dict:
  """Loop params (`layer_{i}`) -> scanned params (`layers`, stacked on a leading axis)."""
  model = dict(params["model"])
  per_layer = [model.pop(f"layer_{i}") for i in range(num_layers)]
  model["layers"] = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *per_layer)
  return {**params, "model": model}


def _loss_and_grads(config, params, ids):
  module = llama.LlamaForCausalLM(config)

  def loss(p):
    logits = module.apply({"params": p}, ids)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

  return jax.jit(jax.value_and_grad(loss))(params)


def test_scan_and_remat_do_not_change_the_result():
  ids = _ids(2, 12, seed=9)
  params = _params(GQA)
  loss, grads = _loss_and_grads(GQA, params, ids)
  stacked = _stacked(params, GQA.num_layers)
  scanned = dataclasses.replace(GQA, scan_layers=True)
  np.testing.assert_allclose(_ours(scanned, stacked, ids), _ours(GQA, params, ids), atol=1e-5)
  # Every remat/scan combination goes through the one models.stack.layer_stack, whose own
  # test (tests/t5x_like/test_stack.py) covers them all; here the Llama block under the
  # scanned, rematerialised stack.
  for config, p in ((dataclasses.replace(scanned, remat="dots"), stacked),):
    got_loss, got_grads = _loss_and_grads(config, p, ids)
    np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
    want = grads if not config.scan_layers else _stacked(grads, GQA.num_layers)
    for x, y in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got_grads)):
      np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-5)


def test_bf16_runs_and_is_close():
  ids = _ids(2, 12, seed=10)
  config = dataclasses.replace(GQA, dtype="bfloat16", param_dtype="bfloat16")
  params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), _params(GQA))
  got = _ours(config, params, ids)
  assert got.dtype == np.float32 and np.isfinite(got).all()
  want = _ours(GQA, _params(GQA), ids)
  assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
  loss, grads = _loss_and_grads(config, params, ids)
  assert np.isfinite(float(loss))
  assert all(np.isfinite(np.asarray(g, np.float32)).all()
             for g in jax.tree_util.tree_leaves(grads))


def test_dropout_applies_only_when_not_deterministic():
  config = dataclasses.replace(GQA, dropout_rate=0.5)
  ids = _ids(2, 12, seed=11)
  eval_logits = _ours(config, _params(GQA), ids)
  np.testing.assert_array_equal(eval_logits, _ours(GQA, _params(GQA), ids))
  train_logits = _ours(config, _params(GQA), ids, deterministic=False,
                       rngs={"dropout": jax.random.key(1)})
  assert np.abs(train_logits - eval_logits).max() > 1e-2


# --------------------------------------------------------------------------------------
# Sharding, FLOPs, config.


def test_every_param_has_known_logical_axes():
  variables = jax.eval_shape(llama.LlamaForCausalLM(GQA).init, jax.random.key(0), _ids())
  known = {name for name, _ in sharding.RULES}
  leaves = jax.tree_util.tree_leaves(variables["params"],
                                     is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for leaf in leaves:
    assert set(leaf.names) <= known, leaf.names


def test_sharded_forward_and_grads_equal_one_device():
  """data=2, fsdp=2, tensor=2 over 8 virtual devices: params split by the rules, logits and
  gradients as on one device."""
  assert jax.device_count() == 8
  mesh = sharding.make_mesh(config_lib.MeshConfig(data=2, fsdp=2, tensor=2))
  model = llama.LlamaForCausalLM(GQA)
  ids = _ids(4, 16, seed=12)
  params = _params(GQA)
  loss_1, grads_1 = _loss_and_grads(GQA, params, ids)
  logits_1 = _ours(GQA, params, ids)
  with step_lib.mesh_context(mesh):
    boxed = jax.eval_shape(model.init, jax.random.key(0), ids)["params"]
    shardings = sharding.logical_to_mesh(nn.get_partition_spec(boxed), mesh)
    placed = jax.device_put(params, shardings)
    batch = jax.device_put(ids, sharding.batch_sharding(mesh))
    logits_8 = jax.jit(lambda p, x: model.apply({"params": p}, x))(placed, batch)
    loss_8, grads_8 = _loss_and_grads(GQA, placed, batch)
  layer = placed["model"]["layer_0"]
  assert layer["self_attn"]["q_proj"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
  assert layer["self_attn"]["k_proj"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
  assert layer["mlp"]["down_proj"]["kernel"].sharding.spec == P("tensor", "fsdp")
  assert placed["lm_head"]["kernel"].sharding.spec == P("fsdp", "tensor")
  np.testing.assert_allclose(np.asarray(logits_8), logits_1, atol=1e-5)
  np.testing.assert_allclose(float(loss_8), float(loss_1), rtol=1e-6)
  for x, y in zip(jax.tree_util.tree_leaves(grads_1), jax.tree_util.tree_leaves(grads_8)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-6)


def test_flops_count_matches_xla():
  """The analytic forward count (GQA projections, full L x L attention, SwiGLU, head at every
  position) within 10% of XLA's on a matmul-heavy shape."""
  config = llama.LlamaConfig(vocab_size=512, hidden_size=256, num_layers=2, num_heads=8,
                             num_kv_heads=2, intermediate_size=688)
  batch, length = 2, 128
  run = types.SimpleNamespace(model=config, train=types.SimpleNamespace(batch_size=batch),
                              data=types.SimpleNamespace(seq_len=length))
  model = llama.LlamaForCausalLM(config)
  ids = jnp.zeros((batch, length), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), ids)["params"]
  cost = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(
      nn.meta.unbox(params), ids).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  assert llama_flops.train_flops_per_step(run) / 3 == pytest.approx(cost["flops"], rel=0.10)


def test_model_section_and_registration():
  family = families.get("llama")
  assert family.build is llama.LlamaForCausalLM and family.features == ("input_ids", "labels")
  section = config_lib.model_section("llama", hidden_size=32, num_heads=4, num_kv_heads=2)
  assert (section.hidden_act, section.dropout_rate, section.layer_norm_eps) == ("silu", 0.0,
                                                                                 1e-6)
  module_config = family.module_config(dataclasses.replace(section, vocab_size=128))
  assert module_config.kv_heads == 2 and module_config.d_head == 8
  run = types.SimpleNamespace(model=section, data=types.SimpleNamespace(seq_len=4096),
                              mesh=config_lib.MeshConfig(tensor=2))
  section.check(run)  # longer than max_position_embeddings is fine: RoPE has no table
  for values, message in (({"num_kv_heads": 3}, "divisible by model.num_kv_heads"),
                          ({"hidden_size": 30}, "divisible by model.num_heads"),
                          ({"hidden_size": 30, "head_dim": 6}, None),
                          ({"head_dim": 5}, "must be even"),
                          ({"rope_theta": 0.0}, "rope_theta"),
                          ({"num_kv_heads": 1}, "divisible by mesh.tensor")):
    bad = config_lib.model_section("llama", num_heads=4, **values)
    if message is None:
      bad.check(run)
      continue
    with pytest.raises(config_lib.ConfigError, match=message):
      bad.check(run)
  with pytest.raises(config_lib.ConfigError, match="hidden_act"):
    config_lib.model_section("llama", hidden_act="swish")
