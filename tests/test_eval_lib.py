"""eval.py's library path: the model comes from the checkpoint, not from the training split.

A checkpoint is written as training writes it (Orbax, the whole TrainState: model,
ProxyAnchor's proxies of the training split's classes, Adam's moments), then evaluated
with a config whose data set holds only test classes: its training split cannot be
loaded, so any use of it would fail.
"""
import re
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import inshop_dgml, inshop_margin
from diml_jax import UsageError, eval_lib, evaluation, experiment
from diml_jax import checkpoints as checkpoint_lib
from diml_jax.experiment import TrainState
from tests.data import fakes
from tests.test_evaluation import assert_metrics_equal, brute_evaluate
from tests.test_train import tiny_config

NUM_TRAIN_CLASSES = 5  # the proxies' rows: any number the test split does not give


# The run's model, loss and evaluation; its data set is the test's.
PROXY_RUN = {"loss.name": "proxyanchor", "loss.diml": False, "data.image_size": 32,
             "data.resize_size": 32, "eval.ks": (0, 4), "eval.batch_size": 8}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(config, workdir, saved parameters) of a ProxyAnchor run with one checkpoint."""
  tmp = tmp_path_factory.mktemp("proxy_run")
  config = tiny_config(**PROXY_RUN, **{"data.name": "cub200",
                                       "data.root": str(_cub_test_classes(tmp))})
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


def test_inshop_ranks_its_queries_against_its_gallery(run, tmp_path):
  """eval.py's path on a miniature In-Shop (3 queries, 9 gallery images, one class in
  the gallery only), with the run's model: the test split embedded once, each query
  ranked against the gallery alone with In-Shop's cut-offs; the cache keeps is_query
  (one written without it is embedded again); the report's queries are query images,
  its results gallery images."""
  workdir = tmp_path / "run"
  shutil.copytree(run[1] / "checkpoints", workdir / "checkpoints")
  recall_ks = inshop_margin.get_config().eval.recall_ks
  assert recall_ks == inshop_dgml.get_config().eval.recall_ks == (1, 10, 20, 30, 40, 50)
  # K = 100 re-ranks the whole gallery, as the report does (one compilation for both).
  overrides = {**PROXY_RUN, "data.name": "inshop",
               "data.root": str(fakes.write_inshop(tmp_path / "inshop")),
               "eval.ks": (0, 100), "eval.recall_ks": recall_ks}
  config = tiny_config(**overrides)
  results = eval_lib.run(config, str(workdir))
  assert (results["items"], results["gallery"], results["classes"]) == (12, 9, 3)
  assert set(results["metrics"]) == {"0", "100"}
  out = workdir / "eval" / "step_7"
  cache = out / "embeddings_grid4_px32.npz"
  embeddings = evaluation.load_embeddings(str(cache))
  np.testing.assert_array_equal(embeddings.is_query, [True] * 3 + [False] * 9)
  reference = brute_evaluate(embeddings.global_, embeddings.labels, recall_ks=recall_ks,
                             is_query=embeddings.is_query)
  assert reference["queries"] == 3 and reference["recall@10"] == 1.0  # the whole gallery
  assert_metrics_equal(results["metrics"]["0"], reference)
  assert results["metrics"]["100"]["queries"] == 3

  # A cache without is_query (written before the split marked its queries) is replaced.
  evaluation.save_embeddings(str(cache), embeddings._replace(is_query=None))
  again, _ = eval_lib.evaluate_model(config, None, {}, experiment.load_split(config, "test"),
                                     experiment.make_mesh(), str(out),
                                     embed_fn=lambda _: embeddings)
  assert again["metrics"] == results["metrics"] and again["gallery"] == 9
  assert evaluation.load_embeddings(str(cache)).is_query is not None

  test_set = experiment.load_split(config, "test")
  path = eval_lib.write_explanations(config, test_set, embeddings, str(out / "report"),
                                     num_queries=3, top_k=1, num_figures=1)
  report = open(path).read()
  assert {int(q) for q in re.findall(r"query #(\d+)", report)} == {0, 1, 2}
  results_shown = {int(r) for r in re.findall(r"result #(\d+)", report)}
  assert results_shown and min(results_shown) >= 3

  # A per-class cap applies to each side; the original code's R has no meaning here.
  capped = experiment.load_split(tiny_config(**overrides, **{"data.max_test_per_class": 1}),
                                 "test")
  np.testing.assert_array_equal(capped.is_query, [True, True, False, False, False])
  np.testing.assert_array_equal(capped.labels, [0, 1, 0, 1, 2])
  with pytest.raises(UsageError, match="include_query_in_r=True.*separate gallery"):
    experiment.load_split(tiny_config(**overrides, **{"eval.include_query_in_r": True}),
                          "test")
