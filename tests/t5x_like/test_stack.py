"""models/stack.py: the shared layer stack (loop or scan, remat), on a toy block."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.models import layers
from t5x_like.models.stack import layer_stack

N, B, D = 3, 2, 4


class _Block(nn.Module):
  """carry -> carry * w + bias (+ this layer's memory); y = the carry's sum, per row."""
  scale: float

  @nn.compact
  def __call__(self, x_BD, mem_BD, bias_D):
    w = self.param("w", layers.logical(nn.initializers.normal(1.0), ("embed",)), (D,))
    x_BD = x_BD * w * self.scale + bias_D
    if mem_BD is not None:
      x_BD = x_BD + mem_BD
    return x_BD, x_BD.sum(-1)


class _Stack(nn.Module):
  remat: str = "none"
  scan: bool = False

  @nn.compact
  def __call__(self, x_BD, mems_NBD, bias_D):
    return layer_stack(_Block, N, self.remat, self.scan, {"scale": 0.5}, x_BD, mems_NBD,
                       bias_D, per_layer=1)


def _inputs():
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.standard_normal((B, D)), jnp.float32),
          jnp.asarray(rng.standard_normal((N, B, D)), jnp.float32),
          jnp.asarray(rng.standard_normal((D,)), jnp.float32))


def _loop_params():
  x, mems, bias = _inputs()
  return nn.meta.unbox(_Stack().init(jax.random.key(0), x, mems, bias))


def test_param_names_and_logical_axes():
  x, mems, bias = _inputs()
  loop = _Stack().init(jax.random.key(0), x, mems, bias)["params"]
  assert sorted(loop) == ["layer_0", "layer_1", "layer_2"]
  scanned = _Stack(scan=True).init(jax.random.key(0), x, mems, bias)["params"]
  assert list(scanned) == ["layers"]
  assert scanned["layers"]["w"].names == ("layers", "embed")
  assert scanned["layers"]["w"].value.shape == (N, D)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
@pytest.mark.parametrize("with_mems", [True, False])
def test_scan_and_remat_match_the_loop(remat, with_mems):
  x, mems, bias = _inputs()
  mems = mems if with_mems else None
  loop_params = _loop_params()["params"]
  stacked = {"layers": jax.tree_util.tree_map(
      lambda *ws: jnp.stack(ws), *[loop_params[f"layer_{i}"] for i in range(N)])}
  want_x, want_y = _Stack().apply({"params": loop_params}, x, mems, bias)
  assert want_y.shape == (N, B)
  for scan, params in ((False, loop_params), (True, stacked)):
    got_x, got_y = _Stack(remat, scan).apply({"params": params}, x, mems, bias)
    np.testing.assert_allclose(got_x, want_x, rtol=1e-6)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-6)


def test_layers_returning_none_give_none():
  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x_BD):
      return nn.Dense(D)(x_BD), None

  class Stack(nn.Module):
    scan: bool

    @nn.compact
    def __call__(self, x_BD):
      return layer_stack(Plain, N, "none", self.scan, {}, x_BD)

  x = _inputs()[0]
  for scan in (False, True):
    out, ys = Stack(scan).init_with_output(jax.random.key(0), x)[0]
    assert out.shape == (B, D) and ys is None


def test_unknown_remat_is_an_error_listing_the_policies():
  x, mems, bias = _inputs()
  with pytest.raises(ValueError, match="'none', 'full', 'dots'"):
    _Stack(remat="everything").init(jax.random.key(0), x, mems, bias)
