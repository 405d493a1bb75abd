"""Where each HF tensor comes from: the exporter, run on a labelled probe, read backwards.

The tensor names and layouts of a family's HuggingFace checkpoint are its exporter's own
(`Family.hf.to_hf`, e.g. `t5x_like.families.<name>.export`), not a second table kept here: a
small probe model of the same structure, every element labelled with its index, is exported
once (`layouts`), which tells for every HF tensor which of our params it holds and how its
axes were transposed / merged (`Layout`). The import (`t5x_like.hf_import`) inverts exactly
that, so an import followed by an export gives back the tensors HF saved.

Its own module because the layouts are derived from the exporter and our module's init alone
(no checkpoint, no files): they are the contract between export and import, testable on their
own. `flatten_params` / `unflatten_params` (slash-separated paths) live here as the tree form
the layouts speak; the import and the run directory use them too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one HF tensor holds one of our params.

  HF = ours transposed to the axis order `groups` flattens to, then reshaped so each HF
  axis is the product of one group of our axes (an empty group: an inserted axis of 1).
  E.g. BERT's query kernel [D, H, K] -> Linear weight [H*K, D] is groups ((1, 2), (0,)).
  """
  path: str  # slash-separated path in our per-layer param tree
  groups: tuple[tuple[int, ...], ...]

  def hf_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(np.prod([ours[a] for a in g], dtype=np.int64)) for g in self.groups)

  def to_ours(self, x: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    order = [a for g in self.groups for a in g]
    x = x.reshape([ours[a] for a in order])
    return np.ascontiguousarray(x.transpose(np.argsort(order)))

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    order = [a for g in self.groups for a in g]
    return x.transpose(order).reshape(self.hf_shape(x.shape))


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """A nested param tree as slash-separated path -> leaf (the names `Layout.path` uses)."""
  out: dict[str, Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten_params(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out


def unflatten_params(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The inverse of `flatten_params`: slash-separated paths back to a nested tree."""
  out: dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return out


def stack_layers(tree: Any, target: Any) -> Any:
  """A per-layer tree (`layer_0 .. layer_{n-1}`) in the layout of `target`: a scanned
  `layers` stack (leading layer axis) where `target` has one; only `target`'s keys."""
  if not isinstance(target, Mapping):
    return tree
  if isinstance(tree, Mapping) and "layers" in target and "layer_0" in tree:
    import jax
    n = sum(1 for k in tree if k.startswith("layer_"))
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs),
                                     *[tree[f"layer_{i}"] for i in range(n)])
    tree = {**{k: v for k, v in tree.items() if not k.startswith("layer_")},
            "layers": stacked}
  return {k: stack_layers(tree[k], target[k]) for k in target if k in tree}


def unstack_layers(tree: Any) -> Any:
  """The inverse of `stack_layers`: every scanned `layers` stack as `layer_0 ..` subtrees
  (numpy), the per-layer layout the layouts speak."""
  if not isinstance(tree, Mapping):
    return tree
  out = {}
  for key, value in tree.items():
    if key == "layers" and isinstance(value, Mapping):
      import jax
      n = int(np.shape(jax.tree_util.tree_leaves(value)[0])[0])
      for i in range(n):
        out[f"layer_{i}"] = jax.tree_util.tree_map(lambda x, i=i: np.asarray(x)[i], value)
    else:
      out[key] = unstack_layers(value)
  return out


@functools.lru_cache(maxsize=32)
def param_shapes(family: str, config: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
  """Our per-layer param paths -> (shape, dtype), by tracing the module's init (no compute)."""
  import flax.core.meta
  import jax
  import jax.numpy as jnp

  from t5x_like import families

  fam = families.get(family)
  config = dataclasses.replace(config, scan_layers=False, remat="none")
  ids = jnp.zeros((1, 4), jnp.int32)
  abstract = jax.eval_shape(lambda rng: fam.build(config).init(rng, *(ids,) * fam.init_args),
                            jax.random.key(0))
  flat = flatten_params(flax.core.meta.unbox(abstract)["params"])
  return {k: (tuple(v.shape), v.dtype) for k, v in flat.items()}


@functools.lru_cache(maxsize=32)
def layouts(family: str, config: Any) -> dict[str, Layout]:
  """HF tensor name -> Layout, read off the exporter run on a probe model.

  The probe keeps `config`'s layer counts and flags and shrinks every size; each element
  holds its own global index (exact in float32), so each exported tensor shows which of our
  params it came from and where every element went.
  """
  from t5x_like import families

  fam = families.get(family)
  probe = dataclasses.replace(config, **fam.hf.probe, dtype="float32", param_dtype="float32")
  shapes = param_shapes(family, probe)
  paths = sorted(shapes)
  sizes = [int(np.prod(shapes[p][0], dtype=np.int64)) for p in paths]
  starts = np.concatenate([[0], np.cumsum(sizes)])
  if starts[-1] >= 2 ** 24:
    raise RuntimeError(f"probe too large ({starts[-1]} elements) for exact float32 labels")
  flat = {p: np.arange(starts[i], starts[i + 1], dtype=np.float32).reshape(shapes[p][0])
          for i, p in enumerate(paths)}
  exported = fam.hf.to_hf(unflatten_params(flat), probe)
  out: dict[str, Layout] = {}
  for name, tensor in exported.items():
    labels = np.asarray(tensor).astype(np.int64)
    i = int(np.searchsorted(starts, labels.min(), side="right")) - 1
    path, shape = paths[i], shapes[paths[i]][0]
    local = labels - starts[i]
    if labels.size != sizes[i] or local.min() < 0 or local.max() >= sizes[i]:
      raise RuntimeError(f"exporter tensor {name} is not exactly one of our params")
    coords = np.unravel_index(local, shape)  # per HF element: its index along each our axis
    groups = []
    for axis in range(labels.ndim):
      varying = tuple(a for a in range(len(shape))
                      if np.ptp(coords[a], axis=axis).max(initial=0) > 0)
      groups.append(varying)
    layout = Layout(path, tuple(groups))
    if sorted(a for g in groups for a in g) != list(range(len(shape))) or not np.array_equal(
        layout.to_hf(flat[path]).astype(np.int64), labels):
      raise RuntimeError(f"exporter tensor {name}: layout of {path} {shape} -> "
                         f"{labels.shape} is not a transpose + reshape")
    out[name] = layout
  used = {lay.path for lay in out.values()}
  if used != set(paths) or len(used) != len(out):
    raise RuntimeError(f"the {family} exporter does not map our params one to one "
                       f"(unmapped: {sorted(set(paths) - used)})")
  return out


__all__ = ["Layout", "flatten_params", "layouts", "param_shapes", "stack_layers",
           "unflatten_params", "unstack_layers"]
