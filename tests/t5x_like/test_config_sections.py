"""Typed per-family `model` and per-objective `objective` sections, and lists of records
(issue 18): a family's keys are valid only beside its name, every earlier config.yaml (one
flat section for every family) still loads, and a list of records is typed record by record
and reachable by `key.N.field=value` overrides."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest
import yaml

from t5x_like import config as config_lib
from t5x_like import families, objectives
from t5x_like.config import ConfigError
from t5x_like.config_schema import Polymorphic


@pytest.mark.parametrize("preset", ["bert_tiny", "t5_tiny", "bart_tiny", "xlnet_tiny",
                                    "albert_tiny"])
def test_each_preset_gets_its_family_and_objective_section(preset):
  c = config_lib.load_config(preset)
  assert type(c.model) is families.get(c.model.family).config
  assert type(c.objective) is objectives.get(c.objective.name).config
  # the sections hold exactly their unit's keys: none of another family's
  keys = set(config_lib.to_dict(c)["model"])
  others = {f.name for fam in families.FAMILIES if fam.name != c.model.family
            for f in dataclasses.fields(fam.config)}
  assert keys == {f.name for f in dataclasses.fields(type(c.model))}
  assert others - keys, "another family has keys of its own"


def test_another_familys_key_is_named_not_ignored():
  with pytest.raises(ConfigError, match=r"^model.mem_len applies to xlnet only; model.family "
                     r"is 'bert'$"):
    config_lib.load_config("bert_tiny", ["model.mem_len=16"])
  with pytest.raises(ConfigError, match=r"^objective.noise_density applies to "
                     r"decoder_span_corruption, span_corruption only; objective.name is "
                     r"'denoising'$"):
    config_lib.load_config("bart_tiny", ["objective.noise_density=0.3"])
  # a key no unit has keeps its "did you mean"
  with pytest.raises(ConfigError, match=r"unknown config key model.hiden_size \(did you mean "
                     r"model.hidden_size\?\)"):
    config_lib.load_config("t5_tiny", ["model.hiden_size=64"])


def _flat_tree(config: config_lib.Config) -> dict:
  """The config as the earlier, flat schema wrote it: every family's and every objective's
  keys in one section, the others at their defaults."""
  tree = config_lib.to_dict(config)
  for section, registry in (("model", families.FAMILIES), ("objective", objectives.OBJECTIVES)):
    flat = {}
    for unit in registry:
      flat.update(config_lib.to_dict(unit.config()))
    flat.update(tree[section])
    tree[section] = flat
  return tree


@pytest.mark.parametrize("preset", ["bert_tiny", "t5_tiny", "bart_tiny", "xlnet_tiny",
                                    "albert_tiny"])
def test_an_earlier_flat_config_yaml_still_loads(tmp_path, preset):
  config = config_lib.load_config(preset)
  path = tmp_path / "config.yaml"
  path.write_text(yaml.safe_dump(_flat_tree(config)), encoding="utf-8")
  assert config_lib.read_config(str(path)) == config
  assert config_lib.load_config(str(path)) == config


def test_a_saved_config_with_a_key_the_run_ignored_warns_and_loads(tmp_path, caplog):
  """An earlier version accepted (and ignored) e.g. a BERT run's head_dim; its saved
  config.yaml describes a run that ignored it, so resuming it must not fail."""
  config = config_lib.load_config("bert_tiny")
  tree = _flat_tree(config)
  tree["model"]["head_dim"] = 16
  path = tmp_path / "config.yaml"
  path.write_text(yaml.safe_dump(tree), encoding="utf-8")
  with caplog.at_level(logging.WARNING):
    assert config_lib.read_config(str(path)) == config
  # The owners are listed by name (t5 among them; more families may have a head_dim).
  owners = r"model.head_dim applies to ([a-z0-9_]+, )*t5(, [a-z0-9_]+)* only"
  assert re.search(owners + r"; model.family is 'bert': ignored", caplog.text)
  with pytest.raises(ConfigError, match=owners):
    config_lib.load_config(str(path))  # a config written by hand: refused


# --------------------------------------------------------------------------- lists of records


@dataclasses.dataclass(frozen=True)
class Rate:
  name: str = "a"
  rate: float = 1.0


@dataclasses.dataclass(frozen=True)
class RateA(Rate):
  width: int = 3


@dataclasses.dataclass(frozen=True)
class RateB(Rate):
  name: str = "b"
  depth: float = 0.5


@dataclasses.dataclass(frozen=True)
class Mixture:
  weights: tuple[float, ...] = ()
  plain: tuple[Rate, ...] = ()
  records: tuple[Rate, ...] = dataclasses.field(default=(), metadata={
      "polymorphic": Polymorphic("name", default="a", table=lambda: {"a": RateA, "b": RateB})})


def _mixture(tree: dict, overrides: tuple[str, ...] = ()) -> Mixture:
  return config_lib._build(Mixture, config_lib.apply_overrides(tree, list(overrides)))  # pylint: disable=protected-access


def test_a_list_of_records_is_typed_record_by_record():
  m = _mixture({"weights": [1, "0.5"], "plain": [{"rate": 2}],
                "records": [{"name": "a", "rate": 0.25, "width": 7}, {"name": "b", "depth": 2}]})
  assert m.weights == (1.0, 0.5)
  assert m.plain == (Rate(rate=2.0),)
  assert m.records == (RateA(rate=0.25, width=7), RateB(depth=2.0))
  assert config_lib.to_dict(m)["records"] == [{"name": "a", "rate": 0.25, "width": 7},
                                              {"name": "b", "rate": 1.0, "depth": 2.0}]
  yaml.safe_dump(config_lib.to_dict(m))  # plain YAML: lists, not tuples


def test_overrides_reach_into_a_list_of_records():
  tree = {"records": [{"name": "a"}, {"name": "b"}]}
  m = _mixture(tree, ("records.1.depth=0.75", "records.0.rate=3"))
  assert m.records == (RateA(rate=3.0), RateB(depth=0.75))
  m = _mixture(tree, ("records=[{name: b, rate: 2}]",))  # a whole new list
  assert m.records == (RateB(rate=2.0),)
  with pytest.raises(ConfigError, match=r"records.2: records is a list of 2 records, numbered "
                     r"0..1"):
    _mixture(tree, ("records.2.rate=1",))


def test_a_bad_record_is_named_by_its_index():
  with pytest.raises(ConfigError, match=r"unknown config key records.1.dpeth \(did you mean "
                     r"records.1.depth\?\)"):
    _mixture({"records": [{"name": "a"}, {"name": "b", "dpeth": 2}]})
  with pytest.raises(ConfigError, match=r"^records.1.width applies to a only; records.1.name is "
                     r"'b'$"):
    _mixture({"records": [{"name": "a"}, {"name": "b", "width": 2}]})
  with pytest.raises(ConfigError, match=r"records.0.rate: expected float, got str 'fast'"):
    _mixture({"records": [{"rate": "fast"}]})
  with pytest.raises(ConfigError, match=r"name 'c' is not one of a, b"):
    _mixture({"records": [{"name": "c"}]})
  with pytest.raises(ConfigError, match=r"^records: expected a list, got dict"):
    _mixture({"records": {"name": "a"}})
  with pytest.raises(ConfigError, match=r"^plain.0: expected a mapping of Rate keys, got int"):
    _mixture({"plain": [3]})
