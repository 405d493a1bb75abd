"""BART denoising through the train step: 8-device sharding equals 1 device, gradient
accumulation equals one batch, rows from the data glue, the FLOP model, and preset sizes."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import PartitionSpec as P

from data_pipelines.objectives import denoising
from data_pipelines.vocab import VocabInfo
from pretrain import data as data_glue
from t5x_like import config as config_lib
from t5x_like import flops
from t5x_like.objectives import denoising as denoising_objective
from t5x_like.training import tasks
from tests.t5x_like.test_sharding import _train, assert_params_close, weight_specs

TINY_BART = {
    "model": {"family": "bart", "vocab_size": 128, "hidden_size": 32, "num_layers": 2,
              "num_decoder_layers": 2, "num_heads": 4, "intermediate_size": 48,
              "max_position_embeddings": 32, "layer_norm_eps": 1e-5, "dropout_rate": 0.0,
              "attention_dropout_rate": 0.0},
    "objective": {"name": "denoising"},
    "data": {"seq_len": 32},
    "optim": {"learning_rate": 1e-3, "warmup_steps": 2, "b2": 0.98},
    "train": {"batch_size": 8, "steps": 10, "seed": 0},
    "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
}


def bart_config(**sections: dict) -> config_lib.Config:
  tree = {k: dict(v) for k, v in TINY_BART.items()}
  for name, values in sections.items():
    tree.setdefault(name, {}).update(values)
  return data_glue.resolve_lengths(config_lib.from_dict(tree))


def bart_batches(config: config_lib.Config, n: int, seed: int = 0
                 ) -> list[dict[str, np.ndarray]]:
  """n global batches: random blocks through the real objective and the run's row builder."""
  vocab = VocabInfo.synthetic(config.model.vocab_size, sentence_end_every=8)
  params = denoising_objective.params(config)
  pack_row = data_glue.make_pack_row(config)
  raw = data_glue.block_length(config)
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(n):
    rows = [pack_row([denoising.make_example(rng.choice(vocab.normal_ids, raw).astype(np.int32),
                                             rng, params, vocab)])
            for _ in range(config.train.batch_size)]
    batches.append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  return batches


def test_rows_are_one_segment_with_the_clean_block_as_target():
  config = bart_config()
  assert config.data.target_len == 32 and data_glue.block_length(config) == 30
  batch = bart_batches(config, 1)[0]
  task = tasks.make_task(config)
  assert set(batch) == set(task.features)
  labels, dec = batch["labels"], batch["decoder_input_ids"]
  # targets: <s> block </s>, full rows; decoder inputs start with </s> (fairseq / HF BART)
  assert np.all(labels[:, 0] == 3) and np.all(labels[:, -1] == 1)
  assert np.all(dec[:, 0] == 1) and np.array_equal(dec[:, 1:], labels[:, :-1])
  assert np.all(batch["decoder_segment_ids"] == 1)
  # sources: shorter than the target (text infilling), one segment then padding
  seg = batch["segment_ids"]
  lengths = seg.sum(axis=1)
  assert np.all(lengths < 32) and np.all(lengths > 8)
  for row, n in zip(batch["input_ids"], lengths):
    assert row[0] == 3 and row[n - 1] == 1 and np.all(row[n:] == 0)
  np.testing.assert_array_equal(batch["positions"][0, : lengths[0]], np.arange(lengths[0]))


@pytest.fixture(scope="module")
def runs():
  # 8 devices with 2 micro-batches against 1 device, one batch: sharding and gradient
  # accumulation in one comparison (the accumulation itself: test_sharding.py).
  one = bart_config()
  eight = bart_config(mesh={"data": 2, "fsdp": 2, "tensor": 2}, optim={"grad_accum_steps": 2})
  batches = bart_batches(one, 4)
  return _train(one, batches, 4), _train(eight, batches, 4)


def test_bart_params_are_sharded_and_loss_matches_one_device(runs):
  (state_1, losses_1, _, _), (state, losses_8, batch, mesh) = runs
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  np.testing.assert_allclose(losses_8, losses_1, rtol=2e-5)
  assert_params_close(state_1.params, state.params, atol=5e-6)
  assert losses_1[-1] < losses_1[0]
  weight_specs(state.params)
  assert batch["input_ids"].sharding.spec == P(("data", "fsdp"))


