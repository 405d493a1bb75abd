"""Changing optimiser settings between runs of one workdir.

The step-0 checkpoint `pretrain import` writes holds a new optimiser state by definition, so
`pretrain train` accepts any optimiser configuration on it; a real resume (a checkpoint at a
step > 0) whose optimiser state would change structure ends with one `error:` line naming the
changed keys and leaves the checkpoints untouched; changes that keep the structure (learning
rate, schedule, ...) resume as before.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from pretrain import cli
from t5x_like import checkpointing, load_pretrained
from t5x_like import config as config_lib
from t5x_like.config import OptimConfig, read_config
from t5x_like.training import loop, optimizer, tasks
from t5x_like.training import step as step_lib
from tests.pretrain import test_import_cli
from tests.pretrain.conftest import run_cli, snapshot, tiny_overrides

# End to end (trains through the CLI): skipped by the inner loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

EXIT_BAD_INPUT = 2
bert_folder = test_import_cli.bert_folder  # the tiny HF BERT fixture, shared

# (imported optimiser, key, new value) for every optimiser key: the adafactor-only keys are
# changed on an adafactor import; the keys that change the optax state's structure are marked.
STRUCTURAL = "structural"
CHANGES = [
    ("adamw", "name", "adafactor", STRUCTURAL),
    ("adamw", "grad_clip_norm", "0", STRUCTURAL),  # the example: drops the clip state
    ("adamw", "learning_rate", "1e-3", ""),
    ("adamw", "schedule", "cosine", ""),
    ("adamw", "warmup_steps", "0", ""),
    ("adamw", "end_learning_rate_ratio", "0.5", ""),
    ("adamw", "weight_decay", "0", ""),
    ("adamw", "b1", "0.5", ""),
    ("adamw", "b2", "0.9", ""),
    ("adamw", "eps", "1e-8", ""),
    ("adamw", "grad_accum_steps", "2", ""),
    ("adafactor", "name", "adamw", STRUCTURAL),
    ("adafactor", "grad_clip_norm", "0", STRUCTURAL),
    ("adafactor", "weight_decay", "0", STRUCTURAL),  # adafactor drops its decay transform
    ("adafactor", "b1", "0", STRUCTURAL),  # no momentum
    ("adafactor", "adafactor_clipping_threshold", "0", STRUCTURAL),
    ("adafactor", "adafactor_multiply_by_parameter_scale", "false", STRUCTURAL),
    ("adafactor", "adafactor_min_dim_size_to_factor", "16", STRUCTURAL),  # factors 32x64 too
    ("adafactor", "adafactor_decay_rate", "0.5", ""),
    ("adafactor", "schedule", "rsqrt", ""),
]


def test_changes_cover_every_optimiser_key():
  assert {key for _, key, _, _ in CHANGES} == {f.name for f in dataclasses.fields(OptimConfig)}


@pytest.fixture(scope="module")
def imported(tmp_path_factory, bert_folder, corpus, cache_dir) -> dict[str, str]:
  """Two imports of the tiny BERT (step-0 checkpoints): with adamw (bert_tiny's) and with
  adafactor."""
  out = {}
  for name in ("adamw", "adafactor"):
    workdir = str(tmp_path_factory.mktemp("imported") / name)
    code = cli.main(["import", "--from", bert_folder, "--workdir", workdir,
                     *test_import_cli.RUN, f"optim.name={name}", f"data.corpus={corpus}",
                     f"data.cache_dir={cache_dir}"])
    assert code == 0
    out[name] = workdir
  return out


def _train(capsys, workdir: str, *extra: str) -> tuple[int, str, str]:
  return run_cli(capsys, ["train", "--config", os.path.join(workdir, "config.yaml"),
                          "--workdir", workdir, *extra])


def _changed(workdir: str, key: str, value: str) -> config_lib.Config:
  """The run's config.yaml with `optim.KEY=VALUE`."""
  return config_lib.from_dict(config_lib.apply_overrides(
      config_lib.to_dict(read_config(os.path.join(workdir, "config.yaml"))),
      [f"optim.{key}={value}"]))


@pytest.mark.parametrize(("optim", "key", "value", "kind"), CHANGES,
                         ids=[f"{o}-{k}={v}" for o, k, v, _ in CHANGES])
def test_structural_marks_match_the_saved_optimiser_state(imported, optim, key, value, kind):
  """The changes marked structural are those whose optax state cannot be restored from the
  imported checkpoint's (the ones a real resume refuses)."""
  config = _changed(imported[optim], key, value)
  task = tasks.make_task(config)
  params = jax.eval_shape(lambda rng: task.init(rng)["params"], jax.random.key(0))
  tx = optimizer.make_optimizer(config.optim, config.train.steps)
  new = checkpointing.optimizer_layout(jax.eval_shape(tx.init, nn.meta.unbox(params)))
  ckpt = checkpointing.Checkpointer(
      checkpointing.checkpoint_dir(imported[optim]), read_only=True)
  try:
    assert (new != ckpt.optimizer_layout(0)) == (kind == STRUCTURAL)
  finally:
    ckpt.close()


# End to end, one change of each kind the optimiser state's structure can take (another
# optimiser either way, a transform dropped: clipping / momentum, factored shapes changed) and
# one that keeps it per optimiser. Every structural change trains the same code path (a fresh
# state of the new optimiser on the imported params); the marks above are checked for every
# key, so each key's state is known to be restorable or rebuilt.
TRAINED = [
    ("adamw", "name", "adafactor", STRUCTURAL), ("adafactor", "name", "adamw", STRUCTURAL),
    ("adamw", "grad_clip_norm", "0", STRUCTURAL), ("adafactor", "b1", "0", STRUCTURAL),
    ("adafactor", "adafactor_min_dim_size_to_factor", "16", STRUCTURAL),
    ("adamw", "learning_rate", "1e-3", ""), ("adafactor", "adafactor_decay_rate", "0.5", "")]
assert set(TRAINED) <= set(CHANGES)


@pytest.mark.parametrize(("optim", "key", "value"), [c[:3] for c in TRAINED],
                         ids=[f"{o}-{k}={v}" for o, k, v, _ in TRAINED])
def test_import_then_train_with_optimiser_option_changed(tmp_path, capsys, imported, optim,
                                                         key, value):
  workdir = str(tmp_path / "run")
  shutil.copytree(imported[optim], workdir)
  code, out, err = _train(capsys, workdir, "train.steps=1", f"optim.{key}={value}")
  assert code == 0, err
  assert f"resumed from {os.path.join(workdir, 'checkpoints')}/0" in err
  assert json.loads(out.strip().splitlines()[-1])["step"] == 1
  expected = _changed(imported[optim], key, value).optim
  assert read_config(os.path.join(workdir, "config.yaml")).optim == expected
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["0", "1"]


def test_import_grad_clip_off_then_resume_and_refuse_turning_it_back_on(tmp_path, capsys,
                                                                      imported):
  """The issue's sequence: import, train with clipping off, resume it; turning clipping back
  on is then a real resume with another optimiser structure."""
  workdir = str(tmp_path / "run")
  shutil.copytree(imported["adamw"], workdir)
  code, _, err = _train(capsys, workdir, "train.steps=2", "optim.grad_clip_norm=0")
  assert code == 0, err
  code, out, err = _train(capsys, workdir, "train.steps=4")  # config.yaml now says 0
  assert code == 0, err
  assert f"resumed from {os.path.join(workdir, 'checkpoints')}/2" in err
  assert json.loads(out.strip().splitlines()[-1])["step"] == 4
  before = _files(workdir)
  code, out, err = _train(capsys, workdir, "train.steps=6", "optim.grad_clip_norm=1.0")
  assert code == EXIT_BAD_INPUT and out == ""
  line = _one_error(err)
  assert "optim.grad_clip_norm 0.0 -> 1.0" in line, line
  assert _files(workdir) == before


def test_step_0_restore_equals_the_imported_state(imported):
  """With the import's own optimiser settings, the params-only restore of the step-0
  checkpoint plus a fresh optimiser state is exactly the state the import saved."""
  workdir = imported["adafactor"]
  config = read_config(os.path.join(workdir, "config.yaml"))
  trainer = loop.Trainer(config, workdir)
  ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(workdir), read_only=True)
  try:
    with step_lib.mesh_context(trainer.mesh):
      state = trainer.init_or_restore(ckpt, None)
      saved, _, _ = ckpt.restore(0, trainer.abstract)
  finally:
    ckpt.close()
  flat, tree = jax.tree_util.tree_flatten_with_path(state)
  flat_saved, tree_saved = jax.tree_util.tree_flatten_with_path(saved)
  assert tree == tree_saved
  for (path, a), (_, b) in zip(flat, flat_saved):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


