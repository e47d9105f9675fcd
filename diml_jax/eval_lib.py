"""Evaluating a model: embed a split, rank and re-rank it (test-time DIML), explain it.

Used by ``eval.py`` on any saved checkpoint (including baselines trained without DIML:
structural re-ranking needs only the local embeddings, which every
:class:`~diml_jax.models.EmbeddingModel` produces) and by training for its periodic
evaluations.
"""
from __future__ import annotations

from absl import logging
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diml_jax import checkpoints as checkpoint_lib
from diml_jax import data, embedding, evaluation, experiment, explain, matching, retrieval
from diml_jax.data import images as image_lib
from diml_jax.errors import UsageError
from diml_jax.experiment import DATA_AXIS
from diml_jax.losses import registry


def model_variables(state: experiment.TrainState) -> dict:
  variables = {"params": state.params["model"]}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def embed(config: ml_collections.ConfigDict, model, variables: dict, dataset: data.Dataset,
          mesh: Mesh) -> evaluation.Embeddings:
  """Global and local embeddings of every image of ``dataset``, in its order.

  The batches are sharded over the mesh: each process decodes and embeds its rows of
  every batch (a multi-process run logs how many), and every process then gets the whole
  result. Images that could not be decoded are left out, with a warning. A query/gallery
  split (In-Shop's test split) keeps its ``is_query`` in the embeddings, so that they are
  evaluated as queries against the gallery.
  """
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  names = _outputs(config)
  apply = jax.jit(
      lambda v, x: _select(model.apply(v, x, train=False), names),
      in_shardings=(NamedSharding(mesh, P()), batch_sharding), out_shardings=batch_sharding,
  )
  arrays, seen = embedding.embed_split(
      config, model, dataset, mesh, lambda images: apply(variables, images),
      lambda shapes: [np.zeros((len(dataset), *shape), np.float32) for shape in shapes])
  found = dict(zip(names, (a[seen] for a in arrays)))
  return evaluation.Embeddings(
      found["global"], found.get("local"), dataset.labels[seen], found.get("part_weights"),
      None if dataset.is_query is None else dataset.is_query[seen])


