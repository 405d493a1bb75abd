"""LoRA adapters as a `peft` folder, and back (`pretrain export --lora adapter`,
`pretrain import --adapter`).

peft saves a LoRA adapter of a transformers model as `adapter_config.json` (peft's
`LoraConfig`) and `adapter_model.safetensors` with, for each adapted `nn.Linear` named M,
`base_model.model.M.lora_A.weight` [r, in] and `base_model.model.M.lora_B.weight` [out, r]
(so that W + s B A is the merged torch weight [out, in]), and for each module in
`modules_to_save` its whole weight as `base_model.model.M.weight`.

Which Linear our Dense layer is, and how its axes map to the Linear's [out, in], is read off
the family's exporter (`hf_layouts.layouts`, the table the import uses): our kernel
[*in, *out] is exported as a transpose + reshape to [out_flat, in_flat], and the same
transposes applied to A [*in, r] and B [r, *out] give lora_A and lora_B. A Dense layer whose
kernel does not become one Linear weight (XLNet's attention projections are raw [d, heads,
head_dim] parameters in transformers) cannot be a peft adapter: that is an error naming it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from t5x_like.config_schema import ConfigError
from t5x_like.export.common import _f32, check_target, write_marker
from t5x_like.hf_layouts import (
  Layout,
  flatten_params,
  layouts,
  stack_layers,
  unflatten_params,
  unstack_layers,
)
from t5x_like.models import lora

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# peft's task_type (the PeftModel subclass AutoPeftModel picks) per exported class's kind.
_TASK_TYPES = {"encoder_decoder": "SEQ_2_SEQ_LM", "decoder_only": "CAUSAL_LM"}


class AdapterError(ConfigError):
  """A peft adapter that does not fit (or cannot be made for) the model."""


def _kernel_layouts(family: str, module_config: Any) -> dict[str, tuple[str, Layout]]:
  """Our per-layer param path -> (HF tensor name, layout)."""
  from t5x_like import families
  if families.get(family).hf is None:
    raise AdapterError(f"the {family} family declares no transformers tensor map (HFSpec), so "
                       "its LoRA adapters have no peft names; export merged (--lora merge)")
  return {lay.path: (name, lay) for name, lay in layouts(family, module_config).items()}


def _linear(path: str, n_in: int, n_kernel: int, table: Mapping[str, tuple[str, Layout]]
            ) -> tuple[str, Layout]:
  """The HF Linear module our Dense at `path` exports to, and its kernel layout."""
  name, layout = table[f"{path}/kernel"]
  outs, ins = (layout.groups + ((), ()))[:2]
  if (len(layout.groups) != 2 or not name.endswith(".weight")
      or sorted(ins) != list(range(n_in)) or sorted(outs) != list(range(n_in, n_kernel))):
    raise AdapterError(
        f"the LoRA target {path} exports to transformers' {name}, which is not a torch "
        "Linear weight [out, in]; peft cannot adapt it. Export merged (--lora merge) or train "
        "with lora.targets naming Linear layers")
  return name[:-len(".weight")], layout


def _per_layer(params: Mapping[str, Any]) -> dict[str, Any]:
  return flatten_params(unstack_layers(params))


def peft_state_dict(params: Mapping[str, Any], spec: lora.LoraSpec, family: Any,
                    module_config: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(peft tensors, adapter_config fields we set) for a LoRA run's unmerged params."""
  flat = _per_layer(params)
  table = _kernel_layouts(family.name, module_config)
  tensors: dict[str, np.ndarray] = {}
  modules: list[str] = []
  for path in sorted(p[:-len("/lora_a")] for p in flat if p.endswith("/lora_a")):
    a, b = _f32(flat[f"{path}/lora_a"]), _f32(flat[f"{path}/lora_b"])
    n_in = a.ndim - 1
    module, layout = _linear(path, n_in, np.ndim(flat[f"{path}/kernel"]), table)
    outs, ins = layout.groups
    lora_a = a.transpose((n_in,) + tuple(ins)).reshape(spec.rank, -1)
    lora_b = b.transpose(tuple(k - n_in + 1 for k in outs) + (0,)).reshape(-1, spec.rank)
    tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(lora_a)
    tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(lora_b)
    modules.append(module)
  if not modules:
    raise AdapterError("the run's params hold no LoRA adapters")
  saved = _modules_to_save(params, flat, spec, family, module_config, table, tensors)
  fields = {"r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
            "use_rslora": spec.use_rslora, "target_modules": _target_modules(modules, table),
            "modules_to_save": saved or None,
            "init_lora_weights": True if spec.init == "kaiming_uniform" else "gaussian"}
  return tensors, fields


