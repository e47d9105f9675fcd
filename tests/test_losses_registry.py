"""diml_jax.losses.registry and the configs: every config builds its loss, the registry's
losses are the library's functions, DIML is refused where it cannot apply."""
import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import baselines, common
from diml_jax import experiment, losses, miners, train_lib
from diml_jax.losses import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
LABELS = jnp.array([0, 0, 1, 1, 2, 2, 3, 3])
N_CLASSES = 4


def load(path) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny_batch(config, seed=0):
  """Embeddings ``[8, d]`` and aux (local parts, groups, part weights) shaped as the model's."""
  rng = np.random.default_rng(seed)
  dim = experiment.embedding_dim(config)
  # In an 8-d subspace, so that similarities spread alike whatever the embedding size.
  local = 0.5 * rng.normal(size=(N_CLASSES, 4, 8))[LABELS] + rng.normal(size=(8, 4, 8))
  basis = np.linalg.qr(rng.normal(size=(dim, 8)))[0].T  # [8, dim], orthonormal rows
  local = jnp.asarray(local @ basis, jnp.float32)
  g = local.mean(1)
  if config.model.normalize:
    g = g / jnp.linalg.norm(g, axis=1, keepdims=True)
  groups = jnp.stack([g[:, :dim]] * config.model.num_groups, axis=1)
  aux = {"local": local, "groups": groups, "part_weights": jnp.full((8, 4), 0.25)}
  return g, aux


CONFIGS = {os.path.basename(p)[:-3]: p for p in CONFIG_FILES
           if os.path.basename(p) not in ("common.py", "baselines.py", "saved.py")}


def test_configs_cover_every_baseline_recipe_on_three_data_sets_and_the_sizes():
  for data in common.DATASETS:
    for recipe in baselines.RECIPES:
      assert f"{data}_{recipe}" in CONFIGS
  for data in ("cub", "cars"):
    for recipe in ("margin", "multisimilarity"):
      for size in (64, 512):
        assert load(CONFIGS[f"{data}_{recipe}_{size}"]).model.embed_dim == size
  assert len(baselines.RECIPES) == 18
  # A few of the published scripts' settings, read from them by hand.
  sop_softtriple = load(CONFIGS["sop_softtriple"])
  assert (sop_softtriple.batch_size, sop_softtriple.optimizer.lr,
          sop_softtriple.loss.softtriple.gamma) == (32, 0.1, 10.0)
  assert load(CONFIGS["sop_histogram"]).loss.histogram.num_bins == 11
  assert load(CONFIGS["cub_histogram"]).loss.histogram.num_bins == 65
  assert load(CONFIGS["cars_margin_b06"]).loss.margin.beta == 0.6
  assert load(CONFIGS["sop_npair"]).num_epochs == 100
  assert not load(CONFIGS["cub_angular"]).model.normalize
  assert load(CONFIGS["cub_triplet_softhard"]).loss.miner == "softhard"


def _loss_signature(config):
  """What decides the loss's code path (values such as beta or the bins only change numbers)."""
  c = config.loss
  return (c.name, c.miner if registry.LOSSES[c.name].miners else "", c.diml, config.matching.marginals,
          config.model.head, config.model.normalize)


@pytest.mark.slow
def test_every_config_builds_its_loss_and_optimiser():
  """Every config passes the registry's check; the loss's parameters, one forward (and
  gradient) on a tiny batch and one optimiser update run once per distinct code path."""
  seen = set()
  for name, path in CONFIGS.items():
    config = load(path)
    registry.check(config)
    if _loss_signature(config) in seen:
      continue
    seen.add(_loss_signature(config))
    model = {"head": {"w": jnp.ones((2,))}}
    if config.model.head == "grouping":  # DGML's queries may have their own weight decay
      model = {"grouping": {"queries": jnp.ones((2,)), "values": {"w": jnp.ones((2,))}}}
    params = {"model": model,
              "loss": registry.init_params(config, jax.random.key(0), N_CLASSES,
                                           experiment.embedding_dim(config))}
    loss_fn = train_lib.make_loss(config, None)
    g, aux = tiny_batch(config)
    value, grads = jax.jit(jax.value_and_grad(
        lambda p, e: loss_fn(p, e, aux, LABELS, jax.random.key(1)).loss, argnums=(0, 1)))(
            params["loss"], g)
    assert np.isfinite(float(value)) and float(value) > 0, name
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(grads)), name
    tx = experiment.make_optimizer(config, params, steps_per_epoch=10)
    updates, _ = tx.update({"model": params["model"], "loss": grads[0]}, tx.init(params),
                           params)
    assert jax.tree.structure(updates) == jax.tree.structure(params), name
  assert len(seen) >= 22


