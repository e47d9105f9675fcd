"""Training on cached feature maps: the same parameters as through the frozen backbone,
a cache that is reused and invalidated by its key, batches that are functions of
(seed, step), and a whole run of train.py's path on the synthetic set."""
import dataclasses
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from diml_jax import data, eval_lib, experiment, feature_cache, models, train_lib
from diml_jax.data import dataset as dataset_lib
from diml_jax.data import sampler
from diml_jax.experiment import TrainState
from test_train import single_axis_mesh, tiny_config


def frozen_config(**overrides):
  return tiny_config(**{"model.freeze_backbone": True, "data.image_size": 32,
                        "data.resize_size": 32, **overrides})


def setup(config, split="train"):
  dataset = data.load("synthetic", split)
  model = experiment.build_model(config)
  params, batch_stats = experiment.init_variables(config, model, 8)
  return dataset, model, params, batch_stats


def state_of(params, batch_stats, tx, mesh):
  return experiment.replicate(TrainState(step=np.int32(0), params=params,
                                         batch_stats=batch_stats, opt_state=tx.init(params)),
                              mesh)


@pytest.mark.parametrize("loss", [
    "multisimilarity", pytest.param("margin", marks=pytest.mark.slow)])
def test_training_on_cached_maps_equals_training_through_the_frozen_backbone(tmp_path, loss):
  """Same batches, no augmentation: the head's (and the margin loss's beta) parameters
  agree to float tolerance after a few steps, and the backbone's never change."""
  config = frozen_config(**{"loss.name": loss})
  mesh = single_axis_mesh(1)
  train_set, model, params, batch_stats = setup(config)
  tx = experiment.make_optimizer(config, params, steps_per_epoch=10)
  loss_fn = train_lib.make_loss(config, None)
  variables = {"params": params["model"], "batch_stats": batch_stats}
  maps = feature_cache.load_or_embed(config, model, variables, train_set, mesh,
                                     directory=tmp_path)
  through_step = train_lib.make_train_step(model, loss_fn, tx, mesh)
  cached_step = train_lib.make_train_step(model, loss_fn, tx, mesh, cached_features=True)
  through = state_of(params, batch_stats, tx, mesh)
  cached = state_of(params, batch_stats, tx, mesh)
  index = sampler.class_index(train_set.labels)
  sharding = NamedSharding(mesh, P("data"))
  batches = feature_cache.train_batches(maps, batch_size=16, images_per_class=2, seed=0,
                                        start_step=0, num_steps=4)
  for step, batch in enumerate(batches):
    # The image path's batch of this step, with the test transform (no augmentation).
    indices = sampler.batch_indices(index, step=step, seed=0, batch_size=16)
    images = next(iter(data.eval_iterator(
        train_set.subset(indices), batch_size=16, image_size=32, resize_size=32,
        normalization=experiment.normalization(model), num_workers=0)))
    np.testing.assert_array_equal(batch["label"], images["label"])
    key = jax.random.key(step)
    through, m_through = through_step(
        through, jax.device_put({"image": images["image"], "label": images["label"]},
                                sharding), key)
    cached, m_cached = cached_step(cached, jax.device_put(batch, sharding), key)
    assert np.isfinite(float(m_cached["loss"]))
    np.testing.assert_allclose(float(m_cached["loss"]), float(m_through["loss"]), rtol=1e-5)
  through, cached = jax.device_get((through.params, cached.params))
  assert not np.allclose(cached["model"]["embedding"]["kernel"],
                         params["model"]["embedding"]["kernel"])  # it trained
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               through, cached)
  jax.tree.map(np.testing.assert_array_equal, cached["model"]["backbone"],
               jax.device_get(params["model"]["backbone"]))
  if loss == "margin":
    assert not np.allclose(cached["loss"]["beta"], params["loss"]["beta"])


