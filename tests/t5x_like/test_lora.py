"""LoRA (t5x_like.models.lora, export.peft): adapters beside frozen Dense kernels, peft-exact.

Per family: at init the model computes what the base does; with trained (here: random
non-zero) adapters our logits equal transformers' on the merged export and peft's
`PeftModel` on the base export + our adapter folder; a train step moves only the adapters
and the optimiser state exists only for them.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from t5x_like import config as config_lib
from t5x_like import families, sharding
from t5x_like.config import ConfigError
from t5x_like.export import peft as peft_export
from t5x_like.models import lora
from t5x_like.training import optimizer, tasks
from t5x_like.training import step as step_lib

V = 64
B, L, T = 2, 12, 7
SHRINK = ["model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=48",
          "model.num_layers=2", f"model.vocab_size={V}", "model.dropout_rate=0.0",
          "data.seq_len=16", "data.target_len=8"]
EXTRA = {"t5": ["model.num_decoder_layers=2", "model.d_kv=16"],
         "bart": ["model.num_decoder_layers=2", "model.max_position_embeddings=32",
                  "model.attention_dropout_rate=0.0", "model.activation_dropout_rate=0.0"],
         "bert": ["model.max_position_embeddings=32"],
         "xlnet": ["model.head_dim=16", "model.mem_len=0"],
         "llama": ["model.num_key_value_heads=1", "model.head_dim=16"],
         "mpt": ["model.intermediate_size=128"]}
AUTO = {"bert": transformers.AutoModelForMaskedLM, "t5": transformers.AutoModelForSeq2SeqLM,
        "bart": transformers.AutoModelForSeq2SeqLM, "xlnet": transformers.AutoModelForCausalLM,
        "llama": transformers.AutoModelForCausalLM, "mpt": transformers.AutoModelForCausalLM}


def _config(family: str, *overrides: str) -> config_lib.Config:
  extra = [o for o in EXTRA[family] if o.split("=")[0].split(".")[1] in
           {f.name for f in dataclasses.fields(config_lib.model_section(family))}]
  return config_lib.load_config(f"{family}_tiny", [*SHRINK, *extra, *overrides])


@functools.cache
def _init(cfg: config_lib.Config) -> dict:
  task = tasks.make_task(cfg)
  return jax.device_get(nn.meta.unbox(jax.jit(task.init)(jax.random.key(0))["params"]))


def _feed(family: str) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(1)
  ids = rng.integers(5, V, (B, L)).astype(np.int32)
  feed = {"input_ids": ids}
  if family in ("bert", "t5", "bart"):
    mask = np.ones((B, L), np.int32)
    mask[1, 9:] = 0
    feed["attention_mask"] = mask
  if family in ("t5", "bart"):
    feed["decoder_input_ids"] = rng.integers(5, V, (B, T)).astype(np.int32)
  return feed


def _ours(cfg: config_lib.Config, params: dict, spec: lora.LoraSpec | None) -> np.ndarray:
  family = families.get(cfg.model.family)
  module = family.build(family.module_config(cfg.model))

  def logits(p, feed):
    with lora.active(spec):
      return family.logits(module, p, feed)
  return np.asarray(jax.jit(logits)(params, _feed(cfg.model.family)))


def _theirs(family: str, model: torch.nn.Module) -> np.ndarray:
  feed = {k: torch.from_numpy(v).long() for k, v in _feed(family).items()}
  kw = {"use_cache": False} if family in ("xlnet", "llama", "mpt") else {}
  with torch.no_grad():
    return model.eval()(**feed, **kw).logits.numpy()


def _with_random_adapters(params: dict, seed: int) -> dict:
  """Adapters as training leaves them: B no longer zero."""
  rng = np.random.default_rng(seed)
  sub = lora.trainable(params, dataclasses.replace(_spec_stub(), train_embeddings=False))
  noisy = jax.tree_util.tree_map(lambda x: (0.05 * rng.standard_normal(x.shape)).astype(x.dtype),
                                 sub)
  return lora.overlay(params, noisy)


def _spec_stub() -> lora.LoraSpec:
  return lora.LoraSpec(rank=1, alpha=1.0, dropout=0.0, targets=())


@pytest.mark.parametrize("family", ["bert", "t5", "bart", "xlnet", "llama", "mpt"])
def test_at_init_logits_equal_the_base_models(family):
  cfg = _config(family, "lora.rank=4")
  params = _init(cfg)
  spec = lora.spec_of(cfg)
  assert lora.has_adapters(params)
  # B starts at zero, so W + s A B = W and every output is the base model's, bit for bit.
  for leaf in jax.tree_util.tree_leaves(lora.trainable(params, spec)):
    assert leaf.shape[0] == 4 or leaf.shape[-1] == 4 or 4 in leaf.shape
  base = lora.without_adapters(params)
  np.testing.assert_array_equal(_ours(cfg, params, spec), _ours(cfg, base, None))


# XLNet's default targets are its feed-forward Linears (its attention projections are raw
# parameters in transformers, which peft cannot adapt: see the error test below).
@pytest.mark.parametrize("family,extra", [
    ("bert", ()), ("t5", ()), ("bart", ()), ("llama", ()), ("mpt", ()), ("xlnet", ()),
    ("llama", ("lora.use_rslora=true", "lora.alpha=16",
               "lora.targets=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]")),
    ("t5", ("model.scan_layers=true", "lora.targets=[q,v,wo]")),
])
def test_ours_equals_peft_model_and_the_merged_export(tmp_path, family, extra):
  import peft

  cfg = _config(family, "lora.rank=4", "lora.alpha=12", *extra)
  spec = lora.spec_of(cfg)
  params = _with_random_adapters(_init(cfg), seed=3)
  fam = families.get(family)
  module_config = fam.module_config(cfg.model)
  ours = _ours(cfg, params, spec)

  merged_dir = str(tmp_path / "merged")
  fam.export(lora.merge(params, spec.scale), module_config, merged_dir, None, 0)
  merged = _theirs(family, AUTO[family].from_pretrained(merged_dir))
  base_dir = str(tmp_path / "base")
  fam.export(lora.without_adapters(params), module_config, base_dir, None, 0)
  adapter_dir = str(tmp_path / "adapter")
  peft_export.write_adapter(params, spec, fam, module_config, adapter_dir, base_dir)
  peft_model = peft.PeftModel.from_pretrained(AUTO[family].from_pretrained(base_dir),
                                              adapter_dir)
  theirs = _theirs(family, peft_model)
  base_only = _theirs(family, AUTO[family].from_pretrained(base_dir))
  np.testing.assert_allclose(ours, merged, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
  # the adapters matter: the base alone is far off
  assert np.abs(ours - base_only).max() > 1e-3


def test_peft_folder_reads_back_into_the_same_adapters(tmp_path):
  cfg = _config("bert", "lora.rank=4", "lora.targets=[attention/query,attention/value,"
                "intermediate]")
  spec = lora.spec_of(cfg)
  params = _with_random_adapters(_init(cfg), seed=5)
  fam = families.get("bert")
  module_config = fam.module_config(cfg.model)
  folder = str(tmp_path / "adapter")
  peft_export.write_adapter(params, spec, fam, module_config, folder, "base")
  adapter_config, tensors = peft_export.read_adapter(folder)
  assert adapter_config["target_modules"] == ["intermediate.dense", "query", "value"] or \
      sorted(adapter_config["target_modules"]) == adapter_config["target_modules"]
  back = peft_export.adapter_params(tensors, _init(cfg), spec, fam, module_config)
  want = lora.trainable(params, spec)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(want)
  for x, y in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("family,setting,whole", [
    ("bert", "lora.train_embeddings=true", "embeddings"),
    ("bert", "lora.modules_to_save=[mlm_head]", "mlm_head"),
    ("bart", "lora.train_embeddings=true", "shared"),
])
def test_params_trained_whole_export_as_modules_to_save_and_match_peft(tmp_path, family,
                                                                         setting, whole):
  import peft

  cfg = _config(family, "lora.rank=2", setting)
  spec = lora.spec_of(cfg)
  params = _init(cfg)
  trained = lora.trainable(params, spec)
  assert whole in trained
  if whole == "embeddings":  # the token table only, not the position / type tables
    assert sorted(trained["embeddings"]) == ["word_embeddings"]
  rng = np.random.default_rng(0)
  noisy = jax.tree_util.tree_map(lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(
      x.dtype), trained)
  params = lora.overlay(params, noisy)
  params = _with_random_adapters(params, seed=1)
  fam = families.get(family)
  module_config = fam.module_config(cfg.model)
  base_dir, adapter_dir = str(tmp_path / "base"), str(tmp_path / "adapter")
  fam.export(lora.without_adapters(_init(cfg)), module_config, base_dir, None, 0)
  peft_export.write_adapter(params, spec, fam, module_config, adapter_dir, base_dir)
  model = peft.PeftModel.from_pretrained(AUTO[family].from_pretrained(base_dir), adapter_dir)
  np.testing.assert_allclose(_ours(cfg, params, spec), _theirs(family, model), atol=1e-4,
                             rtol=1e-4)
  # and the folder reads back into the same trained params
  _, tensors = peft_export.read_adapter(adapter_dir)
  back = peft_export.adapter_params(tensors, _init(cfg), spec, fam, module_config)
  want = lora.trainable(params, spec)
  for (p, x), (q, y) in zip(lora._flat(back), lora._flat(want)):
    assert p == q
    np.testing.assert_array_equal(x, y)


def test_a_train_step_moves_only_the_adapters_and_the_optimizer_holds_only_them():
  cfg = _config("bert", "lora.rank=4", "optim.learning_rate=0.01", "optim.warmup_steps=0",
                "data.seq_len=12")
  task = tasks.make_task(cfg)
  spec = task.lora
  tx = optimizer.make_optimizer(cfg.optim, cfg.train.steps)
  mesh = sharding.make_mesh(config_lib.MeshConfig(data=1), jax.devices()[:1])
  _, abstract, shardings = step_lib.state_shardings(task, tx, mesh, 2)
  with step_lib.mesh_context(mesh):
    state = step_lib.init_state(task, tx, mesh, 0, shardings, 2)
    before = jax.device_get(state.params)
    step = jax.jit(step_lib.make_train_step(task, tx, optimizer.make_schedule(cfg.optim, 10), 0,
                                            1))
    batch = task.dummy_batch(2)
    rng = np.random.default_rng(0)
    batch["input_ids"] = rng.integers(5, V, batch["input_ids"].shape).astype(np.int32)
    batch["labels"][:, 2:6] = rng.integers(5, V, (2, 4))
    batch["dropped_by_objective"] = np.zeros((2,), np.int32)
    state, metrics = step(state, batch)
    state, metrics = step(state, batch)
  after = jax.device_get(state.params)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  flat_before, flat_after = dict(lora._flat(before)), dict(lora._flat(after))
  moved = sorted(p for p in flat_before if not np.array_equal(flat_before[p], flat_after[p]))
  assert moved and all(p.rsplit("/", 1)[-1] in lora.ADAPTER_NAMES for p in moved), moved
  assert any(p.endswith("lora_b") for p in moved)
  # Adam's two moments exist for the adapters only (plus scalar counts).
  n_train = sum(x.size for x in jax.tree_util.tree_leaves(lora.trainable(after, spec)))
  n_all = sum(x.size for x in jax.tree_util.tree_leaves(after))
  n_opt = sum(x.size for x in jax.tree_util.tree_leaves(abstract.opt_state) if x.ndim)
  assert n_opt == 2 * n_train and n_train < n_all / 10


def test_gaussian_init_and_rslora_scale():
  cfg = _config("llama", "lora.rank=8", "lora.init=gaussian", "lora.use_rslora=true",
                "lora.alpha=16")
  spec = lora.spec_of(cfg)
  assert spec.scale == pytest.approx(16 / math.sqrt(8))
  a = np.concatenate([x.ravel() for p, x in lora._flat(_init(cfg)) if p.endswith("lora_a")])
  # peft's "gaussian": N(0, 1/r^2); the sample std is within 5 standard errors of 1/8.
  se = (1 / 8) / math.sqrt(2 * a.size)
  assert abs(a.std() - 1 / 8) < 5 * se
  cfg = _config("llama", "lora.rank=8")
  a = np.concatenate([x.ravel() for p, x in lora._flat(_init(cfg)) if p.endswith("lora_a")])
  bound = 1 / math.sqrt(32)  # kaiming-uniform over fan_in = hidden 32
  assert a.max() <= bound and a.min() >= -bound and a.max() > 0.9 * bound


def test_targets_matching_nothing_name_the_available_layers():
  cfg = _config("bert", "lora.rank=4", "lora.targets=[q_proj]")
  with pytest.raises(ConfigError, match=r"'q_proj' matches no layer.*attention/query"):
    _init(cfg)


def test_an_xlnet_attention_target_is_refused_for_peft_but_merges(tmp_path):
  cfg = _config("xlnet", "lora.rank=2", "lora.targets=[rel_attn/q]")
  spec = lora.spec_of(cfg)
  params = _with_random_adapters(_init(cfg), seed=0)
  fam = families.get("xlnet")
  with pytest.raises(peft_export.AdapterError, match="not a torch Linear"):
    peft_export.write_adapter(params, spec, fam, fam.module_config(cfg.model),
                              str(tmp_path / "a"), "base")
  assert not (tmp_path / "a").exists()
  merged = lora.merge(params, spec.scale)
  np.testing.assert_allclose(_ours(cfg, merged, None), _ours(cfg, params, spec), atol=1e-5)


def test_adapters_outside_the_lora_context_refuse_to_run():
  cfg = _config("bert", "lora.rank=2")
  with pytest.raises(Exception, match="holds LoRA adapters but runs outside"):
    _ours(cfg, _init(cfg), None)


@pytest.mark.parametrize("override,message", [
    ("lora.rank=-2", "lora.rank must be >= 1"),
    ("lora.alpha=4", "lora.alpha set but lora.rank is 0"),
    ("lora.dropout=1.5", "lora.dropout must be in"),
])
def test_bad_lora_settings(override, message):
  extra = [] if override.startswith("lora.rank") or "alpha" in override else ["lora.rank=2"]
  with pytest.raises(ConfigError, match=message):
    config_lib.load_config("bert_tiny", [override, *extra])


def test_lora_flops_count_matches_xla():
  """With LoRA a step needs ~2x forward (no weight gradient for frozen layers): the analytic
  count (`flops.train_flops_per_step`) within 12% of XLA's count of the gradient computation,
  which for full training is ~3x forward (checked alongside)."""
  from t5x_like import flops

  shape = ["model.hidden_size=256", "model.num_heads=8", "model.num_kv_heads=2",
           "model.intermediate_size=688", "model.vocab_size=512", "data.seq_len=128",
           "train.batch_size=2"]
  counts = {}
  for rank in (0, 8):
    cfg = config_lib.load_config("llama_tiny", [*shape, f"lora.rank={rank}"])
    task = tasks.make_task(cfg)
    params = nn.meta.unbox(jax.eval_shape(task.init, jax.random.key(0))["params"])
    batch = {"input_ids": jnp.zeros((2, 128), jnp.int32), "labels": jnp.ones((2, 128), jnp.int32)}
    train = step_lib.trainable_params(task, params)

    def loss(t, p, task=task, rank=rank, batch=batch):
      full = lora.overlay(p, t) if rank else t
      return task.loss(full, batch, None, deterministic=True)[0]

    cost = jax.jit(jax.grad(loss)).lower(train, params).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    counts[rank] = (flops.train_flops_per_step(cfg), cost["flops"])
  for analytic, xla in counts.values():
    assert analytic == pytest.approx(xla, rel=0.12), counts
  assert counts[8][1] < 0.75 * counts[0][1], counts


def test_a_family_without_a_transformers_tensor_map_refuses_a_peft_adapter(tmp_path):
  fam = families.get("electra")
  assert fam.hf is None
  cfg = config_lib.load_config("electra_tiny", ["lora.rank=2", f"model.vocab_size={V}"])
  spec = lora.spec_of(cfg)
  with pytest.raises(peft_export.AdapterError, match="electra family declares no transformers"):
    peft_export.write_adapter({}, spec, fam, fam.module_config(cfg.model), str(tmp_path / "a"),
                              "base")
  assert not (tmp_path / "a").exists()