def test_flops_model_counts_bart_matmuls():
  """The analytic count (two-matrix FFN) is within 10% of XLA's count for the forward pass.

  XLA counts every FLOP (LayerNorm, erf-GELU, softmax, biases) and the analytic model only
  matmuls, so the shape is wide enough for matmuls to dominate (at d=32 they are ~80%).
  """
  config = bart_config(model={"hidden_size": 256, "intermediate_size": 1024})
  task = tasks.make_task(config)
  batch = bart_batches(config, 1)[0]
  params = jax.eval_shape(task.init, jax.random.key(0))["params"]  # shapes suffice
  fwd = jax.jit(lambda p, b: task.model.apply(
      {"params": p}, b["input_ids"], b["decoder_input_ids"], segment_ids=b["segment_ids"],
      decoder_segment_ids=b["decoder_segment_ids"], positions=b["positions"],
      decoder_positions=b["decoder_positions"]))
  cost = fwd.lower(params, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  assert flops.train_flops_per_step(config) / 3 == pytest.approx(cost["flops"], rel=0.10)


def test_mixed_family_and_objective_is_refused():
  with pytest.raises(config_lib.ConfigError, match="does not train model.family"):
    bart_config(objective={"name": "span_corruption"})
  with pytest.raises(config_lib.ConfigError, match="does not train model.family"):
    config_lib.load_config("t5_tiny", ["objective.name=denoising"])


@pytest.mark.parametrize("key,value,needle", [
    ("text_infilling", -0.1, "objective.text_infilling must be in [0, 1], got -0.1"),
    ("permute_sentences", 1.5, "objective.permute_sentences must be in [0, 1], got 1.5"),
    ("random_ratio", 2.0, "objective.random_ratio must be in [0, 1], got 2.0"),
    ("rotate", -1.0, "objective.rotate must be in [0, 1], got -1.0"),
    ("poisson_lambda", 0.0, "objective.poisson_lambda must be >= 0.01, got 0.0"),
    ("poisson_lambda", -3.0, "objective.poisson_lambda must be >= 0.01, got -3.0"),
])
def test_bad_noise_settings_are_refused(key, value, needle):
  with pytest.raises(config_lib.ConfigError) as e:
    bart_config(objective={key: value})
  assert needle in str(e.value)


def test_insertion_noise_shortens_the_block_to_fit_the_source():
  config = bart_config(objective={"insert": 0.1})
  raw = data_glue.block_length(config)
  p = denoising_objective.params(config)
  assert denoising.max_source_length(raw + 2, p) <= 32 < denoising.max_source_length(raw + 3, p)
  assert config.data.target_len == raw + 2


def _hf_param_count(config: config_lib.Config) -> int:
  m = config.model
  hf = transformers.BartConfig(
      vocab_size=m.vocab_size, d_model=m.hidden_size, encoder_layers=m.num_layers,
      decoder_layers=m.num_decoder_layers, encoder_attention_heads=m.num_heads,
      decoder_attention_heads=m.num_heads, encoder_ffn_dim=m.intermediate_size,
      decoder_ffn_dim=m.intermediate_size, max_position_embeddings=m.max_position_embeddings)
  with torch.device("meta"):
    model = transformers.BartForConditionalGeneration(hf)
  return model.num_parameters()


@pytest.mark.parametrize("preset", ["bart_base", "bart_large"])
def test_presets_have_the_published_sizes(preset):
  """With BART's 50265-id vocabulary the presets have facebook/bart-{base,large}'s parameter
  count as transformers builds it (shared embedding counted once)."""
  config = config_lib.load_config(preset, ["model.vocab_size=50265", "data.target_len=512"])
  task = tasks.make_task(config)
  shapes = jax.eval_shape(task.init, jax.random.key(0))["params"]
  hf = _hf_param_count(config)
  # ~139.4M / ~406.3M; HF keeps final_logits_bias as a buffer, ours is a parameter
  assert tasks.param_count(shapes) in (hf, hf + config.model.vocab_size)
  assert hf == {"bart_base": 139_420_416, "bart_large": 406_291_456}[preset]
