"""The family / objective registry (issue 18): a new family and a new objective are records
registered from outside the library — here from this test module alone — and the whole run
(`pretrain train`, `pretrain export`, `load_pretrained(...).logits`) works on them; unknown
names are one error listing the registered ones; core code names no family or objective."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import yaml

import t5x_like
from pretrain import cli
from t5x_like import families, models, objectives
from t5x_like.config import (
    ConfigError,
    ModelConfig,
    ObjectiveConfig,
    apply_overrides,
    from_dict,
    list_presets,
    load_config,
)
from t5x_like.export import common as export_common
from t5x_like.training import tasks
from tests.pretrain.conftest import run_cli

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOY_FAMILY, TOY_OBJECTIVE = "toy_bag", "toy_next_token"


# --------------------------------------------------------------------------- the toy family


@dataclasses.dataclass(frozen=True)
class ToyModelConfig(ModelConfig):
  """The toy family's `model` section: the common keys plus its own, checked by it."""
  context_weight: float = 1.0  # how much of the running mean each position adds

  def check(self, config: Any) -> None:
    if not 0.0 <= self.context_weight <= 1.0:
      raise ConfigError(f"model.context_weight must be in [0, 1], got {self.context_weight}")


@dataclasses.dataclass(frozen=True)
class ToyObjectiveConfig(ObjectiveConfig):
  """The toy objective's section: how far ahead the label is."""
  shift: int = 1


class ToyConfig:
  """The toy family's module config: its own typed view of the run's model section."""

  def __init__(self, vocab_size: int, hidden_size: int, context_weight: float):
    self.vocab_size, self.hidden_size = vocab_size, hidden_size
    self.context_weight = context_weight


class ToyLM(nn.Module):
  """Each position predicts from its own embedding and the running mean of those before it."""
  config: ToyConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, deterministic: bool = True) -> jax.Array:
    c = self.config
    embed = self.param("embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("vocab", "embed")), (c.vocab_size, c.hidden_size))
    head = self.param("head", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("embed", "vocab")), (c.hidden_size, c.vocab_size))
    x_BLD = jnp.take(embed, input_ids, axis=0)
    steps = jnp.arange(1, x_BLD.shape[1] + 1, dtype=x_BLD.dtype)[None, :, None]
    context_BLD = c.context_weight * jnp.cumsum(x_BLD, axis=1) / steps
    return jnp.einsum("bld,dv->blv", x_BLD + context_BLD, head).astype(jnp.float32)


class ToyTask:
  """Next-token cross-entropy at every labelled position."""

  def __init__(self, config: Any):
    self.model = models.build(config.model)
    self.features = ("input_ids", "labels")
    self.seq_len = config.data.seq_len

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    shape = (batch_size, self.seq_len)
    return {"input_ids": np.zeros(shape, np.int32), "labels": np.zeros(shape, np.int32)}

  def init(self, rng: jax.Array) -> Any:
    return self.model.init(rng, self.dummy_batch(1)["input_ids"])

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array | None,
           deterministic: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    logits = self.model.apply({"params": params}, batch["input_ids"])
    labels = batch["labels"]
    valid = labels != tasks.IGNORE
    logz = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, jnp.where(valid, labels, 0)[..., None], -1)[..., 0]
    nll = jnp.sum((logz - target) * valid)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) & valid)
    return nll, {"count": jnp.sum(valid), "correct": correct,
                 "dropped": jnp.zeros((), jnp.int32)}


def _toy_export(params: Any, config: ToyConfig, out_dir: str, tokenizer_model: str | None = None,
                num_sentinels: int = 0, special_ids: Any = None) -> str:
  state = {"embed.weight": np.asarray(params["embed"], np.float32),
           "head.weight": np.asarray(params["head"], np.float32).T.copy()}
  hf_config = {"model_type": TOY_FAMILY, "vocab_size": config.vocab_size,
               "hidden_size": config.hidden_size}
  return export_common.write_export(out_dir, TOY_FAMILY, state, hf_config, config.vocab_size,
                                    tokenizer_model, num_sentinels, model_max_length=512)


TOY = families.Family(
    name=TOY_FAMILY,
    config=ToyModelConfig,
    module_config=lambda m: ToyConfig(m.vocab_size, m.hidden_size, m.context_weight),
    build=ToyLM,
    features=("input_ids", "labels"),
    logits=lambda module, params, b: module.apply({"params": params}, b["input_ids"]),
    logits_features=("input_ids",),
    flops=lambda c: 6.0 * c.train.batch_size * c.data.seq_len * c.model.hidden_size
    * c.model.vocab_size,
    export=_toy_export,
    tokenizer=families.TokenizerSpec(single="$A:0 </s>:0", pair="$A:0 </s>:0 $B:1 </s>:1",
                                     specials=("</s>",)),
)


