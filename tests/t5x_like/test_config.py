"""Config schema: presets load, overrides are typed, bad keys/values fail with one clear line."""

from __future__ import annotations

import pytest
import yaml

from t5x_like import config as config_lib
from t5x_like.config import ConfigError


def test_presets_load_with_published_sizes():
  assert {"bert_tiny", "bert_base", "roberta_base"} <= set(config_lib.list_presets())
  base = config_lib.load_config("bert_base")
  assert (base.model.hidden_size, base.model.num_layers, base.model.num_heads,
          base.model.intermediate_size, base.data.seq_len) == (768, 12, 12, 3072, 512)
  roberta = config_lib.load_config("roberta_base")
  assert roberta.model.hidden_size == 768 and roberta.model.type_vocab_size == 1
  assert roberta.optim.b2 == 0.98 and roberta.train.batch_size == 8192
  assert roberta.model.layer_norm_eps == pytest.approx(1e-5)


def test_overrides_are_typed():
  c = config_lib.load_config("bert_tiny", ["train.steps=1e3", "optim.learning_rate=3e-4",
                                           "model.scan_layers=true", "mesh.data=-1",
                                           "data.corpus=/some/where.jsonl"])
  assert c.train.steps == 1000 and isinstance(c.train.steps, int)
  assert c.optim.learning_rate == pytest.approx(3e-4)
  assert c.model.scan_layers is True
  assert c.data.corpus == "/some/where.jsonl"


@pytest.mark.parametrize("override, words", [
    ("train.stepz=3", ["unknown config key train.stepz", "train.steps"]),
    ("nope.x=1", ["unknown config key nope", "model"]),
    ("train.steps=abc", ["train.steps", "expected int", "abc"]),
    ("model.dropout_rate=high", ["model.dropout_rate", "expected float"]),
    ("train.export_at_end=maybe", ["train.export_at_end", "expected bool"]),
    ("model.dtype=float16", ["model.dtype", "float16", "bfloat16"]),
    ("model.hidden_size=129", ["divisible", "model.num_heads"]),
    ("objective.mask_prob=1.5", ["objective.mask_prob", "(0, 1)"]),
    ("mesh.data=0", ["mesh.data"]),
    ("train.steps", ["key.path=value"]),
])
def test_bad_overrides_name_the_key(override, words):
  with pytest.raises(ConfigError) as err:
    config_lib.load_config("bert_tiny", [override])
  message = str(err.value)
  assert "\n" not in message
  for word in words:
    assert word in message


def test_unknown_preset_lists_presets():
  with pytest.raises(ConfigError, match="bert_tiny"):
    config_lib.load_config("bert_tinyy")


def test_round_trip_and_base_inheritance(tmp_path):
  c = config_lib.load_config("bert_tiny", ["train.steps=7"])
  path = str(tmp_path / "config.yaml")
  config_lib.save_config(c, path)
  assert config_lib.read_config(path) == c
  child = tmp_path / "child.yaml"
  child.write_text(yaml.safe_dump({"base": "bert_tiny", "train": {"steps": 11}}))
  loaded = config_lib.load_config(str(child))
  assert loaded.train.steps == 11 and loaded.model.hidden_size == 128


def test_bad_yaml_file(tmp_path):
  bad = tmp_path / "bad.yaml"
  bad.write_text("model: [unclosed\n")
  with pytest.raises(ConfigError, match="not valid YAML"):
    config_lib.load_config(str(bad))
  listy = tmp_path / "list.yaml"
  listy.write_text("- 1\n- 2\n")
  with pytest.raises(ConfigError, match="mapping"):
    config_lib.load_config(str(listy))


def test_max_predictions_bound():
  c = config_lib.load_config("bert_tiny")
  assert c.objective.predictions_per_row(c) == 19  # ceil(0.15 * 126)
  c = config_lib.load_config("bert_tiny", ["objective.max_predictions=25"])
  assert c.objective.predictions_per_row(c) == 25
