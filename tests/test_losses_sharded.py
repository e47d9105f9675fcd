"""Losses with the batch sharded over 8 CPU devices equal the single-device losses.

tests/conftest.py gives the process 8 CPU devices. The same jitted program runs once with
the batch on one device (``mesh=None``) and once split over a ``("data",)`` mesh, where each
device matches its rows against the all-gathered batch; values and gradients must agree
to 1e-5, and the compiled per-device program must hold 1/8 of the matching problems.

Compiling the matching of every loss is most of the time these tests take, so the
default tier checks a core set (each sharded path of the structural quantities once:
the batch against itself, against its picked partners, against proxies, with part
weights and partial mass, and every loss fed by those matrices) on the ``Auto`` mesh
training uses; the slow tier checks every loss, on both mesh types.
"""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from diml_jax import losses

B, R, C, R_PROXY = 16, 4, 8, 3
N_DEVICES = 8
LABELS = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5, 6, 7, 7])  # class 6: one image


def core_losses(x, beta, proxies, proxy_parts, mesh):
  """Each sharded structural path once, and every loss on its matrices, as ``[n]``."""
  labels = jnp.asarray(LABELS)
  key = jax.random.key(0)
  shard = losses.StructuralOptions(mesh=mesh, axis_name="data")
  g = x.mean(1)
  distance = losses.structural_matrix(x, quantity="distance", structural=shard)
  similarity = losses.structural_matrix(x, quantity="similarity", structural=shard)
  w, w_proxy = jax.nn.sigmoid(x[..., 0]), jax.nn.sigmoid(proxy_parts[..., 0])
  values = [
      losses.margin_diml(x, labels, beta, key, structural=shard),  # matrix and picked partners
      losses.margin_global(g, labels, beta, key),
      losses.multi_similarity_loss(similarity, labels),
      losses.multi_similarity_loss(losses.cosine_similarity(g), labels),
      losses.triplet_loss(distance, labels),
      losses.contrastive_loss(distance, labels, neg_margin=1.2),
      losses.proxy_anchor_loss(losses.proxy_similarity(g, proxies), labels),
      # Part weights (as a ViT's rollout gives) and partial similarity against proxies:
      # the weights are split and gathered with the parts.
      losses.proxy_anchor_loss(losses.structural_matrix(
          x, y=proxy_parts, quantity="similarity",
          structural=shard.replace(marginals=(w, w_proxy), mass=0.6)), labels),
  ]
  return jnp.stack([v.loss for v in values])


def all_losses(x, beta, proxies, proxy_parts, mesh):
  """Every loss, global and DIML, as one vector ``[n]`` (mesh=None: no sharding)."""
  labels = jnp.asarray(LABELS)
  key = jax.random.key(0)
  shard = losses.StructuralOptions(mesh=mesh, axis_name="data")
  values = [
      losses.multi_similarity_diml(x, labels, structural=shard),
      losses.proxy_anchor_loss(losses.structural_matrix(
          x, y=proxy_parts, quantity="similarity", structural=shard), labels),
  ]
  weighted = shard.replace(marginals=jax.nn.sigmoid(x[..., 0]), mass=0.6)
  values += [
      losses.margin_diml(x, labels, beta, key, structural=weighted),
      losses.multi_similarity_diml(x, labels, structural=weighted),
  ]
  return jnp.concatenate([core_losses(x, beta, proxies, proxy_parts, mesh),
                          jnp.stack([v.loss for v in values])])


LOSS_SETS = {"core": core_losses, "all": all_losses}


def values_and_jacobians(fn, mesh):
  f = lambda *args: fn(*args, mesh=mesh)
  return lambda *args: (f(*args), jax.jacrev(f, argnums=(0, 1, 2, 3))(*args))