def test_cache_is_reused_and_invalidated_by_its_key(tmp_path):
  config = frozen_config()
  mesh = single_axis_mesh(1)
  test_set, model, params, batch_stats = setup(config, "test")
  variables = {"params": params["model"], "batch_stats": batch_stats}
  first = feature_cache.load_or_embed(config, model, variables, test_set, mesh,
                                      directory=tmp_path)
  side = first.feature_map.shape[1]
  assert first.feature_map.shape[:3] == (len(test_set), side, side) and first.kept.all()
  # Reused: the same paths with undecodable bytes would embed to nothing but warnings.
  garbage = dataset_lib.InMemory((b"not an image",) * len(test_set),
                                 tuple(test_set.images.describe(i) for i in range(len(test_set))))
  again = feature_cache.load_or_embed(config, model, variables,
                                      dataclasses.replace(test_set, images=garbage), mesh,
                                      directory=tmp_path)
  np.testing.assert_array_equal(again.feature_map, first.feature_map)
  assert len(os.listdir(tmp_path)) == 1
  # Invalidated by the image size, the weights and the images (paths).
  bigger = frozen_config(**{"data.image_size": 64, "data.resize_size": 64})
  resized = feature_cache.load_or_embed(bigger, model, variables, test_set, mesh,
                                        directory=tmp_path)
  assert resized.feature_map.shape[1] == 2 * side
  other_seed = frozen_config(seed=1)
  _, _, other_params, _ = setup(other_seed, "test")
  reweighted = feature_cache.load_or_embed(
      other_seed, model, {"params": other_params["model"], "batch_stats": batch_stats},
      test_set, mesh, directory=tmp_path)
  assert not np.allclose(reweighted.feature_map, first.feature_map)
  fewer = feature_cache.load_or_embed(config, model, variables, test_set.subset(range(10)),
                                      mesh, directory=tmp_path)
  assert len(fewer.labels) == 10
  assert len(os.listdir(tmp_path)) == 4  # and no partial directory left behind
  # The head on cached test maps gives what evaluation gets from the images.
  from_maps = feature_cache.embeddings(model, variables, first, mesh, batch_size=16)
  from_images = eval_lib.embed(config, model, variables, test_set, mesh)
  np.testing.assert_allclose(from_maps.global_, from_images.global_, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(from_maps.local, from_images.local, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(from_maps.labels, from_images.labels)


def test_dgml_head_on_cached_maps_equals_it_on_the_images(tmp_path):
  config = frozen_config(**{"model.head": "grouping", "model.embed_dim": 48,
                            "loss.diml": False, "eval.ks": (0,)})
  mesh = single_axis_mesh(1)
  test_set, model, params, batch_stats = setup(config, "test")
  variables = {"params": params["model"], "batch_stats": batch_stats}
  maps = feature_cache.load_or_embed(config, model, variables, test_set, mesh,
                                     directory=tmp_path)
  from_maps = feature_cache.embeddings(model, variables, maps, mesh, batch_size=16)
  from_images = eval_lib.embed(config, model, variables, test_set, mesh)
  assert from_maps.local is None and from_maps.global_.shape == (len(test_set), 48)
  np.testing.assert_allclose(from_maps.global_, from_images.global_, rtol=1e-5, atol=1e-6)


def test_batches_are_functions_of_seed_and_step(tmp_path):
  config = frozen_config()
  train_set, model, params, batch_stats = setup(config)
  maps = feature_cache.load_or_embed(
      config, model, {"params": params["model"], "batch_stats": batch_stats}, train_set,
      single_axis_mesh(1), directory=tmp_path)
  kwargs = dict(batch_size=16, images_per_class=2, seed=3)
  straight = list(feature_cache.train_batches(maps, start_step=0, num_steps=6, **kwargs))
  resumed = list(feature_cache.train_batches(maps, start_step=4, num_steps=2, **kwargs))
  jax.tree.map(np.testing.assert_array_equal, straight[4:], resumed)
  halves = [next(feature_cache.train_batches(maps, start_step=5, num_steps=1,
                                             process_index=p, process_count=2, **kwargs))
            for p in (0, 1)]
  jax.tree.map(lambda whole, *parts: np.testing.assert_array_equal(whole, np.concatenate(parts)),
               straight[5], *halves)
  labels = straight[0]["label"]
  assert len(set(labels[::2])) == 8 and np.array_equal(labels[::2], labels[1::2])


def frozen_run_config(**overrides):
  return frozen_config(**{"num_epochs": 1, "steps_per_epoch": 3, "checkpoint_every_steps": 3,
                          "eval.ks": (0, 5), **overrides})


@pytest.mark.slow
def test_a_frozen_run_trains_on_cached_maps(tmp_path, monkeypatch):
  monkeypatch.setenv("DIML_JAX_CACHE", str(tmp_path / "cache"))
  results = train_lib.train_and_evaluate(frozen_run_config(), str(tmp_path / "run"))
  assert results["metrics"]["5"]["recall@1"] > 0
  cached = sorted(os.listdir(tmp_path / "cache" / "features"))
  assert [name.split("-")[:2] for name in cached] == [["synthetic", "test"],
                                                       ["synthetic", "train"]]


@pytest.mark.slow
def test_a_second_frozen_run_reuses_the_cached_maps(tmp_path, monkeypatch):
  monkeypatch.setenv("DIML_JAX_CACHE", str(tmp_path / "cache"))
  config = frozen_run_config()
  first = train_lib.train_and_evaluate(config, str(tmp_path / "a"))
  features = tmp_path / "cache" / "features"
  stamps = {n: os.stat(features / n / "feature_map.npy").st_mtime_ns
            for n in os.listdir(features)}
  second = train_lib.train_and_evaluate(config, str(tmp_path / "b"))
  assert {n: os.stat(features / n / "feature_map.npy").st_mtime_ns
          for n in os.listdir(features)} == stamps
  assert second["metrics"] == first["metrics"]


@pytest.mark.slow
def test_a_resumed_frozen_run_ends_with_the_same_parameters(tmp_path, monkeypatch):
  """Stopped after its first epoch and restarted, a run on cached maps continues with the
  batches it would have seen (kill -9 at any point restarts from a checkpoint the same way:
  tests/test_train.py)."""
  monkeypatch.setenv("DIML_JAX_CACHE", str(tmp_path / "cache"))
  two_epochs = frozen_run_config(**{"num_epochs": 2, "eval.every_epochs": 0})
  train_lib.train_and_evaluate(two_epochs, str(tmp_path / "straight"))
  train_lib.train_and_evaluate(frozen_run_config(**{"eval.every_epochs": 0}),
                               str(tmp_path / "resumed"))
  train_lib.train_and_evaluate(two_epochs, str(tmp_path / "resumed"))
  straight, resumed = (ocp.CheckpointManager(tmp_path / name / "checkpoints")
                       for name in ("straight", "resumed"))
  assert straight.latest_step() == resumed.latest_step() == 6
  jax.tree.map(np.testing.assert_array_equal,
               straight.restore(6, args=ocp.args.StandardRestore())["params"],
               resumed.restore(6, args=ocp.args.StandardRestore())["params"])


def test_frozen_backbone_config_errors():
  with pytest.raises(ValueError, match="frozen_bn=True"):
    experiment.check_config(frozen_config(**{"model.frozen_bn": False}))
  with pytest.raises(ValueError, match="marginals='weights'"):
    experiment.check_config(frozen_config(**{
        "model.backbone": "vit_tiny", "model.rollout_blocks": 1,
        "matching.marginals": "weights"}))


@pytest.mark.slow
def test_pretrained_init_equals_a_whole_model_init_with_the_backbone_replaced():
  """init_variables initialises only the head when the backbone's weights are loaded."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  config = demo.get_config()
  model = experiment.build_model(config)
  params, batch_stats = experiment.init_variables(config, model, 38)
  key = jax.random.split(jax.random.key(config.seed))[0]
  whole = jax.jit(model.init)(key, np.zeros((1, 160, 160, 3), np.float32))
  expected = models.replace_backbone(whole, experiment.pretrained_backbone(config, model.backbone))
  jax.tree.map(np.testing.assert_array_equal, params["model"], expected["params"])
  jax.tree.map(np.testing.assert_array_equal, batch_stats, expected["batch_stats"])
