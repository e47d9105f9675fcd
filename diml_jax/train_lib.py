"""Training: one readable function, data-parallel over any device mesh, preemption-safe.

``train_and_evaluate(config, workdir)`` trains an embedding model with a metric loss
(on DIML's structural quantity -- for a ViT with attention-rollout marginals and partial
similarity -- or on the global embedding, or on each of DGML's group embeddings),
evaluates global and DIML re-ranked retrieval every few epochs, and checkpoints with
Orbax so that a run killed at any moment continues, with the same ``workdir``, exactly
where it left off.

Parallelism: one jitted update over a replicated state and a batch sharded along the
``"data"`` axis of a mesh over all devices of all hosts (what ``pmap`` became in current
JAX). The losses see the global batch; DIML's O(B^2) matching is split over the devices
(:mod:`diml_jax.losses`).
"""
from __future__ import annotations

import functools
import json
from absl import logging
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tensorboardX import SummaryWriter

from diml_jax import checkpoints as checkpoint_lib
from diml_jax import data, eval_lib, evaluation, experiment, feature_cache, losses, models
from diml_jax.losses import registry
from diml_jax.experiment import DATA_AXIS, TrainState


# --------------------------------------------------------------------------------------
# Optimiser and loss, from the config.


LossFn = Callable[[Any, jax.Array, dict, jax.Array, jax.Array], losses.LossOutput]


def make_loss(config: ml_collections.ConfigDict, mesh: Mesh | None) -> LossFn:
  """``loss(loss_params, embedding [b, e], aux, labels [b], key) -> LossOutput``.

  ``embedding`` and ``aux`` are the model's outputs. The loss is ``config.loss.name``'s
  entry of :mod:`diml_jax.losses.registry`. With DIML (``loss.diml``) a pair loss runs
  on the structural quantity of ``aux["local"]`` ``[b, r, d]``, whose part weights (the
  transport marginals) are ``matching.marginals``: cross-correlation (``"cross"``, or
  ``"cross_swapped"`` as the published criteria compute it), uniform, or ``"weights"``,
  a ViT's truncated attention rollout ``aux["part_weights"]`` ``[b, r]``; with
  ``matching.mass`` ``p < 1`` only ``p`` of each image's weight is matched and the
  structural terms are means over the matched parts (the scale of
  :class:`diml_jax.matching.Matching`); the other ``matching`` keys are the solver's
  options (:func:`diml_jax.losses.registry.matching_options`).

  DGML (``model.head="grouping"``): the metric loss runs on each group's embedding
  ``aux["groups"][:, g]`` (group ``g`` with PRNG key ``jax.random.split(key, k)[g]``, for
  the miners' sampling) with its own loss parameters ``loss_params[...][g]`` (margin's
  beta ``[k, n_classes]``; :func:`diml_jax.losses.registry.per_group`), or with one set
  shared by the groups (``loss.per_group_params=False``), and is averaged over the ``k``
  groups, as the reference DGML code does (rather than once on the concatenation);
  ``loss.diversity_weight`` times :func:`diml_jax.models.diversity_loss` is added.
  ``active_fraction`` is the groups' mean, ``selected`` their sum.
  """
  c = config.loss
  metric = registry.build(config, mesh, DATA_AXIS)

  if config.model.head != "grouping":
    return metric
  params_axis = 0 if registry.per_group(config) else None

  def grouped(loss_params, embedding, aux, labels, key):
    del embedding  # the concatenation of the groups, for retrieval
    groups = aux["groups"]  # [b, k, d]
    keys = jax.random.split(key, groups.shape[1])
    per_group = jax.vmap(lambda p, e, k: metric(p, e, {}, labels, k),
                         in_axes=(params_axis, 1, 0))(loss_params, groups, keys)
    diversity = models.diversity_loss(groups)
    return losses.LossOutput(
        loss=jnp.mean(per_group.loss) + c.diversity_weight * diversity,
        active_fraction=jnp.mean(per_group.active_fraction),
        selected=jnp.sum(per_group.selected))

  return grouped


