"""UniLM on device (docs/objectives.md, "UniLM"): the [B, L, L] mask built in the step equals
the golden matrices and the NumPy reference; under it, the encoder's final hidden states
depend only on what each mode lets a position see; the exported BertForMaskedLM run with the
same mask gives the same logits; the task's loss is the MLM loss under the mask."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from data_pipelines.objectives import unilm as unilm_data
from data_pipelines.vocab import VocabInfo
from t5x_like.families.bert import export as export_bert_lib
from t5x_like.families.bert.model import BertConfig, BertForMaskedLM
from t5x_like.objectives import unilm
from tests.data_pipelines.test_unilm import GOLDEN_MASKS, GOLDEN_PADDING, GOLDEN_SOURCE_LENGTH
from tests.t5x_like.test_export_bert import _random_params

TINY = BertConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4,
                  intermediate_size=64, max_position_embeddings=64)
L = 16
SOURCE = 7  # [CLS] + 5 source tokens + [SEP]; positions 7..13 the target, 14..15 pad


def test_device_mask_is_the_golden_one():
  modes = np.arange(4, dtype=np.int32)
  got = unilm.self_attention_mask(jnp.asarray(modes), jnp.full(4, GOLDEN_SOURCE_LENGTH),
                                  jnp.asarray(np.tile(GOLDEN_PADDING, (4, 1))))
  for k, mode in enumerate(unilm_data.MODES):
    np.testing.assert_array_equal(np.asarray(got[k]).astype(int), GOLDEN_MASKS[mode], mode)


def test_device_mask_equals_the_numpy_reference_on_random_rows():
  rng = np.random.default_rng(0)
  b = 64
  modes = rng.integers(0, 4, b).astype(np.int32)
  real = rng.integers(2, 24, b)
  padding = (np.arange(24)[None, :] < real[:, None]).astype(np.int32)
  sources = np.where(modes == unilm_data.SEQ2SEQ, rng.integers(1, real), 0).astype(np.int32)
  got = np.asarray(unilm.self_attention_mask(modes, sources, padding))
  for r in range(b):
    np.testing.assert_array_equal(got[r], unilm_data.attention_mask_np(modes[r], sources[r],
                                                                       padding[r]))


def _row(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  ids = rng.integers(6, TINY.vocab_size, (1, L)).astype(np.int32)
  padding = np.ones((1, L), np.int32)
  padding[0, 14:] = 0
  ids[padding == 0] = 0
  types = np.zeros((1, L), np.int32)
  types[0, SOURCE:14] = 1
  return ids, padding, types


@functools.cache
def _hidden_fn():
  def hidden(params, ids, mask, types):
    _, state = BertForMaskedLM(TINY).apply(
        {"params": params}, ids, mask, types, deterministic=True,
        capture_intermediates=lambda mdl, _: mdl.name == "encoder")
    return state["intermediates"]["encoder"]["__call__"][0]
  return jax.jit(hidden)


def _states(mode: int, ids: np.ndarray, padding: np.ndarray, types: np.ndarray) -> np.ndarray:
  """Final hidden states [L, D] of one row under the UniLM mask of `mode`."""
  mask = unilm.self_attention_mask(jnp.array([mode]), jnp.array([SOURCE]), padding)
  return np.asarray(_hidden_fn()(_random_params(TINY), ids, mask.astype(jnp.int32), types))[0]


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per position: did the hidden state move (beyond float noise)?"""
  return np.max(np.abs(a - b), axis=-1) > 1e-5


def _perturbed(ids: np.ndarray, position: int) -> np.ndarray:
  out = ids.copy()
  out[0, position] = 6 + (out[0, position] - 6 + 17) % (TINY.vocab_size - 6)
  return out


def test_seq2seq_source_never_sees_the_target():
  ids, padding, types = _row()
  base = _states(unilm_data.SEQ2SEQ, ids, padding, types)
  after_target = _states(unilm_data.SEQ2SEQ, _perturbed(ids, 10), padding, types)
  changed = _changed(base, after_target)
  assert not changed[:SOURCE].any()  # source states unchanged
  assert not changed[SOURCE:10].any()  # targets left of the change: unchanged too
  assert changed[10:14].all()  # the token itself and the targets after it move
  after_source = _states(unilm_data.SEQ2SEQ, _perturbed(ids, 2), padding, types)
  assert _changed(base, after_source)[:14].all()  # every real state sees the source
  # control: bidirectionally, the target change reaches the source
  bidir = _states(unilm_data.BIDIRECTIONAL, ids, padding, types)
  assert _changed(bidir, _states(unilm_data.BIDIRECTIONAL, _perturbed(ids, 10), padding,
                                 types))[:SOURCE].all()


@pytest.mark.parametrize("position", [3, 9])
def test_left_to_right_and_right_to_left_states_see_one_side(position):
  ids, padding, types = _row(1)
  new = _perturbed(ids, position)
  l2r = _changed(_states(unilm_data.LEFT_TO_RIGHT, ids, padding, types),
                 _states(unilm_data.LEFT_TO_RIGHT, new, padding, types))
  assert not l2r[:position].any() and l2r[position:14].all()
  r2l = _changed(_states(unilm_data.RIGHT_TO_LEFT, ids, padding, types),
                 _states(unilm_data.RIGHT_TO_LEFT, new, padding, types))
  assert r2l[:position + 1].all() and not r2l[position + 1:14].any()