@functools.cache
def run(loss_set: str, mesh: str):
  """(outputs, compiled HLO text) of ``loss_set`` on one device (``mesh="single"``) or on
  an 8-device mesh of axis type ``Explicit`` (``jax.make_mesh``'s default: shardings are
  part of the array types) or ``Auto`` (the compiler propagates shardings from the
  inputs'). Cached: each program is compiled once per session."""
  cpus = jax.devices("cpu")  # CPU devices whatever the default backend, for one backend
  assert len(cpus) == N_DEVICES
  rng = np.random.default_rng(0)
  proto = rng.normal(size=(B // 2, R, C))
  x = (proto[LABELS] + 0.8 * rng.normal(size=(B, R, C)) + rng.normal(size=C)).astype(np.float32)
  args = [jnp.asarray(x), jnp.linspace(1.0, 1.3, B // 2),
          jnp.asarray(rng.normal(size=(B // 2, C)), jnp.float32),
          jnp.asarray(rng.normal(size=(B // 2, R_PROXY, C)), jnp.float32)]
  m = None
  if mesh != "single":
    kind = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}[mesh]
    m = jax.make_mesh((N_DEVICES,), ("data",), axis_types=(kind,), devices=cpus)
  run_args = [jax.device_put(a, cpus[0]) for a in args]
  if m is not None:  # the batch split by rows; parameters replicated
    run_args[0] = jax.device_put(args[0], NamedSharding(m, P("data")))
    run_args[1:] = [jax.device_put(a, NamedSharding(m, P())) for a in args[1:]]
  compiled = jax.jit(values_and_jacobians(LOSS_SETS[loss_set], m)).lower(*run_args).compile()
  return jax.tree.map(np.asarray, compiled(*run_args)), compiled.as_text()


# Default tier: the core set on the Auto mesh; the slow tier: the rest.
CASES = [("core", "auto"),
         pytest.param("core", "explicit", marks=pytest.mark.slow),
         pytest.param("all", "auto", marks=pytest.mark.slow),
         pytest.param("all", "explicit", marks=pytest.mark.slow)]


@pytest.mark.parametrize("loss_set, mesh", CASES)
def test_sharded_losses_and_gradients_equal_single_device(loss_set, mesh):
  (single_values, single_jac), _ = run(loss_set, "single")
  (sharded_values, sharded_jac), _ = run(loss_set, mesh)
  assert np.all(single_values > 0)
  np.testing.assert_allclose(sharded_values, single_values, rtol=1e-5, atol=1e-5)
  for name, a, b in zip(["x", "beta", "proxies", "proxy parts"], sharded_jac, single_jac):
    assert np.abs(b).max() > 1e-3, name
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def _shapes(hlo: str, r1: int, r2: int) -> set[tuple[int, int]]:
  """Leading dims of the f32[q, k, r1, r2] tensors: the tiles of matching problems."""
  return {(int(q), int(k)) for q, k in re.findall(rf"f32\[(\d+),(\d+),{r1},{r2}\]", hlo)}


@pytest.mark.parametrize("loss_set, mesh", CASES)
def test_each_device_solves_an_eighth_of_the_matching_problems(loss_set, mesh):
  """Tiles of part similarities (one r x r problem each) in the compiled programs.

  One device: the batch against itself (16 x 16), against its 2 picked partners (16 x 2)
  and against the 8 part proxies (16 x 8). Per device on the mesh: its 2 rows only.
  """
  single, sharded = run(loss_set, "single")[1], run(loss_set, mesh)[1]
  rows = B // N_DEVICES
  assert {(B, B), (B, 2)} <= _shapes(single, R, R)
  assert (B, B // 2) in _shapes(single, R, R_PROXY)
  assert {(rows, B), (rows, 2)} <= _shapes(sharded, R, R)
  assert (rows, B // 2) in _shapes(sharded, R, R_PROXY)
  full = {(B, B), (B, 2), (B, B // 2)}
  assert not full & (_shapes(sharded, R, R) | _shapes(sharded, R, R_PROXY))
  assert "all-gather" in sharded and "all-gather" not in single


# --- the baseline losses of the registry, on global embeddings sharded by rows ----------------
def baseline_losses(g, params, mesh):
  """Every registry loss that runs on global embeddings, ``[n]``, built from the configs."""
  from configs import common  # pylint: disable=g-import-not-at-top
  from diml_jax.losses import registry  # pylint: disable=g-import-not-at-top
  values = []
  for name, miner in BASELINES:
    config = common.paper("cub", name, diml=False)
    config.loss.miner = miner
    fn = registry.build(config, mesh)
    values.append(fn(params[name], g, {}, jnp.asarray(LABELS), jax.random.key(1)).loss)
  return jnp.stack(values)


BASELINES = [("npair", ""), ("angular", ""), ("lifted", ""), ("histogram", ""),
             ("proxynca", ""), ("softtriple", ""), ("arcface", ""), ("softmax", ""),
             ("triplet", "random"), ("triplet", "semihard"), ("triplet", "softhard"),
             ("quadruplet", "distance"), ("snr", "distance"), ("contrastive", "distance"),
             ("margin", "distance")]


@pytest.mark.parametrize("kind", [AxisType.Auto,  # training's mesh; Explicit: slow tier
                                  pytest.param(AxisType.Explicit, marks=pytest.mark.slow)])
def test_sharded_baseline_losses_and_gradients_equal_single_device(kind):
  from configs import common  # pylint: disable=g-import-not-at-top
  from diml_jax.losses import registry  # pylint: disable=g-import-not-at-top
  cpus = jax.devices("cpu")
  rng = np.random.default_rng(1)
  g = (rng.normal(size=(B // 2, C))[LABELS] + rng.normal(size=(B, C))).astype(np.float32)
  params = {name: registry.init_params(common.paper("cub", name, diml=False),
                                       jax.random.key(2), B // 2, C)
            for name, _ in BASELINES}
  f = lambda mesh: jax.jit(lambda g, p: (baseline_losses(g, p, mesh),
                                         jax.jacrev(baseline_losses)(g, p, mesh)))
  single = jax.tree.map(np.asarray, f(None)(jax.device_put(g, cpus[0]),
                                            jax.device_put(params, cpus[0])))
  mesh = jax.make_mesh((N_DEVICES,), ("data",), axis_types=(kind,), devices=cpus)
  sharded = jax.tree.map(np.asarray, f(mesh)(
      jax.device_put(g, NamedSharding(mesh, P("data"))),
      jax.device_put(params, NamedSharding(mesh, P()))))
  assert np.all(single[0] > 0)
  np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(sharded[1]), jax.tree.leaves(single[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