# --------------------------------------------------------------------------------------
# The update.


def make_train_step(model, loss_fn: LossFn, tx: optax.GradientTransformation, mesh: Mesh,
                    *, cached_features: bool = False):
  """The jitted update ``(state, batch, key) -> (state, measurements)``.

  The state is replicated and donated; the batch is sharded along ``"data"``: images, or
  with ``cached_features`` a frozen backbone's cached outputs (``"pooled"``,
  ``"feature_map"``; :mod:`diml_jax.feature_cache`), to which only the head is applied.
  If the loss or the gradients are not finite the state is returned unchanged and
  ``measurements["finite"]`` is False (the loop then stops, naming the step).
  """
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))

  def step(state: TrainState, batch: dict, key: jax.Array):
    def loss_of(params):
      variables = {"params": params["model"]}
      if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
      if cached_features:
        (global_, aux), updates = model.apply(
            variables, batch["pooled"], batch["feature_map"], method="embed_features",
            mutable=["batch_stats"])
      else:
        (global_, aux), updates = model.apply(
            variables, batch["image"], train=True, mutable=["batch_stats"]
        )
      out = loss_fn(params["loss"], global_, aux, batch["label"], key)
      return out.loss, (updates.get("batch_stats", state.batch_stats), out)

    (loss, (batch_stats, out)), grads = jax.value_and_grad(loss_of, has_aux=True)(
        state.params
    )
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = TrainState(
        step=state.step + 1, params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats, opt_state=opt_state,
    )
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    measurements = {
        "loss": loss, "grad_norm": grad_norm, "active_fraction": out.active_fraction,
        "finite": finite,
    }
    return new, measurements

  return jax.jit(
      step, in_shardings=(replicated, batch_sharding, replicated),
      out_shardings=(replicated, replicated), donate_argnums=(0,),
  )


# --------------------------------------------------------------------------------------
# The loop.