def _modules_to_save(params: Mapping[str, Any], flat: Mapping[str, Any], spec: lora.LoraSpec,
                     family: Any, module_config: Any, table: Mapping[str, tuple[str, Layout]],
                     tensors: dict[str, np.ndarray]) -> list[str]:
  """Params trained whole (lora.modules_to_save, lora.train_embeddings) as peft's
  modules_to_save: the smallest transformers modules holding them (full names), plus the
  modules tied to them (BERT's MLM decoder, BART's lm_head, T5's per-stack embed_tokens): peft
  keeps a separate copy of each listed module, so a tied copy left out would keep the base's
  table. Every tensor of a listed module is saved."""
  names = [table[path][0] for path, value in flat.items()
           if path.rsplit("/", 1)[-1] not in lora.ADAPTER_NAMES
           and lora.is_trainable(path, value, spec)]
  if not names:
    return []
  state = family.hf.to_hf(lora.without_adapters(params), module_config)
  tied = dict(family.hf.tied)
  modules = {n.rsplit(".", 1)[0] for n in names}
  modules |= {copy.rsplit(".", 1)[0] for copy, source in tied.items() if source in names}
  modules = {m for m in modules if not any(m.startswith(o + ".") for o in modules)}
  for module in sorted(modules):
    for name in (n for n in (*state, *tied) if n.startswith(module + ".")):
      value = state[name] if name in state else state[tied[name]]
      tensors[f"{PREFIX}{name}"] = np.ascontiguousarray(_f32(value))
  return sorted(modules)


def _target_modules(modules: list[str], table: Mapping[str, tuple[str, Layout]]) -> list[str]:
  """peft's target_modules: the adapted modules' last names when those select exactly them
  among the model's Linear layers (peft matches a name or a `.name` suffix), else their full
  names."""
  linears = {name[:-len(".weight")] for name, lay in table.values()
             if name.endswith(".weight") and len(lay.groups) == 2}
  short = sorted({m.rsplit(".", 1)[-1] for m in modules})
  chosen = {m for m in linears if m.rsplit(".", 1)[-1] in short}
  return short if chosen == set(modules) else sorted(modules)


def write_adapter(params: Mapping[str, Any], spec: lora.LoraSpec, family: Any,
                  module_config: Any, out_dir: str, base_model: str,
                  base_folder: str | None = None) -> str:
  """Writes the peft folder (atomically: a temporary folder renamed into place);
  `base_folder`, a base export, is moved into it as `base/`."""
  from safetensors.numpy import save_file

  tensors, fields = peft_state_dict(params, spec, family, module_config)
  kind = ("encoder_decoder" if family.encoder_decoder else
          "decoder_only" if family.decoder_only else "")
  config = {"peft_type": "LORA", "task_type": _TASK_TYPES.get(kind),
            "base_model_name_or_path": base_model, "bias": "none", "fan_in_fan_out": False,
            "inference_mode": True, **fields}
  out_dir = os.path.abspath(out_dir)
  check_target(out_dir)
  tmp = out_dir.rstrip("/") + ".tmp-adapter"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    save_file(tensors, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
    with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, sort_keys=True)
    write_marker(tmp, family.name, lora_adapter=True)
    if base_folder is not None:
      os.rename(base_folder, os.path.join(tmp, "base"))
    if os.path.isdir(out_dir):
      shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    if base_folder is not None:
      shutil.rmtree(base_folder, ignore_errors=True)
    raise
  return out_dir