def _files(root: str) -> tuple[dict[str, bytes | None], dict[str, int]]:
  """Every path's bytes and modification time, to prove nothing was rewritten."""
  mtimes = {}
  for dirpath, _, filenames in os.walk(root):
    for name in filenames:
      path = os.path.join(dirpath, name)
      mtimes[os.path.relpath(path, root)] = os.stat(path).st_mtime_ns
  return snapshot(root), mtimes


def _one_error(err: str) -> str:
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0]


@pytest.mark.parametrize(("change", "needle"), [
    (["optim.grad_clip_norm=0"], "optim.grad_clip_norm 1.0 -> 0.0"),
    (["optim.name=adafactor", "optim.learning_rate=0.01"], "optim.name adamw -> adafactor"),
])
def test_real_resume_with_other_optimiser_structure_changes_nothing(
    tmp_path, capsys, trained_workdir, corpus, cache_dir, change, needle):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_workdir, workdir)  # checkpoints at steps 3 and 6
  before = _files(workdir)
  code, out, err = run_cli(capsys, ["train", "--config", "bert_tiny", "--workdir", workdir,
                                    *tiny_overrides(corpus, cache_dir), *change])
  assert code == EXIT_BAD_INPUT and out == ""
  line = _one_error(err)
  assert needle in line and workdir in line, line
  assert "learning_rate" not in line  # only the keys that change the structure are named
  assert "--workdir" in line and "pretrain import" in line, line  # how to go on
  assert _files(workdir) == before


