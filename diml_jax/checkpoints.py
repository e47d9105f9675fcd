"""Orbax checkpoints of a run: written by training, read by training (to resume) and by
evaluation (the model alone).

Every process of a multi-process run takes part in each save and restore; the files are
one Orbax checkpoint per step.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diml_jax.errors import UsageError


def checkpoint_manager(workdir: str, name: str, keep: int | None = None
                       ) -> ocp.CheckpointManager:
  """Orbax manager of ``workdir/name``: saves asynchronously and keeps the last ``keep``;
  with ``keep=None`` it reads only (:func:`restore_model`; evaluation never saves, so
  never deletes a run's checkpoints).

  Every process of a multi-process run saves together; Orbax's barriers between them are
  named after the step (``async_write_complete.6``), so two managers saving the same
  step at once (training's periodic ``checkpoints`` and its ``best`` after an evaluation)
  met at one barrier and hung. Each manager's barriers are therefore prefixed with its
  name: the two saves stay asynchronous and independent.
  """
  path = os.path.abspath(os.path.join(workdir, name))
  processes = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)
  if keep is None:
    # Not Orbax's read_only option: it warns at every use that it is read-only.
    return ocp.CheckpointManager(
        path, options=ocp.CheckpointManagerOptions(
            create=False, multiprocessing_options=processes),
        item_handlers=ocp.PyTreeCheckpointHandler())
  # The handler named, so that a fresh manager reads a checkpoint's shapes (:func:`restore`).
  return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, multiprocessing_options=processes),
      item_handlers=ocp.StandardCheckpointHandler())


def restore(manager: ocp.CheckpointManager, template: Any, mesh: Mesh,
            step: int | None = None) -> Any:
  """The checkpoint at ``step`` (default: the latest), replicated over ``mesh``.

  ``template``, a freshly built :class:`~diml_jax.experiment.TrainState`, gives the
  structure, shapes and dtypes.

  Raises:
    UsageError: the checkpoint's parameters (``params``) have other shapes than the
      template's: the run was trained with another config.
  """
  step = manager.latest_step() if step is None else step
  differ = _differences(template.params, manager.item_metadata(step)["params"])
  if differ:
    name, have, want = differ[0]
    dgml = (" A DGML run from before per-group loss parameters (one beta [n_classes] "
            "shared by the groups) resumes with --config.loss.per_group_params=False."
            if name.startswith("['loss']") else "")
    raise UsageError(
        f"{manager.directory}/{step} holds parameters of other shapes than the config "
        f"builds ({len(differ)} differ, e.g. params{name}: {have} in the checkpoint, {want} "
        f"in the config's). Resume it with the config it was trained with, or train in a "
        f"new --workdir.{dgml}")
  replicated = NamedSharding(mesh, P())
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), template)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def restore_model(manager: ocp.CheckpointManager, mesh: Mesh, step: int, *, model,
                  image_size: int) -> dict:
  """The model's variables (``params``, ``batch_stats``) of checkpoint ``step``.

  Only these are read, replicated over ``mesh``, with the shapes the checkpoint's
  metadata gives: not the optimiser state, nor the loss's parameters, whose shapes
  depend on the training split (ProxyAnchor's proxies, one per class), so evaluation
  needs neither that split nor the optimiser's memory.

  Args:
    manager: a reading manager (:func:`checkpoint_manager` with ``keep=None``).
    mesh: the device mesh.
    step: the checkpoint's step.
    model: the model the config builds; its variables must have the checkpoint's shapes.
    image_size: the side of the input images (a ViT's position embeddings depend on it).

  Raises:
    UsageError: the checkpoint holds another model than ``model`` (a config other than
      the one it was trained with).
  """
  metadata = manager.item_metadata(step)
  replicated = NamedSharding(mesh, P())
  abstract = {"params": {"model": metadata["params"]["model"]}}
  if metadata.get("batch_stats"):
    abstract["batch_stats"] = metadata["batch_stats"]
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), abstract)
  expected = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, image_size, image_size, 3), jnp.float32))
  _check_same_model(expected, {"params": abstract["params"]["model"],
                               "batch_stats": abstract.get("batch_stats", {})},
                    f"{manager.directory}/{step}")
  restored = manager.restore(step, args=ocp.args.PyTreeRestore(
      abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
      partial_restore=True))
  variables = {"params": restored["params"]["model"]}
  if "batch_stats" in restored:
    variables["batch_stats"] = restored["batch_stats"]
  return variables


def _differences(expected: Any, found: Any) -> list[tuple[str, Any, Any]]:
  """``(path, shape found, shape expected)`` of each variable whose shape differs (or that
  one tree lacks: ``"absent"``), sorted by path."""
  shapes = lambda tree: {jax.tree_util.keystr(k): tuple(v.shape)
                         for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  want, have = shapes(expected), shapes(found)
  return [(k, have.get(k, "absent"), want.get(k, "absent"))
          for k in sorted(want.keys() | have.keys()) if want.get(k) != have.get(k)]


def _check_same_model(expected: dict, found: dict, where: str) -> None:
  """Raises :class:`UsageError` naming the first variable whose shape differs."""
  differ = _differences(
      {"params": expected["params"], "batch_stats": expected.get("batch_stats", {})}, found)
  if not differ:
    return
  name, have, want = differ[0]
  raise UsageError(
      f"{where} holds another model than the config builds ({len(differ)} variables differ, "
      f"e.g. {name}: {have} in the checkpoint, {want} in the config's model). Evaluate it "
      f"with the config it was trained with: the run's config.json, the default without "
      f"--config.")