def read_adapter(folder: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(adapter_config, tensors) of a peft LoRA folder; anything else is an AdapterError."""
  from safetensors.numpy import load_file

  path = os.path.join(folder, CONFIG_FILE)
  if not os.path.isfile(path):
    raise AdapterError(f"--adapter {folder}: no {CONFIG_FILE} (not a peft adapter folder)")
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise AdapterError(f"{path}: not readable JSON ({e})") from None
  if not isinstance(config, dict) or config.get("peft_type") != "LORA":
    raise AdapterError(f"{path}: peft_type {config.get('peft_type')!r} is not LORA")
  unsupported = [k for k in ("use_dora", "lora_bias", "fan_in_fan_out") if config.get(k)]
  unsupported += [k for k in ("rank_pattern", "alpha_pattern", "layers_to_transform",
                              "target_parameters", "trainable_token_indices") if config.get(k)]
  if unsupported:
    raise AdapterError(f"{path}: {', '.join(unsupported)} is not supported (plain LoRA only)")
  weights = os.path.join(folder, WEIGHTS_FILE)
  if not os.path.isfile(weights):
    raise AdapterError(f"--adapter {folder}: no {WEIGHTS_FILE}")
  try:
    tensors = load_file(weights)
  except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
    raise AdapterError(f"{weights}: not a readable safetensors file ({e})") from None
  return config, tensors


def lora_fields(config: Mapping[str, Any], our_targets: list[str],
                our_saved: list[str]) -> dict[str, Any]:
  """The run's `lora` section for an adapter's config."""
  return {"rank": int(config["r"]), "alpha": float(config.get("lora_alpha", 8)),
          "dropout": float(config.get("lora_dropout") or 0.0),
          "use_rslora": bool(config.get("use_rslora")),
          "targets": our_targets, "modules_to_save": our_saved,
          "init": "gaussian" if config.get("init_lora_weights") == "gaussian"
                  else "kaiming_uniform"}


def adapter_targets(tensors: Mapping[str, Any], family: Any, module_config: Any
                    ) -> list[str]:
  """Our Dense module paths (per layer) that the adapter's lora_A tensors name."""
  table = _kernel_layouts(family.name, module_config)
  by_module = {name[:-len(".weight")]: path[:-len("/kernel")] for path, (name, _) in
               table.items() if path.endswith("/kernel")}
  paths = []
  for key in tensors:
    if key.endswith(".lora_A.weight"):
      module = key[len(PREFIX):-len(".lora_A.weight")]
      if module not in by_module:
        raise AdapterError(f"adapter tensor {key}: the {family.name} model has no Linear "
                           f"{module}")
      paths.append(by_module[module])
  if not paths:
    raise AdapterError("the adapter holds no lora_A tensors")
  return sorted(paths)


def saved_modules(tensors: Mapping[str, Any], family: Any, module_config: Any) -> list[str]:
  """Our module paths (per layer) of the adapter's modules_to_save tensors that hold a param
  of ours (tied copies excluded)."""
  table = _kernel_layouts(family.name, module_config)
  by_name = {name: path for path, (name, _) in table.items()}
  out = set()
  for key in tensors:
    name = key[len(PREFIX):]
    if ".lora_" in key or name in family.hf.tied:
      continue
    if name not in by_name:
      raise AdapterError(f"adapter tensor {key}: the {family.name} model has no tensor {name}")
    out.add(by_name[name].rsplit("/", 1)[0])
  return sorted(out)


def adapter_params(tensors: Mapping[str, np.ndarray], params: Mapping[str, Any],
                   spec: lora.LoraSpec, family: Any, module_config: Any) -> dict[str, Any]:
  """Our per-layer adapter (and saved embedding) leaves from peft tensors, checked against the
  run's per-layer `params` (with fresh adapters of the right shapes)."""
  flat = _per_layer(params)
  table = _kernel_layouts(family.name, module_config)
  out: dict[str, np.ndarray] = {}
  used: set[str] = set()
  for path in sorted(p[:-len("/lora_a")] for p in flat if p.endswith("/lora_a")):
    a_shape = np.shape(flat[f"{path}/lora_a"])
    b_shape = np.shape(flat[f"{path}/lora_b"])
    n_in = len(a_shape) - 1
    module, layout = _linear(path, n_in, len(np.shape(flat[f"{path}/kernel"])), table)
    outs, ins = layout.groups
    key_a, key_b = f"{PREFIX}{module}.lora_A.weight", f"{PREFIX}{module}.lora_B.weight"
    if key_a not in tensors or key_b not in tensors:
      raise AdapterError(f"the adapter has no {key_a} / lora_B for our {path}")
    la, lb = np.asarray(tensors[key_a], np.float32), np.asarray(tensors[key_b], np.float32)
    want_a = (spec.rank, int(np.prod([a_shape[i] for i in ins])))
    want_b = (int(np.prod([b_shape[k - n_in + 1] for k in outs])), spec.rank)
    for key, got, want in ((key_a, la.shape, want_a), (key_b, lb.shape, want_b)):
      if tuple(got) != want:
        raise AdapterError(f"adapter tensor {key} has shape {tuple(got)}; this base model "
                           f"needs {want} (a different base model or rank?)")
    order_a = (n_in,) + tuple(ins)
    a = la.reshape([a_shape[i] for i in order_a]).transpose(np.argsort(order_a))
    order_b = tuple(k - n_in + 1 for k in outs) + (0,)
    b = lb.reshape([b_shape[i] for i in order_b]).transpose(np.argsort(order_b))
    out[f"{path}/lora_a"], out[f"{path}/lora_b"] = a, b
    used.update((key_a, key_b))
  for path, value in flat.items():
    if path.rsplit("/", 1)[-1] in lora.ADAPTER_NAMES or not lora.is_trainable(path, value, spec):
      continue
    name, layout = table[path]
    if f"{PREFIX}{name}" not in tensors:
      continue  # not saved: the base's value stays
    x = np.asarray(tensors[f"{PREFIX}{name}"], np.float32)
    if tuple(x.shape) != layout.hf_shape(np.shape(value)):
      raise AdapterError(f"adapter tensor {PREFIX}{name} has shape {tuple(x.shape)}; this "
                         f"base model needs {layout.hf_shape(np.shape(value))}")
    out[path] = layout.to_ours(x, np.shape(value))
    used.add(f"{PREFIX}{name}")
  # Saved modules also hold copies of tensors tied to others (written by `_modules_to_save`;
  # our model ties them) and frozen members (the base's values): nothing to take from them.
  known = {f"{PREFIX}{name}" for name, _ in table.values()} | {
      f"{PREFIX}{copy}" for copy in family.hf.tied}
  unused = sorted(k for k in set(tensors) - used if ".lora_" in k or k not in known)
  if unused:
    raise AdapterError(f"adapter tensors {unused[:3]} fit no LoRA target of this run "
                       f"({len(unused)} unused)")
  return stack_layers(unflatten_params(out), params)


__all__ = ["AdapterError", "adapter_params", "adapter_targets", "lora_fields",
           "peft_state_dict", "read_adapter", "saved_modules", "write_adapter"]