def test_loss_params_get_their_published_learning_rates():
  """Adam's first step moves each parameter by its learning rate (sign of the gradient)."""
  cases = {  # loss: (parameter, expected first-step size with optimizer.lr = 1e-5)
      "margin": ("beta", 5e-4), "proxynca": ("proxies", 50 * 1e-5),
      "softtriple": ("centroids", 1e-5), "arcface": ("class_weights", 5e-4),
      "softmax": ("class_weights", 1e-5), "proxyanchor": ("proxies", 100 * 1e-5),
  }
  for loss, (name, lr) in cases.items():
    config = common.paper("cub", loss, diml=False)
    config.optimizer.weight_decay = 0.0
    params = {"model": {"head": {"w": jnp.ones((2,))}},
              "loss": registry.init_params(config, jax.random.key(0), N_CLASSES, 8)}
    assert set(params["loss"]) == {name}
    grads = jax.tree.map(jnp.ones_like, params)
    tx = experiment.make_optimizer(config, params, steps_per_epoch=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(np.abs(np.asarray(updates["loss"][name])), lr, rtol=1e-3)
    np.testing.assert_allclose(np.abs(np.asarray(updates["model"]["head"]["w"])), 1e-5,
                               rtol=1e-3)


@pytest.mark.parametrize("head, per_group, shape", [
    ("grouping", True, (3, N_CLASSES, 8)), ("grouping", False, (N_CLASSES, 8)),
    ("embedding", True, (N_CLASSES, 8))])
def test_dgml_groups_get_their_own_loss_params_unless_shared(head, per_group, shape):
  """loss.per_group_params: one set per group, each drawn from its own key (proxies),
  stacked on a leading group axis; the embedding head has no groups."""
  config = common.paper("cub", "proxyanchor", diml=False)
  config.model.head, config.loss.per_group_params = head, per_group
  assert registry.per_group(config) == (head == "grouping" and per_group)
  proxies = np.asarray(registry.init_params(config, jax.random.key(0), N_CLASSES, 8)["proxies"])
  assert proxies.shape == shape
  if len(shape) == 3:
    assert np.abs(proxies[0] - proxies[1]).min() > 0 and np.abs(proxies[1] - proxies[2]).min() > 0
  config.loss.name = "margin"
  beta = registry.init_params(config, jax.random.key(0), N_CLASSES, 8)["beta"]
  np.testing.assert_array_equal(beta, np.full(shape[:-1], 1.2, np.float32))


def test_registry_losses_are_the_library_functions_on_the_mined_tuples():
  """The registry composes the miners and losses as the published criteria do."""
  config = common.paper("cub", "triplet", diml=False)
  g, aux = tiny_batch(config)
  key = jax.random.key(2)
  d = losses.euclidean_distance(g)
  expected = {
      ("triplet", "semihard"): losses.triplet_loss(
          d, LABELS, triplets=miners.semihard(key, d, LABELS).triplets, squared=True,
          reduction="mean"),
      ("triplet", "random"): losses.triplet_loss(
          d, LABELS, triplets=miners.random_triplets(key, LABELS), squared=True,
          reduction="mean"),
      ("margin", "distance"): losses.margin_global(g, LABELS, losses.init_beta(4, 0.6), key),
      ("histogram", "distance"): losses.histogram_loss(losses.cosine_similarity(g), LABELS),
      ("npair", "distance"): losses.npair_loss(g, LABELS, pairs=miners.npair(key, LABELS)),
  }
  for (name, miner), want in expected.items():
    config.loss.name, config.loss.miner, config.loss.margin.beta = name, miner, 0.6
    params = registry.init_params(config, jax.random.key(0), N_CLASSES, g.shape[1])
    got = registry.build(config, None)(params, g, aux, LABELS, key)
    np.testing.assert_allclose(got.loss, want.loss, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", [n for n, e in registry.LOSSES.items() if not e.no_diml])
def test_diml_capable_losses_run_on_the_structural_quantity(name):
  """With loss.diml the pair losses see DIML's matrix: equal to the loss on
  structural_matrix (or on structural_partners' picked distances)."""
  config = common.paper("cub", name, diml=True)
  g, aux = tiny_batch(config, seed=3)
  params = registry.init_params(config, jax.random.key(0), N_CLASSES, g.shape[1])
  key = jax.random.key(4)
  got = registry.build(config, None)(params, g, aux, LABELS, key)
  config.loss.diml = False
  options = losses.StructuralOptions(solver=registry.matching_options(config))
  sim = losses.structural_matrix(aux["local"], g, quantity="similarity", structural=options)
  dist = losses.structural_matrix(aux["local"], g, quantity="distance", structural=options)
  pairs = registry.PairQuantities(config, None, "data")
  pairs.similarity = lambda *_: sim
  pairs.distance = lambda *_: dist
  pairs.partner_distance = lambda _g, _aux, partners: jnp.take_along_axis(dist, partners, 1)
  want = registry.LOSSES[name].build(config.loss, pairs)(params, g, aux, LABELS, key)
  assert float(got.loss) > 0
  np.testing.assert_allclose(got.loss, want.loss, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("name", [n for n, e in registry.LOSSES.items() if e.no_diml])
def test_check_config_refuses_diml_for_losses_that_cannot_use_it(name):
  config = common.paper("cub", name, diml=True)
  with pytest.raises(ValueError, match=rf"config.loss.diml=True: the '{name}' loss .*"
                                       rf"--config.loss.diml=False"):
    experiment.check_config(config)


def test_check_config_names_a_miner_the_loss_does_not_take():
  config = common.paper("cub", "margin", diml=False)
  config.loss.miner = "random"
  with pytest.raises(ValueError, match=r"config.loss.miner='random' is not one of"):
    experiment.check_config(config)