def test_padding_is_never_seen_in_any_mode():
  ids, padding, types = _row(2)
  other = ids.copy()
  other[0, 14:] = 99  # whatever sits under the padding
  for mode in range(4):
    changed = _changed(_states(mode, ids, padding, types), _states(mode, other, padding, types))
    assert not changed[:14].any(), unilm_data.MODES[mode]


def test_exported_bert_under_the_same_masks_gives_the_same_logits(tmp_path):
  """The export is a plain BertForMaskedLM; given a UniLM mask as its 4-D attention mask it
  computes what we trained (bidirectional: the ordinary padding mask)."""
  params = _random_params(TINY)
  out = export_bert_lib.export_bert(params, TINY, str(tmp_path / "hf"))
  hf = transformers.BertForMaskedLM.from_pretrained(out).eval()
  ids, padding, types = _row(3)
  model = BertForMaskedLM(TINY)
  for mode in range(4):
    mask = unilm.self_attention_mask(jnp.array([mode]), jnp.array([SOURCE]), padding)
    ours = np.asarray(model.apply({"params": params}, ids, mask.astype(jnp.int32), types))
    if mode == unilm_data.BIDIRECTIONAL:
      hf_mask = torch.from_numpy(padding)
    else:
      hf_mask = torch.from_numpy(np.array(mask))[:, None]
    with torch.no_grad():
      theirs = hf(input_ids=torch.from_numpy(ids).long(), attention_mask=hf_mask,
                  token_type_ids=torch.from_numpy(types).long()).logits.numpy()
    real = padding[0] > 0
    np.testing.assert_allclose(ours[0, real], theirs[0, real], atol=1e-4, rtol=1e-4,
                               err_msg=unilm_data.MODES[mode])


def test_the_task_loss_is_the_mlm_loss_under_the_mask():
  from t5x_like.config import load_config
  from t5x_like.training import tasks

  config = load_config("unilm_tiny", ["model.vocab_size=128", "model.hidden_size=32",
                                      "model.num_heads=4", "model.intermediate_size=64",
                                      "model.max_position_embeddings=64",
                                      f"data.seq_len={L}"])
  task = tasks.make_task(config)
  assert isinstance(task, unilm.UnilmTask)
  assert task.features[-2:] == (unilm.MODE_FEATURE, unilm.SOURCE_FEATURE)
  initial = nn.meta.unbox(task.init(jax.random.key(0))["params"])
  params = _random_params(TINY)  # the same tree, with weights large enough to matter
  assert jax.tree.structure(initial) == jax.tree.structure(params)
  ids, padding, types = _row(4)
  labels = np.full((1, L), -100, np.int32)
  labels[0, [2, 9, 12]] = ids[0, [2, 9, 12]]
  batch = {"input_ids": ids, "attention_mask": padding, "token_type_ids": types,
           "labels": labels, unilm.MODE_FEATURE: np.array([unilm_data.SEQ2SEQ], np.int32),
           unilm.SOURCE_FEATURE: np.array([SOURCE], np.int32)}
  loss, aux = task.loss(params, batch, None, deterministic=True)
  mask = unilm.self_attention_mask(jnp.array([unilm_data.SEQ2SEQ]), jnp.array([SOURCE]),
                                   padding)
  logits = task.model.apply({"params": params}, ids, mask.astype(jnp.int32), types)[0, [2, 9, 12]]
  want = -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(3), ids[0, [2, 9, 12]]])
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  assert int(aux["count"]) == 3
  bidirectional = {**batch, unilm.MODE_FEATURE: np.array([unilm_data.BIDIRECTIONAL], np.int32)}
  assert abs(float(task.loss(params, bidirectional, None, deterministic=True)[0]) -
             float(loss)) > 1e-3  # the mode matters


def _unilm_batches(config, n: int) -> list[dict[str, np.ndarray]]:
  """n global batches made by the real UniLM rows on random blocks (every mode present)."""
  vocab = VocabInfo.synthetic(config.model.vocab_size)
  params = unilm.params(config)
  batches = []
  for b in range(n):
    rows = [unilm_data.make_example(
        np.random.default_rng([5, b, i]).integers(6, config.model.vocab_size,
                                                  config.data.seq_len - 2),
        np.random.default_rng([0, b, i]), params, vocab) for i in range(config.train.batch_size)]
    batches.append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  return batches


def test_sharded_2x2x2_training_equals_one_device():
  from tests.t5x_like.conftest import tiny_config
  from tests.t5x_like.test_sharding import _train, assert_params_close

  assert jax.device_count() == 8
  one = tiny_config(objective={"name": "unilm"})
  eight = tiny_config(objective={"name": "unilm"}, mesh={"data": 2, "fsdp": 2, "tensor": 2})
  batches = _unilm_batches(one, 3)
  assert set(np.concatenate([b[unilm.MODE_FEATURE] for b in batches]).tolist()) == {0, 1, 2, 3}
  state_1, losses_1, _, _ = _train(one, batches, 3)
  state_8, losses_8, batch, _ = _train(eight, batches, 3)
  assert batch[unilm.MODE_FEATURE].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  np.testing.assert_allclose(losses_8, losses_1, rtol=2e-5)
  assert losses_1[-1] < losses_1[0]
  assert_params_close(state_1.params, state_8.params, atol=2e-6)