class _Log:
  """Measurements to TensorBoard event files (no TensorFlow needed) and a JSON-lines file."""

  def __init__(self, workdir: str):
    self.primary = jax.process_index() == 0
    if self.primary:
      self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
      self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.primary:
      return
    for name, value in scalars.items():
      # TensorBoard tags allow no "@" (recall@1): tensorboardX would rename each with a
      # log line of its own.
      self.writer.add_scalar(name.replace("@", "_at_"), value, step)
    self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self.jsonl.flush()

  def close(self) -> None:
    if self.primary:
      self.writer.close()
      self.jsonl.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates; resumes from ``workdir``'s latest checkpoint if there is one.

  With ``model.freeze_backbone`` the head trains on the backbone's feature maps, embedded
  once and cached on disk, without augmentation (:mod:`diml_jax.feature_cache`).

  Args:
    config: see ``configs/common.py``.
    workdir: checkpoints (``checkpoints/``, ``best/``), logs (``metrics.jsonl``,
      ``tensorboard/``), the resolved ``config.json`` and evaluation results and
      embeddings (``eval/step_N/``, which ``eval.py`` reuses).

  Returns:
    The last evaluation's results (:func:`diml_jax.evaluation.evaluate`).

  Raises:
    UsageError: a config value is not allowed, or the data set is not where the config
      says; nothing is written then. Or ``workdir``'s latest checkpoint holds parameters
      of other shapes than the config builds (it was trained with another config); its
      ``config.json`` is kept.
    FloatingPointError: the loss or the gradients became NaN or infinite; the message
      names the step and the last checkpoint.
  """
  # A user's mistake (a config value, the data's place) fails before anything is written.
  experiment.check_config(config)
  train_set = experiment.load_split(config, "train")
  test_set = experiment.load_split(config, "test")
  os.makedirs(workdir, exist_ok=True)
  mesh = experiment.make_mesh()
  model = experiment.build_model(config)
  steps_per_epoch = config.steps_per_epoch or max(1, len(train_set) // config.batch_size)
  total_steps = config.num_epochs * steps_per_epoch
  logging.info("%s / %s: %d steps of %d images (%d epochs) on %d devices", train_set,
               test_set, total_steps, config.batch_size, config.num_epochs, jax.device_count())

  # Order of resumption: (1) a fresh state is built (it gives the structure, shapes and
  # shardings); (2) the latest checkpoint, if any, replaces it: parameters, optimiser
  # state, batch-norm statistics and the step; (3) the data sampler starts at that step,
  # as batches and PRNG keys are functions of (seed, step) alone.
  params, batch_stats = experiment.init_variables(config, model, train_set.num_classes)
  tx = experiment.make_optimizer(config, params, steps_per_epoch)
  state = experiment.replicate(
      TrainState(step=np.int32(0), params=params, batch_stats=batch_stats,
                 opt_state=tx.init(params)), mesh)
  checkpoints = checkpoint_lib.checkpoint_manager(workdir, "checkpoints", config.keep_checkpoints)
  best = checkpoint_lib.checkpoint_manager(workdir, "best", 1)
  if checkpoints.latest_step() is not None:
    state = checkpoint_lib.restore(checkpoints, state, mesh)
    logging.info("Resumed from step %d in %s", int(state.step), checkpoints.directory)
  # After the restore: a checkpoint of another config fails with the run's config.json kept.
  experiment.save_config(config, workdir)
  start = int(state.step)
  if start >= total_steps:
    logging.info("%s has finished training (step %d of %d): nothing to do. To evaluate "
                 "it (again): python eval.py --workdir %s", workdir, start,
                 total_steps, workdir)
    return {}

  loss_mesh = mesh if jax.device_count() > 1 else None
  cached = config.model.freeze_backbone
  train_step = make_train_step(model, make_loss(config, loss_mesh), tx, mesh,
                               cached_features=cached)
  base_key = jax.random.key(config.seed)
  embed_test = None  # evaluation embeds the test images through the model
  if cached:
    # A frozen backbone: both splits are embedded once (or read from the cache) and the
    # head trains on the feature maps, without augmentation (diml_jax.feature_cache).
    # The fresh backbone variables are the restored ones: they never change.
    variables = {"params": params["model"], "batch_stats": batch_stats}
    train_maps, test_maps = (feature_cache.load_or_embed(config, model, variables, split, mesh)
                             for split in (train_set, test_set))
    batches = feature_cache.train_batches(
        train_maps, batch_size=config.batch_size, images_per_class=config.images_per_class,
        seed=config.seed, start_step=start, num_steps=total_steps - start)
    embed_test = functools.partial(feature_cache.embeddings, model, features=test_maps,
                                   mesh=mesh, batch_size=config.eval.batch_size,
                                   is_query=test_set.is_query)
  else:
    batches = data.train_iterator(
        train_set, batch_size=config.batch_size, images_per_class=config.images_per_class,
        image_size=config.data.image_size, seed=config.seed, start_step=start,
        num_steps=total_steps - start, normalization=experiment.normalization(model),
        num_workers=None if config.data.num_workers < 0 else config.data.num_workers,
    )
  log = _Log(workdir)
  best_r1 = _best_recall(workdir)
  results: dict[str, Any] = {}
  pending = None  # the previous step's measurements, checked one step late (no sync)
  bar = None
  try:
    device_batches = data.device_prefetch(batches, NamedSharding(mesh, P(DATA_AXIS)))
    for step in range(start, total_steps):
      epoch = step // steps_per_epoch
      if bar is None:
        bar = tqdm.tqdm(total=steps_per_epoch, initial=step % steps_per_epoch,
                        desc=f"epoch {epoch + 1}/{config.num_epochs}", unit="step",
                        disable=jax.process_index() != 0, leave=False)
        epoch_start, epoch_step0 = time.perf_counter(), step
      batch = next(device_batches)
      state, measurements = train_step(state, batch, jax.random.fold_in(base_key, step))
      if pending is not None:
        _check_finite(pending, checkpoints)
      pending = (step, measurements)
      bar.update()
      if (step + 1) % config.log_every_steps == 0:
        scalars = {f"train/{k}": float(v) for k, v in measurements.items() if k != "finite"}
        images_per_s = (step + 1 - epoch_step0) * config.batch_size / (
            time.perf_counter() - epoch_start)
        scalars["train/images_per_s"] = images_per_s
        bar.set_postfix(loss=f"{scalars['train/loss']:.4f}", img_s=f"{images_per_s:.1f}")
        log.write(step + 1, scalars)
      if (step + 1) % config.checkpoint_every_steps == 0:
        checkpoints.save(step + 1, args=ocp.args.StandardSave(state))
      if (step + 1) % steps_per_epoch == 0:
        bar.close()
        bar = None
        epoch_done = (step + 1) // steps_per_epoch
        every = config.eval.every_epochs
        if every and (epoch_done % every == 0 or step + 1 == total_steps):
          _check_finite(pending, checkpoints)
          results, _ = eval_lib.evaluate_model(
              config, model, eval_lib.model_variables(state), test_set, mesh,
              os.path.join(workdir, "eval", f"step_{step + 1}"), embed_fn=embed_test)
          r1 = _log_eval(results, log, step + 1, epoch_done)
          if r1 > best_r1:
            best_r1 = r1
            best.save(step + 1, args=ocp.args.StandardSave(state), force=True)
            experiment.write_json(os.path.join(workdir, "best.json"),
                                  {"step": step + 1, "epoch": epoch_done, "recall@1": r1})
    if pending is not None:
      _check_finite(pending, checkpoints)
    if checkpoints.latest_step() != total_steps:
      checkpoints.save(total_steps, args=ocp.args.StandardSave(state), force=True)
    if jax.process_count() > 1 and not cached:  # each process decodes only its rows
      logging.info("Process %d of %d decoded %d training images for %d steps of %d rows",
                   jax.process_index(), jax.process_count(), batches.decoded,
                   total_steps - start, config.batch_size // jax.process_count())
  finally:
    if bar is not None:
      bar.close()
    checkpoints.wait_until_finished()
    best.wait_until_finished()
    log.close()
    skipped = sum(getattr(batches, "skipped", {}).values())  # none from cached maps
    if skipped:
      logging.warning("%d corrupt training images were skipped", skipped)
  return results


def _check_finite(pending, checkpoints) -> None:
  step, measurements = pending
  if not bool(measurements["finite"]):
    last = checkpoints.latest_step()
    raise FloatingPointError(
        f"Step {step}: the loss ({float(measurements['loss'])}) or the gradient norm "
        f"({float(measurements['grad_norm'])}) is not finite; the update was not applied. "
        f"Last good checkpoint: "
        + (f"step {last} in {checkpoints.directory}." if last is not None else "none yet.")
        + " Lower the learning rate, or check the data, then restart with the same workdir."
    )


def _best_recall(workdir: str) -> float:
  path = os.path.join(workdir, "best.json")
  if not os.path.exists(path):
    return -1.0
  with open(path) as f:
    return json.load(f)["recall@1"]


def _log_eval(results: dict, log: _Log, step: int, epoch: int) -> float:
  """Logs an evaluation; returns the R@1 that picks the best checkpoint (best K's)."""
  scalars = {}
  for k, row in results["metrics"].items():
    name = "global" if k == "0" else f"diml_k{k}"
    for metric, value in row.items():
      if metric != "queries":
        scalars[f"eval/{name}/{metric}"] = value
  if results["nmi"] is not None:
    scalars["eval/nmi"] = results["nmi"]
    scalars["eval/f1"] = results["f1"]
  log.write(step, scalars)
  if jax.process_index() == 0:
    tqdm.tqdm.write(f"epoch {epoch}, step {step}\n{evaluation.format_table(results)}")
  return max(row["recall@1"] for row in results["metrics"].values())
