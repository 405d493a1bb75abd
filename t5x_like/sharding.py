"""Device mesh construction and the logical-axis rule table.

This is the only module that names mesh axes. Models annotate parameters and activations
with logical axis names; `RULES` maps them to mesh axes, first match wins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t5x_like.config import ConfigError, MeshConfig

MESH_AXES = ("data", "fsdp", "tensor")

# Ordered (logical axis, mesh axes) rules. Parameters: vocab/heads/mlp are split for tensor
# parallelism, embed for FSDP (ZeRO-3 style: gathered per layer in the forward pass).
# Activations: the batch is split over data and fsdp, feature dims over tensor.
RULES: tuple[tuple[str, Any], ...] = (
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    # Logits stay whole over the vocabulary: the MLM head scores only ~15% of positions, so
    # this is cheap, and vocab-sharded [B, P, V] logits gave wrong gradients in XLA's SPMD
    # partitioner on a data x fsdp x tensor mesh (tests/t5x_like/test_sharding.py).
    ("act_vocab", None),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("hidden", "tensor"),  # the output side of square [embed, embed] projections
    ("embed", "fsdp"),
    ("kv", None),
    ("layers", None),
    ("lora", None),  # LoRA's rank axis: adapters shard like their kernel's other axes
    ("position", None),
    ("type", None),
    ("relpos_buckets", None),  # T5's relative position bias table [buckets, heads]
)

BATCH_AXES = ("data", "fsdp")


def _dcn(cfg: MeshConfig) -> tuple[int, int, int]:
  return (getattr(cfg, "dcn_data", 1), getattr(cfg, "dcn_fsdp", 1), getattr(cfg, "dcn_tensor", 1))


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
  """Resolves -1 and checks that (data*dcn_data)*(fsdp*dcn_fsdp)*(tensor*dcn_tensor) equals
  the device count; returns the whole mesh's (data, fsdp, tensor)."""
  dcn = _dcn(cfg)
  slices = math.prod(dcn)
  if num_devices % slices:
    raise ConfigError(f"mesh dcn_data={dcn[0]} dcn_fsdp={dcn[1]} dcn_tensor={dcn[2]}: "
                      f"{num_devices} devices are not divisible into {slices} slices")
  per_slice = num_devices // slices
  sizes = [cfg.data, cfg.fsdp, cfg.tensor]
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if per_slice % known:
      raise ConfigError(f"mesh data={cfg.data} fsdp={cfg.fsdp} tensor={cfg.tensor}: "
                        f"{per_slice} devices{' per slice' if slices > 1 else ''} are not "
                        f"divisible by {known}")
    sizes[sizes.index(-1)] = per_slice // known
  if math.prod(sizes) != per_slice:
    raise ConfigError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs "
                      f"{math.prod(sizes)} devices{' per slice' if slices > 1 else ''}, but "
                      f"{per_slice} are available")
  return tuple(s * d for s, d in zip(sizes, dcn))  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(cfg, len(devices))
  dcn = _dcn(cfg)
  if math.prod(dcn) > 1:
    ici = tuple(s // d for s, d in zip(shape, dcn))
    # TPU slices are the granules across DCN; devices without a slice (CPU, GPU hosts) use
    # their process as the granule.
    one_slice = len({getattr(d, "slice_index", 0) for d in devices}) == 1
    by_process = one_slice and jax.process_count() > 1
    try:
      grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                  process_is_granule=by_process)
    except (AttributeError, AssertionError, ValueError, NotImplementedError) as e:
      raise ConfigError(f"mesh dcn_* > 1 needs a multi-slice TPU job (or one process per "
                        f"granule) whose layout matches (here: {jax.process_count()} process(es) "
                        f"of {devices[0].platform} devices; "
                        f"{type(e).__name__}: {str(e)[:200]})") from None
    return Mesh(grid, MESH_AXES)
  try:
    grid = mesh_utils.create_device_mesh(shape, devices)
  except (AssertionError, NotImplementedError, ValueError):
    grid = np.asarray(devices).reshape(shape)  # CPU / odd topologies: plain order
  return Mesh(grid, MESH_AXES)


def logical_to_mesh(logical_specs: Any, mesh: Mesh) -> Any:
  """Tree of logical PartitionSpecs -> tree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
  ways = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % ways:
    raise ConfigError(f"train.batch_size ({batch_size}) must be divisible by mesh data*fsdp "
                      f"({ways})")


def describe(boxed_tree: Any, mesh: Mesh) -> str:
  """One line per parameter: path, shape, logical axes and the mesh axes they map to."""
  logical = nn.get_partition_spec(boxed_tree)
  physical = logical_to_mesh(logical, mesh)
  shapes = nn.meta.unbox(boxed_tree)
  rows = []
  flat_logical = jax.tree_util.tree_flatten_with_path(
      logical, is_leaf=lambda x: isinstance(x, PartitionSpec))[0]
  flat_physical = jax.tree_util.tree_leaves(
      physical, is_leaf=lambda x: isinstance(x, NamedSharding))
  flat_shapes = jax.tree_util.tree_leaves(shapes)
  for (path, spec), sharding, leaf in zip(flat_logical, flat_physical, flat_shapes):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    rows.append(f"{name:70s} {tuple(leaf.shape)!s:22s} logical={tuple(spec)!s:36s} "
                f"mesh={tuple(sharding.spec)!s}")
  return "\n".join(rows)