def test_real_resume_with_other_learning_rate_continues(tmp_path, capsys, trained_workdir,
                                                       corpus, cache_dir):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_workdir, workdir)
  code, out, err = run_cli(capsys, ["train", "--config", "bert_tiny", "--workdir", workdir,
                                    *tiny_overrides(corpus, cache_dir, **{
                                        "train.steps": 8, "optim.learning_rate": 5e-4,
                                        "optim.schedule": "constant"})])
  assert code == 0, err
  assert f"resumed from {os.path.join(workdir, 'checkpoints')}/6" in err
  assert json.loads(out.strip().splitlines()[-1])["step"] == 8
  assert read_config(os.path.join(workdir, "config.yaml")).optim.learning_rate == 5e-4


def test_eval_and_load_read_a_step_0_checkpoint_whatever_optim_config_yaml_says(
    tmp_path, capsys, imported):
  """A first run after the import that changed the optimiser and stopped before its first
  save leaves config.yaml with the new settings over the import's step 0: eval and export
  read only the weights, so they still work."""
  workdir = str(tmp_path / "run")
  shutil.copytree(imported["adamw"], workdir)
  config = _changed(workdir, "name", "adafactor")
  config_lib.save_config(config, os.path.join(workdir, "config.yaml"))
  assert load_pretrained(workdir).step == 0
  code, out, err = run_cli(capsys, ["eval", "--workdir", workdir, "--max-batches", "1"])
  assert code == 0, err
  assert json.loads(out)["step"] == 0
