"""XLNet: logits/gradient parity with transformers, no leak of a target's own token through the
two streams, logical axes, dropout, bf16, scan/remat."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from t5x_like import sharding
from t5x_like.families.xlnet import export as xlnet_export
from t5x_like.families.xlnet import model as xlnet

# initializer_range 0.2: logits of std ~1, so the 1e-4 tolerances prove something.
CFG = xlnet.XLNetConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                        intermediate_size=48, dropout_rate=0.1, initializer_range=0.2)
B, L, P = 2, 18, 3  # P = L / 6 targets


def _perm_inputs(seed: int = 0, num_targets: tuple[int, ...] = (3, 2)):
  """ids [B, L], token_type_ids [B, L], perm_mask [B, L, L], target_mapping [B, P, L], and
  the rank of each token in the factorization order [B, L] (-1 = not a target).

  Row b has num_targets[b] targets (the rest of its P target_mapping rows are zero
  padding). perm_mask[b, i, j] = 1 iff j is a target not earlier than i in the order
  (non-targets count as earlier than every target).
  """
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, CFG.vocab_size, (B, L)).astype(np.int32)
  tt = np.zeros((B, L), np.int32)
  tt[:, 7:] = 1
  tt[:, -1] = 2
  perm = np.zeros((B, L, L), np.float32)
  tm = np.zeros((B, P, L), np.float32)
  rank = np.full((B, L), -1)
  for b, n in enumerate(num_targets):
    targets = rng.choice(L, n, replace=False)
    rank[b, rng.permutation(targets)] = np.arange(n)
    tm[b, np.arange(n), targets] = 1
    is_target = rank[b] >= 0
    # i cannot see target j unless i is a target strictly after j
    later = (rank[b][:, None] < 0) | (rank[b][None, :] >= rank[b][:, None])
    perm[b] = (is_target[None, :] & later).astype(np.float32)
  return ids, tt, perm, tm, rank


@functools.cache
def _apply(config: xlnet.XLNetConfig):
  return jax.jit(xlnet.XLNetLMHeadModel(config).apply, static_argnames=("deterministic",))


def _run(config, params, *args, **kwargs) -> np.ndarray:
  return np.asarray(_apply(config)({"params": params}, *args, **kwargs))


@functools.cache
def _init(config: xlnet.XLNetConfig = CFG) -> dict:
  ids, tt, perm, tm, _ = _perm_inputs()
  return nn.meta.unbox(jax.jit(xlnet.XLNetLMHeadModel(config).init)(
      jax.random.key(0), ids, tt, perm, tm))["params"]


@functools.cache
def _params() -> dict:
  """Init params with LayerNorms and biases perturbed (at init they are ones or zeros)."""
  rng = np.random.default_rng(0)

  def perturb(path, x):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      return (1.0 + 0.3 * rng.normal(size=x.shape)).astype(x.dtype)
    if name.endswith("['bias']") or "lm_loss_bias" in name:
      return (0.1 * rng.normal(size=x.shape)).astype(x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(perturb, _init())


@functools.cache
def _hf_model() -> transformers.XLNetLMHeadModel:
  hf = transformers.XLNetLMHeadModel(
      transformers.XLNetConfig(**xlnet.hf_config_dict(CFG))).eval()
  state = xlnet_export.xlnet_to_hf_state_dict(_params(), CFG)
  state["lm_loss.weight"] = state["transformer.word_embedding.weight"]  # tied, not saved
  hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                     strict=True)
  return hf


def _hf_kwargs(tt, perm, tm, mask=None) -> dict:
  kwargs = {"token_type_ids": torch.from_numpy(tt).long(), "perm_mask": torch.from_numpy(perm)}
  if tm is not None:
    kwargs["target_mapping"] = torch.from_numpy(tm)
  if mask is not None:
    kwargs["attention_mask"] = torch.from_numpy(mask).float()
  return kwargs


def _hf_logits(ids, tt, perm, tm, mask=None) -> np.ndarray:
  with torch.no_grad():
    return _hf_model()(torch.from_numpy(ids).long(), **_hf_kwargs(tt, perm, tm, mask)
                       ).logits.numpy()


@pytest.mark.parametrize("stream", ["query", "content"])
def test_logits_match_transformers(stream):
  ids, tt, perm, tm, _ = _perm_inputs()
  tm = tm if stream == "query" else None
  ours = _run(CFG, _params(), ids, tt, perm, tm)
  want_len = P if stream == "query" else L
  assert ours.shape == (B, want_len, CFG.vocab_size) and ours.dtype == np.float32
  assert np.std(ours) > 0.5
  np.testing.assert_allclose(ours, _hf_logits(ids, tt, perm, tm), atol=1e-4, rtol=1e-4)


def test_attention_mask_and_clamp_len_match_transformers():
  ids, tt, perm, tm, _ = _perm_inputs()
  mask = np.ones((B, L), np.int32)
  mask[1, 12:] = 0
  ours = _run(CFG, _params(), ids, tt, perm, tm, mask)
  np.testing.assert_allclose(ours, _hf_logits(ids, tt, perm, tm, mask), atol=1e-4, rtol=1e-4)
  assert not np.allclose(ours[1], _run(CFG, _params(), ids, tt, perm, tm)[1], atol=1e-3)
  clamped = dataclasses.replace(CFG, clamp_len=3)
  hf = transformers.XLNetLMHeadModel(
      transformers.XLNetConfig(**xlnet.hf_config_dict(clamped))).eval()
  hf.load_state_dict(_hf_model().state_dict())
  with torch.no_grad():
    want = hf(torch.from_numpy(ids).long(), **_hf_kwargs(tt, perm, None)).logits.numpy()
  np.testing.assert_allclose(_run(clamped, _params(), ids, tt, perm, None), want, atol=1e-4,
                             rtol=1e-4)


def _weights(shape, seed: int = 5) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@functools.cache
def _loss_and_grad(config: xlnet.XLNetConfig):
  model = xlnet.XLNetLMHeadModel(config)
  return jax.jit(jax.value_and_grad(
      lambda p, ids, tt, perm, tm, w: jnp.sum(model.apply({"params": p}, ids, tt, perm, tm) * w)))


def test_gradients_match_transformers():
  ids, tt, perm, tm, _ = _perm_inputs()
  w = _weights((B, P, CFG.vocab_size))
  _, grads = _loss_and_grad(CFG)(_params(), ids, tt, perm, tm, w)
  ours = xlnet_export.xlnet_to_hf_state_dict(grads, CFG)
  hf = _hf_model()
  hf.zero_grad()
  logits = hf(torch.from_numpy(ids).long(), **_hf_kwargs(tt, perm, tm)).logits
  (logits * torch.from_numpy(w)).sum().backward()
  theirs = {name: p.grad.numpy() for name, p in hf.named_parameters()}
  hf.zero_grad()
  assert set(theirs) == set(ours)  # lm_loss.weight is tied to the word embedding
  scale = max(np.max(np.abs(g)) for g in theirs.values())
  for name, want in theirs.items():
    # r_w_bias shifts every content score of a query row alike: its gradient is rounding.
    atol = 1e-5 * scale if name.endswith("r_w_bias") else 2e-5 * np.max(np.abs(want))
    np.testing.assert_allclose(ours[name], want, rtol=2e-4, atol=atol, err_msg=name)


def test_no_target_sees_its_own_token_or_later_targets():
  ids, tt, perm, tm, rank = _perm_inputs(seed=3, num_targets=(3, 3))
  params = _params()
  model = xlnet.XLNetLMHeadModel(CFG)
  embeds = jnp.take(params["word_embedding"]["embedding"], ids, axis=0)
  w = _weights((B, P, CFG.vocab_size))

  def per_target_loss(x_BLD):  # [B, P]: a scalar per prediction
    logits = model.apply({"params": params}, None, tt, perm, tm, inputs_embeds=x_BLD)
    return jnp.sum(jax.nn.log_softmax(logits) * w, axis=-1)

  jac = jax.jit(jax.jacrev(per_target_loss))(embeds)  # [B, P, B, L, D]
  sensitivity = np.abs(np.asarray(jac)).sum(-1)  # [B, P, B, L]
  for b in range(B):
    for p in range(P):
      pos = int(np.argmax(tm[b, p]))
      r = rank[b, pos]
      for other in range(B):
        if other != b:
          assert not np.any(sensitivity[b, p, other]), (b, p)
      s = sensitivity[b, p, b]
      seen = rank[b] < 0
      later = rank[b] >= r
      assert np.all(s[later] == 0), (b, p, r, s[later])  # itself and every later target
      assert np.all(s[seen] > 0), (b, p)
      earlier = (rank[b] >= 0) & (rank[b] < r)
      if r > 0:
        assert np.any(s[earlier] > 0), (b, p)
  assert sensitivity.max() > 1e-3


def test_inputs_embeds_equals_input_ids():
  ids, tt, perm, tm, _ = _perm_inputs()
  embeds = np.asarray(_params()["word_embedding"]["embedding"])[ids]
  np.testing.assert_allclose(
      _run(CFG, _params(), None, tt, perm, tm, inputs_embeds=embeds),
      _run(CFG, _params(), ids, tt, perm, tm), atol=1e-6)


def _stack(tree: dict) -> dict:
  layers_ = [tree[f"layer_{i}"] for i in range(CFG.num_layers)]
  out = {k: v for k, v in tree.items() if not k.startswith("layer_")}
  out["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers_)
  return out


@pytest.mark.parametrize("scan,remat", [(True, "full"), (False, "dots")])
def test_scan_and_remat_match_the_python_loop(scan, remat):
  ids, tt, perm, tm, _ = _perm_inputs()
  config = dataclasses.replace(CFG, scan_layers=scan, remat=remat)
  restack = _stack if scan else (lambda tree: tree)
  params = restack(_params())
  shapes = jax.eval_shape(xlnet.XLNetLMHeadModel(config).init, jax.random.key(0), ids, tt,
                          perm, tm)
  assert (jax.tree_util.tree_map(jnp.shape, nn.meta.unbox(shapes)["params"]) ==
          jax.tree_util.tree_map(jnp.shape, params))
  w = _weights((B, P, CFG.vocab_size))
  value_loop, grad_loop = _loss_and_grad(CFG)(_params(), ids, tt, perm, tm, w)
  value, grad = _loss_and_grad(config)(params, ids, tt, perm, tm, w)
  np.testing.assert_allclose(value, value_loop, rtol=1e-5)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * np.abs(b).max()),
      grad, restack(grad_loop))
  if scan:  # the exporter unstacks scanned layers
    exported = xlnet_export.xlnet_to_hf_state_dict(params, config)
    for name, want in xlnet_export.xlnet_to_hf_state_dict(_params(), CFG).items():
      np.testing.assert_array_equal(exported[name], want, err_msg=name)


def test_dropout_is_active_only_when_not_deterministic():
  ids, tt, perm, tm, _ = _perm_inputs()

  def run(seed):
    return _run(CFG, _params(), ids, tt, perm, tm, deterministic=False,
                rngs={"dropout": jax.random.key(seed)})

  det = _run(CFG, _params(), ids, tt, perm, tm)
  a, b = run(1), run(2)
  assert not np.allclose(a, det) and not np.allclose(a, b)
  np.testing.assert_array_equal(a, run(1))
  no_dropout = dataclasses.replace(CFG, dropout_rate=0.0)
  np.testing.assert_allclose(
      _run(no_dropout, _params(), ids, tt, perm, tm, deterministic=False,
           rngs={"dropout": jax.random.key(1)}), det, atol=1e-6)


def test_bfloat16_compute_is_close_to_float32():
  ids, tt, perm, tm, _ = _perm_inputs()
  out32 = _run(CFG, _params(), ids, tt, perm, tm)
  out16 = _run(dataclasses.replace(CFG, dtype="bfloat16"), _params(), ids, tt, perm, tm)
  assert out16.dtype == np.float32
  assert np.max(np.abs(out16 - out32)) < 0.05 * np.max(np.abs(out32))
  assert not np.array_equal(out16, out32)
  shapes = jax.eval_shape(xlnet.XLNetLMHeadModel(
      dataclasses.replace(CFG, param_dtype="bfloat16")).init, jax.random.key(0), ids, tt,
      perm, tm)
  assert {x.dtype for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes))} == {
      jnp.dtype(jnp.bfloat16)}


_AXES = {
    ("word_embedding", "embedding"): ("vocab", "embed"),
    ("q", "kernel"): ("embed", "heads", "kv"), ("k", "kernel"): ("embed", "heads", "kv"),
    ("v", "kernel"): ("embed", "heads", "kv"), ("r", "kernel"): ("embed", "heads", "kv"),
    ("o", "kernel"): ("heads", "kv", "embed"),
    ("rel_attn", "r_w_bias"): ("heads", "kv"), ("rel_attn", "r_r_bias"): ("heads", "kv"),
    ("rel_attn", "r_s_bias"): ("heads", "kv"),
    ("rel_attn", "seg_embed"): ("type", "heads", "kv"),
    ("layer_1", "kernel"): ("embed", "mlp"), ("layer_1", "bias"): ("mlp",),
    ("layer_2", "kernel"): ("mlp", "embed"), ("layer_2", "bias"): ("embed",),
}


@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_has_logical_axes(scan):
  ids, tt, perm, tm, _ = _perm_inputs()
  config = dataclasses.replace(CFG, scan_layers=scan, num_layers=3)
  boxed = jax.eval_shape(xlnet.XLNetLMHeadModel(config).init, jax.random.key(0), ids, tt,
                         perm, tm)["params"]
  known = {name for name, _ in sharding.RULES}
  leaves = jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  # word_embedding, mask_emb, lm_loss_bias; 17 tensors per layer
  assert len(leaves) == 3 + (17 if scan else 3 * 17)
  for path, leaf in leaves:
    names = [getattr(k, "key", None) for k in path]
    assert isinstance(leaf, nn.Partitioned), names
    assert len(leaf.names) == leaf.value.ndim, names
    if names[-1] == "lm_loss_bias":
      want = ("vocab",)
    elif names[-1] == "mask_emb" or names[-2] == "layer_norm":
      want = ("embed",)
    else:
      want = _AXES[tuple(names[-2:])]
    if "layers" in names:
      want = ("layers",) + want
    assert tuple(leaf.names) == want, names
    assert set(leaf.names) <= known, names


def test_init_follows_transformers():
  params = _init()
  attn = params["layer_1"]["rel_attn"]
  cases = {"word_embedding": params["word_embedding"]["embedding"],
           "mask_emb": params["mask_emb"], "q": attn["q"]["kernel"], "o": attn["o"]["kernel"],
           "r_w_bias": attn["r_w_bias"], "seg_embed": attn["seg_embed"],
           "layer_1": params["layer_0"]["ff"]["layer_1"]["kernel"]}
  std = CFG.initializer_range
  for name, x in cases.items():
    x = np.asarray(x)
    assert abs(x.std() / std - 1) < 5 / np.sqrt(2 * x.size), (name, x.std())
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = jax.tree_util.keystr(path)
    if name.endswith("['bias']") or "lm_loss_bias" in name:
      assert not np.any(np.asarray(x)), name
    elif name.endswith("['scale']"):
      assert np.all(np.asarray(x) == 1), name


def test_unsupported_options_are_refused():
  with pytest.raises(ValueError, match="attn_type"):
    dataclasses.replace(CFG, attn_type="uni")
  with pytest.raises(ValueError, match="mem_len"):
    dataclasses.replace(CFG, mem_len=-1)
  with pytest.raises(ValueError, match="divisible"):
    dataclasses.replace(CFG, num_heads=5)
  ids, tt, perm, tm, _ = _perm_inputs()
  with pytest.raises(ValueError, match="mems must be"):
    xlnet.XLNetLMHeadModel(CFG).apply({"params": _params()}, ids, tt, perm, tm,
                                      mems=np.zeros((CFG.num_layers, B + 1, 4, 32)))
  with pytest.raises(ValueError, match="even batch"):
    xlnet.XLNetLMHeadModel(dataclasses.replace(CFG, bi_data=True)).apply(
        {"params": _params()}, ids[:1], tt[:1], perm[:1], tm[:1])


def _hf_with(config: xlnet.XLNetConfig) -> transformers.XLNetLMHeadModel:
  hf = transformers.XLNetLMHeadModel(
      transformers.XLNetConfig(**xlnet.hf_config_dict(config))).eval()
  hf.load_state_dict(_hf_model().state_dict())
  return hf


@pytest.mark.parametrize("mem_len,reuse_len", [(5, 0), (24, 7)])
def test_memory_recurrence_matches_transformers(mem_len, reuse_len):
  """Two segments in a row: segment 2 attends to segment 1's cached states; logits and the
  new memory equal HF's `mems` / `use_mems` path (memory rows = HF's, batch-major)."""
  config = dataclasses.replace(CFG, mem_len=mem_len, reuse_len=reuse_len)
  hf = _hf_with(config)
  ids1, tt1, perm1, _, _ = _perm_inputs(seed=1)
  ids2, tt2, perm2, tm2, _ = _perm_inputs(seed=2)
  apply = jax.jit(xlnet.XLNetLMHeadModel(config).apply, static_argnames=("return_mems",))
  _, mems1 = apply({"params": _params()}, ids1, tt1, perm1, None, return_mems=True)
  logits2, mems2 = apply({"params": _params()}, ids2, tt2, perm2, tm2, mems=mems1,
                         return_mems=True)
  cached = reuse_len or L
  assert mems1.shape == (CFG.num_layers, B, min(mem_len, cached), CFG.hidden_size)
  assert mems2.shape == (CFG.num_layers, B, min(mem_len, 2 * cached), CFG.hidden_size)
  with torch.no_grad():
    out1 = hf(torch.from_numpy(ids1).long(), use_mems=True, **_hf_kwargs(tt1, perm1, None))
    out2 = hf(torch.from_numpy(ids2).long(), mems=out1.mems, use_mems=True,
              **_hf_kwargs(tt2, perm2, tm2))
  hf_mems = lambda out: np.stack([m.numpy().transpose(1, 0, 2) for m in out.mems])
  np.testing.assert_allclose(np.asarray(mems1), hf_mems(out1), atol=1e-5)
  np.testing.assert_allclose(np.asarray(mems2), hf_mems(out2), atol=1e-5)
  np.testing.assert_allclose(np.asarray(logits2), out2.logits.numpy(), atol=1e-4, rtol=1e-4)
  # The memory matters, and scan gives the same numbers.
  assert not np.allclose(np.asarray(logits2), _run(CFG, _params(), ids2, tt2, perm2, tm2),
                         atol=1e-3)
  scanned = dataclasses.replace(config, scan_layers=True)
  stacked = dict(_params())
  layer_trees = [stacked.pop(f"layer_{i}") for i in range(CFG.num_layers)]
  stacked["layers"] = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *layer_trees)
  logits_s, mems_s = jax.jit(xlnet.XLNetLMHeadModel(scanned).apply,
                             static_argnames=("return_mems",))(
      {"params": stacked}, ids2, tt2, perm2, tm2, mems=mems1, return_mems=True)
  np.testing.assert_allclose(np.asarray(logits_s), np.asarray(logits2), atol=1e-5)
  np.testing.assert_allclose(np.asarray(mems_s), np.asarray(mems2), atol=1e-6)


def test_memory_carries_no_gradient_into_the_previous_segment():
  """d loss(segment 2) / d embeddings(segment 1) is exactly zero through the memory
  (stop_gradient), while the loss does depend on the memory's values."""
  config = dataclasses.replace(CFG, mem_len=L)
  model = xlnet.XLNetLMHeadModel(config)
  ids1, tt1, perm1, _, _ = _perm_inputs(seed=1)
  ids2, tt2, perm2, tm2, _ = _perm_inputs(seed=2)
  emb = _params()["word_embedding"]["embedding"]

  def loss(x1, mems_scale):
    _, mems = model.apply({"params": _params()}, None, tt1, perm1, None, inputs_embeds=x1,
                          return_mems=True)
    logits = model.apply({"params": _params()}, ids2, tt2, perm2, tm2,
                         mems=mems * mems_scale)
    return jnp.sum(logits ** 2)

  g_x, g_scale = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(emb)[ids1], 1.0)
  assert not np.any(np.asarray(g_x))
  assert abs(float(g_scale)) > 1e-3


def test_bi_data_matches_transformers():
  """bi_data: the second half of the batch uses negated relative distances, as HF."""
  config = dataclasses.replace(CFG, bi_data=True)
  hf = _hf_with(config)
  ids, tt, perm, tm, _ = _perm_inputs()
  ours = _run(config, _params(), ids, tt, perm, tm)
  with torch.no_grad():
    want = hf(torch.from_numpy(ids).long(), **_hf_kwargs(tt, perm, tm)).logits.numpy()
  np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)
  plain = _run(CFG, _params(), ids, tt, perm, tm)
  np.testing.assert_allclose(ours[0], plain[0], atol=1e-5)  # forward half unchanged
  assert not np.allclose(ours[1], plain[1], atol=1e-3)