def _outputs(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """What evaluation keeps of the model's outputs: the global embedding, the local ones
  (none for DGML's grouping head) and, for rollout marginals, the part weights."""
  if config.model.head == "grouping":
    return ("global",)
  if config.matching.marginals == "weights":
    return ("global", "local", "part_weights")
  return ("global", "local")


def _select(out, names: tuple[str, ...]) -> tuple:
  global_, aux = out
  return tuple(global_ if name == "global" else aux[name] for name in names)


def rerank_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """How re-ranking matches a pair, from ``config.matching``: marginals, partial mass and
  the solver's options."""
  return dict(marginals=config.matching.marginals, mass=config.matching.mass,
              options=registry.matching_options(config))


def evaluate_embeddings(config: ml_collections.ConfigDict, embeddings: evaluation.Embeddings,
                        *, progress: bool = True) -> dict[str, Any]:
  """Global and multi-scale DIML retrieval metrics (DIML, ICCV 2021, Sec. 3.4), with the
  config's depths, cut-offs and matching; queries against the gallery when the embeddings
  mark queries (In-Shop); progress bars on process 0 if ``progress``."""
  return evaluation.evaluate(
      embeddings, ks=config.eval.ks, recall_ks=config.eval.recall_ks,
      include_query_in_r=config.eval.include_query_in_r, with_nmi=config.eval.with_nmi,
      seed=config.seed, progress=progress and jax.process_index() == 0,
      **rerank_options(config),
  )


def evaluate_model(config, model, variables: dict, dataset: data.Dataset, mesh: Mesh,
                   out_dir: str, *,
                   embed_fn: Callable[[dict], evaluation.Embeddings] | None = None
                   ) -> tuple[dict[str, Any], evaluation.Embeddings]:
  """Embeds ``dataset`` with the model's ``variables`` (or reloads the embeddings cached
  in ``out_dir``) and evaluates.

  Results go to ``out_dir`` as JSON and CSV. The cache is named after the grid, the
  image size and (for rollout marginals) the rollout depth, which change the embeddings;
  re-ranking experiments with other ``ks``, partial mass or Sinkhorn options reuse it.
  ``embed_fn(variables)``, if given, embeds instead of running the model on the images
  (training on a frozen backbone embeds its cached feature maps:
  :func:`diml_jax.feature_cache.embeddings`). Embeddings of a query/gallery split carry
  its ``is_query`` (in the cache too), and are evaluated as queries against the gallery.
  """
  name = f"embeddings_grid{config.model.grid_size}_px{config.data.image_size}"
  if config.matching.marginals == "weights":
    name += f"_rollout{config.model.rollout_blocks}"
  cache = os.path.join(out_dir, name + ".npz")
  cached = os.path.exists(cache)
  if jax.process_count() > 1:  # embedding is collective: all processes embed, or none
    cached = bool(np.all(multihost_utils.process_allgather(np.asarray(cached))))
  if cached:
    logging.info("Embeddings from %s", cache)
    embeddings = evaluation.load_embeddings(cache)
    if (embeddings.is_query is None) != (dataset.is_query is None):
      # Written before the split marked its queries (the same file on every process).
      logging.info("%s does not mark the queries of %s: embedding again", cache, dataset)
      cached = False
  if not cached:
    if embed_fn is None:
      embeddings = embed(config, model, variables, dataset, mesh)
    else:
      embeddings = embed_fn(variables)
    if jax.process_index() == 0:
      os.makedirs(out_dir, exist_ok=True)
      evaluation.save_embeddings(cache, embeddings)
  results = evaluate_embeddings(config, embeddings)
  if jax.process_index() == 0:
    evaluation.write_results(results, out_dir)
  return results, embeddings


def write_explanations(config: ml_collections.ConfigDict, dataset: data.Dataset,
                       embeddings: evaluation.Embeddings, out_dir: str, *,
                       num_queries: int = 8, top_k: int = 5, rerank_k: int = 100,
                       num_figures: int = 4) -> str:
  """Writes an HTML retrieval report and flow figures (PNG and SVG) to ``out_dir``.

  For ``num_queries`` queries sampled with the config's seed: the top ``top_k`` by global
  cosine next to the top ``top_k`` after re-ranking the first ``rerank_k`` by DIML, each
  result linked to its flow figure; and for the first ``num_figures`` queries, the flow
  figure of the query and its best DIML match as files. As in :func:`evaluate_embeddings`:
  with ``embeddings.is_query`` (In-Shop) the queries are drawn from the query images and
  their results from the gallery; otherwise from all images, each query's results from
  the others.

  Returns:
    The report's path.
  """
  os.makedirs(out_dir, exist_ok=True)
  g, x, labels, w, is_query = embeddings
  if len(labels) != len(dataset):
    raise ValueError("write_explanations needs the embeddings of every image of the data set.")
  if x is None:
    raise ValueError("write_explanations draws DIML's flows between parts, and these "
                     "embeddings have no parts (DGML's grouping head); its group attention "
                     "maps are the model's aux['group_attention'] "
                     "(explain.relevance_figure draws them).")
  # Image indices throughout (RetrievalRun's): the queries' and their results'.
  everything = np.arange(len(labels))
  pool = everything if is_query is None else np.flatnonzero(is_query)
  gallery = everything if is_query is None else np.flatnonzero(~is_query)
  rng = np.random.default_rng(config.seed)
  queries = np.sort(rng.choice(pool, min(num_queries, pool.size), replace=False))
  depth = min(max(top_k, rerank_k), gallery.size - (is_query is None))
  nearest = gallery[retrieval.global_neighbours(
      g[queries], g[gallery], k=depth,
      self_index=queries if is_query is None else None).indices]
  options = rerank_options(config)
  rollout = options["marginals"] == "weights"
  scores = retrieval.rerank_scores(
      x[queries], g[queries], x, g, nearest,
      marginals=(w[queries], w) if rollout else options["marginals"], mass=options["mass"],
      options=options["options"])
  reranked = retrieval.multiscale_order(nearest, scores, k=depth)
  grid = config.model.grid_size

  def image(i):
    return image_lib.eval_image(
        dataset.images[int(i)], image_size=config.data.image_size,
        resize_size=config.data.resize_size, letterbox_to_square=dataset.letterbox)

  def match_pair(i, j):
    marginals = (w[i], w[j]) if rollout else options["marginals"]
    return matching.match(x[i], x[j], g[i], g[j], marginals=marginals, mass=options["mass"],
                          options=options["options"])

  run = explain.RetrievalRun(
      queries=queries, global_neighbours=nearest[:, :top_k],
      reranked_neighbours=reranked[:, :top_k], labels=labels, images=image,
      match_pair=match_pair, embeddings=g, grids=(grid, grid),
      class_names=dataset.class_names)
  path = explain.write_report(run, os.path.join(out_dir, "report.html"))
  for q, best in zip(queries[:num_figures], reranked[:num_figures, 0]):
    figure = explain.flow_figure(
        image(q), image(best), match_pair(q, best), grids=(grid, grid),
        global_similarity=float(g[q] @ g[best]),
        names=(f"query {q} ({dataset.class_names[labels[q]]})",
               f"DIML top-1 {best} ({dataset.class_names[labels[best]]})")).figure
    for fmt in ("png", "svg"):
      figure.savefig(os.path.join(out_dir, f"flow_query{q}.{fmt}"))
  return str(path)


def run(config: ml_collections.ConfigDict, workdir: str, *, checkpoint: str | None = None,
        explain_results: bool = False) -> dict[str, Any]:
  """Evaluates a saved model: what ``eval.py`` does.

  Needs the test split only: the model's variables are read from the checkpoint with
  the shapes it records (:func:`diml_jax.checkpoints.restore_model`).

  Args:
    config: the run's config (the model must be the one the checkpoint was saved from);
      ``eval.py`` reads ``workdir/config.json`` unless given ``--config``.
    workdir: the training run's directory; results (and the embeddings, reused by a
      later call) go to ``workdir/eval/step_N/``.
    checkpoint: a checkpoint step directory (``.../checkpoints/1200``); by default the
      best checkpoint of ``workdir``, else its latest.
    explain_results: also write the HTML report and flow figures (:func:`write_explanations`).

  Returns:
    The evaluation results (:func:`diml_jax.evaluation.evaluate`).

  Raises:
    UsageError: no checkpoint to evaluate, a model other than the config's, or no test
      split where the config says; nothing is written then.
  """
  experiment.check_config(config)
  directory, step = _find_checkpoint(workdir, checkpoint)
  test_set = experiment.load_split(config, "test")
  mesh = experiment.make_mesh()
  model = experiment.build_model(config)
  variables = checkpoint_lib.restore_model(
      checkpoint_lib.checkpoint_manager(*os.path.split(directory)), mesh, step, model=model,
      image_size=config.data.image_size)
  out_dir = os.path.join(workdir, "eval", f"step_{step}")
  results, embeddings = evaluate_model(config, model, variables, test_set, mesh, out_dir)
  if jax.process_index() == 0:
    print(f"{test_set}, checkpoint {directory}/{step}\n{evaluation.format_table(results)}")
    if explain_results:
      print("report:", write_explanations(config, test_set, embeddings, out_dir))
  return results


def _find_checkpoint(workdir: str, checkpoint: str | None) -> tuple[str, int]:
  """``(manager directory, step)`` of the checkpoint to evaluate."""
  if checkpoint:
    path = os.path.abspath(checkpoint.rstrip("/"))
    if os.path.basename(path).isdigit() and os.path.isdir(path):
      return os.path.dirname(path), int(os.path.basename(path))
    raise UsageError(
        f"--checkpoint={checkpoint} is not a checkpoint step directory such as "
        f"{os.path.join(workdir, 'checkpoints', '1200')}.")
  if not os.path.isdir(workdir):
    raise UsageError(f"--workdir={workdir}: no such directory. Give a training run's "
                     f"directory (train.py --workdir, by default runs/<config name>).")
  for name in ("best", "checkpoints"):
    directory = os.path.abspath(os.path.join(workdir, name))
    steps = sorted(int(s) for s in os.listdir(directory) if s.isdigit()) if os.path.isdir(directory) else []
    if steps:
      return directory, steps[-1]
  raise UsageError(
      f"--workdir={workdir} holds no checkpoint (looked in best/ and checkpoints/): train "
      f"first with `python train.py --config ... --workdir {workdir}`, or pass --checkpoint.")
