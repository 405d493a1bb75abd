"""config.json of a HuggingFace xlnet checkpoint -> our module config (the inverse of the
exporter's `hf_config_dict`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from t5x_like import hf_config as hfc
from t5x_like.families.xlnet import export as xlnet_export
from t5x_like.families.xlnet.model import XLNetConfig


def config_from_hf(hf: Mapping[str, Any], notes: list[str]) -> Any:
  if hfc.get(hf, "attn_type", "bi") != "bi":
    raise hfc.HFImportError(f"config.json: attn_type {hf['attn_type']!r} is not supported "
                            "(ours: bi)")
  d, h = hfc.integer(hf, "d_model", 1024), hfc.integer(hf, "n_head", 16)
  if h < 1 or d % h or ("d_head" in hf and hfc.integer(hf, "d_head", 0) != d // h):
    raise hfc.HFImportError(f"config.json: d_head {hf.get('d_head')} must equal d_model / n_head "
                            f"({d} / {h})")
  unused = {k: hf[k] for k in ("mem_len", "reuse_len") if hf.get(k)}
  if hf.get("bi_data"):
    unused["bi_data"] = True
  if unused:
    notes.append(f"{', '.join(f'{k}={v}' for k, v in unused.items())} not carried into the "
                 "run config: memory and bi_data are pretraining choices (model.mem_len, "
                 "model.reuse_len, model.bi_data come from --config or overrides)")
  try:
    return XLNetConfig(
        vocab_size=hfc.integer(hf, "vocab_size", 32000), hidden_size=d,
        num_layers=hfc.integer(hf, "n_layer", 24), num_heads=h,
        intermediate_size=hfc.integer(hf, "d_inner", 4096),
        hidden_act=hfc.activation("ff_activation", hfc.get(hf, "ff_activation", "gelu"),
                                  xlnet_export._HF_ACTIVATIONS),
        layer_norm_eps=float(hfc.get(hf, "layer_norm_eps", 1e-12)),
        dropout_rate=float(hfc.get(hf, "dropout", 0.1)),
        initializer_range=float(hfc.get(hf, "initializer_range", 0.02)),
        clamp_len=hfc.integer(hf, "clamp_len", -1))
  except ValueError as e:
    raise hfc.HFImportError(f"config.json: {e}") from None
