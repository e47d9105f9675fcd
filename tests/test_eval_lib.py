"""eval.py's library path: the model comes from the checkpoint, not from the training split.

A checkpoint is written as training writes it (Orbax, the whole TrainState: model,
ProxyAnchor's proxies of the training split's classes, Adam's moments), then evaluated
with a config whose data set holds only test classes: its training split cannot be
loaded, so any use of it would fail.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from diml_jax import UsageError, eval_lib, experiment
from diml_jax import checkpoints as checkpoint_lib
from diml_jax.experiment import TrainState
from tests.data import fakes
from tests.test_train import tiny_config

NUM_TRAIN_CLASSES = 5  # the proxies' rows: any number the test split does not give


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(config, workdir, saved parameters) of a ProxyAnchor run with one checkpoint."""
  tmp = tmp_path_factory.mktemp("proxy_run")
  config = tiny_config(**{"loss.name": "proxyanchor", "loss.diml": False,
                          "data.name": "cub200", "data.root": str(_cub_test_classes(tmp)),
                          "data.image_size": 32, "data.resize_size": 32,
                          "eval.ks": (0, 4), "eval.batch_size": 8})
  model = experiment.build_model(config)
  params, batch_stats = experiment.init_variables(config, model, NUM_TRAIN_CLASSES)
  # Not the initial values: a restore of a fresh initialisation would pass unnoticed.
  params = jax.tree.map(lambda p: p + 0.01 * jnp.arange(p.size, dtype=p.dtype).reshape(p.shape),
                        params)
  tx = experiment.make_optimizer(config, params, steps_per_epoch=10)
  state = TrainState(step=jnp.int32(7), params=params, batch_stats=batch_stats,
                     opt_state=tx.init(params))
  workdir = tmp / "run"
  manager = checkpoint_lib.checkpoint_manager(str(workdir), "checkpoints", keep=1)
  manager.save(7, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  return config, workdir, jax.device_get(params), jax.device_get(batch_stats)


def _cub_test_classes(tmp):
  """A CUB-200-2011 root with two test classes (101, 102) and no training class."""
  root = tmp / "CUB_200_2011"
  rng = np.random.default_rng(0)
  classes = []
  for class_id in (101, 102):
    folder = f"{class_id}.Bird_{class_id}"
    classes.append(f"{class_id} {folder}")
    (root / "images" / folder).mkdir(parents=True)
    for k in range(4):
      (root / "images" / folder / f"bird_{k}.jpg").write_bytes(fakes.jpeg(rng))
  (root / "classes.txt").write_text("\n".join(classes) + "\n")
  return root


def test_evaluation_restores_the_model_without_the_training_split(run):
  config, workdir, params, batch_stats = run
  with pytest.raises(ValueError, match="the train split has no images"):
    experiment.load_split(config, "train")
  results = eval_lib.run(config, str(workdir))
  assert results["items"] == 8 and set(results["metrics"]) == {"0", "4"}
  # What evaluation embedded with: the saved model variables, read alone.
  manager = checkpoint_lib.checkpoint_manager(str(workdir), "checkpoints")
  restored = checkpoint_lib.restore_model(manager, experiment.make_mesh(), 7,
                                      model=experiment.build_model(config), image_size=32)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored["params"]),
               params["model"])
  if batch_stats:
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored["batch_stats"]),
                 batch_stats)


def test_a_checkpoint_of_another_model_is_named(run):
  config, workdir, _, _ = run
  other = ml_collections.ConfigDict(config.to_dict())
  other.model.embed_dim = 16
  with pytest.raises(UsageError, match=r"holds another model than the config builds"):
    eval_lib.run(other, str(workdir))


def test_saved_config_comes_back_with_its_tuples(tmp_path):
  config = tiny_config(**{"eval.ks": (0, 4), "optimizer.decay_epochs": ()})
  experiment.save_config(config, str(tmp_path))
  loaded = experiment.load_config(str(tmp_path))
  assert loaded.to_dict() == config.to_dict()
  assert loaded.eval.ks == (0, 4) and loaded.eval.recall_ks == (1, 2, 4, 8)
