"""The layer stack every family shares: `num_layers` copies of one block, looped or scanned,
optionally rematerialised (`model.scan_layers`, `model.remat`).

Param layout: a Python loop gives children `layer_0 .. layer_{n-1}`; `scan` gives one child
`layers` whose params carry a leading axis of length n, named `layers` in their logical axes
(`t5x_like.sharding` maps it). Each layer draws its own params and dropout rngs either way,
and keeps its own slice of the "cache" collection (a decoder's keys and values).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_like.models.layers import REMAT_POLICIES


def layer_stack(block: type[nn.Module], num_layers: int, remat: str, scan: bool,
                block_kwargs: Mapping[str, Any], carry: Any, *args: Any,
                per_layer: int = 0) -> tuple[Any, Any]:
  """Runs `carry` through `num_layers` blocks; returns (carry, per-layer outputs stacked).

  Call it from a compact method: the layers become children of the calling module (see the
  module docstring for their names). Layer i runs
  `block(**block_kwargs)(carry, *args_i) -> (carry, y_i)`, where the first `per_layer` of
  `args` are arrays with a leading [num_layers] axis and layer i gets slice i (None: every
  layer gets None); the other args go to every layer whole. The second result stacks the y_i on a
  leading axis (None when the layers return None).
  """
  if remat != "none":
    if remat not in REMAT_POLICIES:
      raise ValueError(f"remat {remat!r} is not one of {['none', *REMAT_POLICIES]}")
    # scan already keeps XLA from merging the recomputation with the forward pass; a loop
    # needs prevent_cse for that, and it would only cost optimisations under scan.
    block = nn.remat(block, policy=REMAT_POLICIES[remat], prevent_cse=not scan)
  if scan:
    in_axes = tuple(0 if a is not None else nn.broadcast for a in args[:per_layer])
    # A decoder's KV cache ("cache" collection) is per layer like its params.
    scanned = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=in_axes + (nn.broadcast,) * (len(args) - per_layer),
                      length=num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
    return scanned(**block_kwargs, name="layers")(carry, *args)
  ys = []
  for i in range(num_layers):
    sliced = [None if a is None else a[i] for a in args[:per_layer]]
    carry, y = block(**block_kwargs, name=f"layer_{i}")(carry, *sliced, *args[per_layer:])
    ys.append(y)
  return carry, jax.tree_util.tree_map(lambda *y: jnp.stack(y), *ys)