# --------------------------------------------------------------------------- the toy objective


def _next_token(config: Any, vocab: Any, reverse: bool = False):
  shift = config.objective.shift

  def make(block: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    block = np.asarray(block, np.int32)
    return {"input_ids": block[:-shift], "labels": block[shift:]}
  return make


TOY_OBJ = objectives.Objective(
    name=TOY_OBJECTIVE,
    families=(TOY_FAMILY,),
    config=ToyObjectiveConfig,
    task=ToyTask,
    block_length=lambda config: config.data.seq_len + config.objective.shift,
    make_example=_next_token,
    packing_refused="the toy objective reads whole blocks",
    special_roles=("eos",),
)


@pytest.fixture
def toy_registered():
  families.register(TOY, replace=True)
  objectives.register(TOY_OBJ, replace=True)
  yield
  families.unregister(TOY_FAMILY)  # and its preset folder, which other tests must not see
  objectives.OBJECTIVES.unregister(TOY_OBJECTIVE)


@pytest.mark.slow
def test_a_family_and_an_objective_registered_from_a_test_train_export_and_load(
    toy_registered, tmp_path, corpus, cache_dir):
  # The family brings its preset folder, as the built-in ones do (families/<name>/presets/).
  presets = tmp_path / "presets"
  presets.mkdir()
  families.register(dataclasses.replace(TOY, presets=str(presets)), replace=True)
  preset = presets / "toy_tiny.yaml"
  preset.write_text(yaml.safe_dump({
      "model": {"family": TOY_FAMILY, "hidden_size": 16, "num_heads": 1,
                "context_weight": 0.5},
      "objective": {"name": TOY_OBJECTIVE, "shift": 1},
      "data": {"corpus": corpus, "cache_dir": cache_dir, "seq_len": 16},
      "optim": {"learning_rate": 0.05, "warmup_steps": 0, "schedule": "constant"},
      "train": {"steps": 30, "batch_size": 8, "eval_every": 30, "eval_steps": 2,
                "log_every": 10},
      "checkpoint": {"every": 30},
  }), encoding="utf-8")
  workdir, out = str(tmp_path / "run"), str(tmp_path / "export")
  assert "toy_tiny" in list_presets()
  assert cli.main(["train", "--config", "toy_tiny", "--workdir", workdir]) == 0
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    train = [r for r in map(json.loads, f) if r["split"] == "train"]
  assert train[-1]["loss"] < train[0]["loss"]  # it learns something: the registry is wired

  assert cli.main(["export", "--workdir", workdir, "--out", out]) == 0
  exported = safetensors.numpy.load_file(os.path.join(out, "model.safetensors"))
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["model_type"] == TOY_FAMILY

  loaded = t5x_like.load_pretrained(workdir)
  np.testing.assert_array_equal(np.asarray(loaded.params["embed"]), exported["embed.weight"])
  ids = np.arange(2 * 16, dtype=np.int32).reshape(2, 16) % 100 + 10
  logits = loaded.logits({"input_ids": ids})
  assert logits.shape == (2, 16, loaded.config.model.vocab_size)
  # The exported tensors give the same logits (the toy model's forward in NumPy).
  x = exported["embed.weight"][ids]
  x = x + 0.5 * np.cumsum(x, axis=1) / np.arange(1, 17)[None, :, None]
  np.testing.assert_allclose(logits, x @ exported["head.weight"].T, rtol=1e-4, atol=1e-5)


def test_unknown_family_and_objective_list_the_registered_ones(capsys, tmp_path):
  names = ", ".join(families.names())  # every built-in family, sorted
  assert names.startswith("albert, bart, bert, ")
  registered = re.escape(names)
  with pytest.raises(ConfigError, match=r"^model.family 'gtp2' is not a registered model "
                     rf"family; registered: {registered}$"):
    load_config("bert_tiny", ["model.family=gtp2"])
  with pytest.raises(ConfigError, match=r"^objective.name 'clm' is not a registered objective "
                     r"\(did you mean 'mlm'\?\); registered: causal_lm, "
                     r"decoder_span_corruption, denoising, mixture, mlm, permutation_lm, "
                     r"prefix_lm, replaced_token_detection, sentence_order, "
                     r"seq2seq_prefix_lm, span_corruption, unilm$"):
    load_config("bert_tiny", ["objective.name=clm"])
  with pytest.raises(ConfigError, match=r"model.family 'bret' is not a registered model family "
                     rf"\(did you mean 'bert'\?\); registered: {registered}$"):
    families.get("bret")
  code, _, err = run_cli(capsys, ["train", "--config", "bert_tiny", "--workdir",
                                  str(tmp_path / "w"), "objective.name=clm"])
  assert code == 2 and err.strip().splitlines()[-1].startswith("error: ")
  assert "span_corruption" in err


def test_a_registered_family_must_be_accepted_by_the_objective(toy_registered):
  with pytest.raises(ConfigError, match=r"objective.name 'mlm' does not train model.family "
                     r"'toy_bag'"):
    _config(f"model.family={TOY_FAMILY}")
  # A preset's own family keys do not carry over to another family: named, not ignored.
  owners = ", ".join(f.name for f in families.FAMILIES
                     if "max_position_embeddings" in {k.name for k in dataclasses.fields(f.config)})
  assert owners.startswith("albert, bart, bert")
  with pytest.raises(ConfigError, match=rf"model.max_position_embeddings applies to {owners} "
                     r"only; model.family is 'toy_bag'"):
    load_config("bert_tiny", [f"model.family={TOY_FAMILY}"])
  with pytest.raises(ValueError, match="already registered"):
    families.register(TOY)


def test_a_registered_family_and_objective_own_their_typed_sections(toy_registered):
  """Their own keys are typed and checked by them, valid only beside their name."""
  toy = [f"model.family={TOY_FAMILY}", f"objective.name={TOY_OBJECTIVE}"]
  config = _config(*toy, "model.context_weight=0.25", "objective.shift=2")
  assert type(config.model) is ToyModelConfig and config.model.context_weight == 0.25
  assert type(config.objective) is ToyObjectiveConfig and config.objective.shift == 2
  with pytest.raises(ConfigError, match=r"model.context_weight must be in \[0, 1\], got 1.5"):
    _config(*toy, "model.context_weight=1.5")
  with pytest.raises(ConfigError, match=r"objective.shift: expected int, got str 'x'"):
    _config(*toy, "objective.shift=x")
  with pytest.raises(ConfigError, match=r"model.context_weight applies to toy_bag only; "
                     r"model.family is 'bert'"):
    _config("model.context_weight=0.25")
  # at the other family's default it does nothing either way: accepted (old flat configs)
  assert type(_config("model.context_weight=1.0").model).__name__ == "BertModelConfig"


def _config(*overrides: str) -> Any:
  return from_dict(apply_overrides({}, list(overrides)))


def _core_sources() -> list[pathlib.Path]:
  out = subprocess.run(["git", "ls-files", "t5x_like", "pretrain", "data_pipelines"],
                       cwd=ROOT, capture_output=True, text=True, check=True).stdout
  return [ROOT / p for p in out.split() if p.endswith(".py")]


def test_no_family_or_objective_name_outside_its_own_unit():
  """A family is named only inside t5x_like/families/<name>/, an objective only in its
  record t5x_like/objectives/<name>.py and its transform data_pipelines/objectives/<name>.py."""
  names = {**{f: f"t5x_like/families/{f}/" for f in families.names()},
           **{o: (f"t5x_like/objectives/{o}.py", f"data_pipelines/objectives/{o}.py")
              for o in objectives.names()}}
  # Allowed beyond the units: an objective record names the families that accept it (that is
  # its registration), and the config schema names the documented defaults of model.family
  # and objective.name (values, not dispatch). A family's HF config translation
  # (export.py / hf_config.py) speaks HF's schema, whose keys may spell like one of our
  # objectives (MPT's attn_config has a `prefix_lm` flag): not a reference to the objective.
  allowed = (re.compile(r"^\s*families=\("), re.compile(r"^DEFAULT_(FAMILY|OBJECTIVE) = "))
  hf_schema = re.compile(r"^t5x_like/families/[a-z0-9_]+/(export|hf_config)\.py$")
  offenders = []
  for path in _core_sources():
    rel = path.relative_to(ROOT).as_posix()
    text = path.read_text(encoding="utf-8")
    for name, own in names.items():
      if rel.startswith(own):
        continue
      for line_no, line in enumerate(text.splitlines(), 1):
        if (re.search(rf"""["']{re.escape(name)}["']""", line)
            and not (rel.startswith("t5x_like/objectives/") and allowed[0].search(line))
            and not (rel == "t5x_like/config_schema.py" and allowed[1].search(line))
            and not (name in objectives.names() and hf_schema.match(rel))):
          offenders.append(f"{rel}:{line_no}: {line.strip()}")
  assert not offenders, "family/objective names outside their units:\n" + "\n".join(offenders)
