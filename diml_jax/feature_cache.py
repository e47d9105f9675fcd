"""Training on a frozen backbone from cached feature maps: embed once, train the head fast.

With ``model.freeze_backbone=True`` the backbone never changes, so its outputs on each
image never change either: :func:`load_or_embed` runs every training and test image once
through the backbone in inference mode (frozen batch norm) and keeps its feature map
``[n, h, w, c]`` and pooled features ``[n, c]`` on disk; training then applies only the
head (:meth:`~diml_jax.models.EmbeddingModel.embed_features`) to batches of cached maps
(:func:`train_batches`), and evaluation embeds the cached test maps
(:func:`embeddings`). A step costs the head and the loss alone, seconds per epoch on a
CPU instead of a backbone forward pass per image.

**Augmentation is off on this path.** A random resized crop or a flip changes the
backbone's input, so it cannot be applied to a cached map; every image is embedded once
with the test transform (``data.resize_size``, centre crop to ``data.image_size``; clip
art letterboxed), for training as for testing. Training through the backbone with
per-step augmentation needs ``model.freeze_backbone=False`` (the backbone then trains).

**The cache** lives in ``$DIML_JAX_CACHE/features/`` (default ``~/.cache/diml_jax``, where
the pretrained weights are cached too), not in the run's work directory: the maps depend
on the backbone, its weights and the images alone, so every run on them -- other
losses, seeds, grid sizes, learning rates -- reuses one embedding. Each split is a
directory named after the data set, split, backbone and image size, and a digest of
what the maps depend on (:func:`cache_key`): the backbone's name, compute dtype and
every value of its variables (so other weights, or another seed of an untrained backbone,
never read stale maps), the image and resize sizes, the augmentation (none), and the
split's image paths and labels (not the files' contents: after changing images in
place, delete the cache). Maps are float32, ``h * w * c * 4`` bytes an image (Lite0 at
160 px: 128 KB; ResNet-50 at 224 px: 400 KB). Delete the directory at any time.

Batches are functions of ``(seed, step)`` through the class-balanced sampler of the
image pipeline (:func:`diml_jax.data.sampler.batch_indices`), so a run killed and
restarted continues with the batches it would have seen, and the parameters equal those
of training through the frozen backbone on the same (unaugmented) batches (tested).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import NamedTuple

from absl import logging
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diml_jax import data, embedding, evaluation, models
from diml_jax.data import sampler
from diml_jax.models import pretrained
from diml_jax.experiment import DATA_AXIS

# Bump when what is stored, or how, changes: old caches are then never read.
FORMAT = 1
AUGMENTATION = "none"  # see the module docstring


class FeatureMaps(NamedTuple):
  """A split's cached backbone outputs, row ``i`` for image ``i`` of the data set.

  Attributes:
    pooled: ``float32 [n, c]``, the backbone's pooled features.
    feature_map: ``float32 [n, h, w, c]``, its last-stage feature map (memory-mapped).
    labels: ``int32 [n]``.
    kept: ``bool [n]``: False for an image that could not be decoded (its rows are zero
      and never used).
  """
  pooled: np.ndarray
  feature_map: np.ndarray
  labels: np.ndarray
  kept: np.ndarray


def cache_dir() -> pathlib.Path:
  """``$DIML_JAX_CACHE/features`` (default ``~/.cache/diml_jax/features``)."""
  return pretrained.default_cache_dir() / "features"


def backbone_variables(variables: dict) -> dict:
  """The backbone's part of a model's variables: what its outputs depend on."""
  return {kind: tree["backbone"] for kind, tree in variables.items() if "backbone" in tree}


def cache_key(config: ml_collections.ConfigDict, variables: dict,
              dataset: data.Dataset) -> str:
  """A digest of everything a split's feature maps depend on (see the module docstring).

  Args:
    config: the run's config (``model.backbone``, ``model.compute_dtype``,
      ``data.image_size``, ``data.resize_size``).
    variables: the model's variables (only the backbone's are read).
    dataset: the split.

  Returns:
    24 hexadecimal digits of a SHA-256.
  """
  digest = hashlib.sha256()

  def add(*values):
    digest.update(json.dumps(values, default=str).encode() + b"\0")

  add(FORMAT, AUGMENTATION, config.model.backbone, config.model.compute_dtype,
      config.data.image_size, config.data.resize_size)
  leaves = jax.tree_util.tree_flatten_with_path(backbone_variables(variables))[0]
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    leaf = np.ascontiguousarray(jax.device_get(leaf))
    add(jax.tree_util.keystr(path), leaf.dtype, leaf.shape)
    digest.update(leaf.tobytes())
  add(dataset.name, dataset.split, dataset.letterbox, len(dataset))
  digest.update(np.asarray(dataset.labels, np.int64).tobytes())
  for i in range(len(dataset)):
    add(dataset.images.describe(i))
  return digest.hexdigest()[:24]


def load_or_embed(config: ml_collections.ConfigDict, model, variables: dict,
                  dataset: data.Dataset, mesh: Mesh, *,
                  directory: str | os.PathLike | None = None) -> FeatureMaps:
  """The split's cached feature maps, embedding it first if they are not cached yet.

  Args:
    config: the run's config.
    model: the :class:`~diml_jax.models.EmbeddingModel` or
      :class:`~diml_jax.models.GroupingModel` whose backbone embeds the images.
    variables: its variables (``{"params": ..., "batch_stats": ...}``); the backbone's
      must be the ones training keeps frozen.
    dataset: the split.
    mesh: the devices that embed (batches split along ``"data"``).
    directory: where the caches are; :func:`cache_dir` by default.

  Returns:
    The split's :class:`FeatureMaps`, read from ``directory/<name>/``.
  """
  key = cache_key(config, variables, dataset)
  name = (f"{dataset.name}-{dataset.split}-{config.model.backbone}-"
          f"{config.data.image_size}px-{key}")
  path = pathlib.Path(directory if directory is not None else cache_dir()) / name
  found = path.is_dir()
  if jax.process_count() > 1:  # all hosts embed together, or none does
    found = bool(multihost_utils.process_allgather(np.asarray(found)).all())
  if found:
    logging.info("Feature maps of %s from %s", dataset, path)
  else:
    logging.info("Embedding %s once through the frozen %s into %s", dataset,
                 config.model.backbone, path)
    _embed_into(config, model, variables, dataset, mesh, path)
  return FeatureMaps(*(np.load(path / f"{field}.npy", mmap_mode="r")
                       for field in FeatureMaps._fields))


def _embed_into(config, model, variables, dataset, mesh, path: pathlib.Path) -> None:
  """Embeds ``dataset`` (test transform, inference mode) into a new cache at ``path``.

  The arrays are written into a temporary directory beside ``path``, memory-mapped (a
  large split never has to fit in memory), which is then renamed: a run killed while
  embedding leaves no partial cache behind.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".partial"))
  apply = _backbone_outputs(model, mesh)

  def memory_maps(shapes):
    return [np.lib.format.open_memmap(temporary / f"{field}.npy", "w+", np.float32,
                                      (len(dataset), *shape))
            for field, shape in zip(("pooled", "feature_map"), shapes)]

  try:
    arrays, kept = embedding.embed_split(
        config, model, dataset, mesh, lambda images: apply(variables, images), memory_maps,
        desc=f"embedding {dataset.name}/{dataset.split}")
    for array in arrays:
      array.flush()
    np.save(temporary / "labels.npy", np.asarray(dataset.labels, np.int32))
    np.save(temporary / "kept.npy", kept)
    del arrays
    try:
      os.rename(temporary, path)
    except OSError:  # another host (shared file system) or run was faster: use its copy
      if not path.is_dir():
        raise
  finally:
    shutil.rmtree(temporary, ignore_errors=True)


@functools.lru_cache(maxsize=4)  # one compilation for both splits
def _backbone_outputs(model, mesh: Mesh):
  """Jitted ``(variables, images [b, s, s, 3]) -> (pooled [b, c], feature_map [b, h, w, c])``
  in inference mode."""
  def outputs(variables, images):
    _, aux = model.apply(variables, images, train=False)
    return aux["pooled"], aux["feature_map"]

  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  return jax.jit(outputs, in_shardings=(NamedSharding(mesh, P()), batch_sharding),
                 out_shardings=batch_sharding)


@functools.lru_cache(maxsize=4)  # one compilation for every evaluation of a run
def _head_outputs(model, mesh: Mesh):
  """Jitted ``(variables, pooled, feature_map) -> global`` (DGML) or ``(global, local)``."""
  grouping = isinstance(model, models.GroupingModel)

  def outputs(variables, pooled, feature_map):
    global_, aux = model.apply(variables, pooled, feature_map, method="embed_features")
    return global_ if grouping else (global_, aux["local"])

  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  return jax.jit(outputs, in_shardings=(NamedSharding(mesh, P()), batch_sharding,
                                        batch_sharding), out_shardings=batch_sharding)


def _global(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """This host's rows as a global array split along ``"data"``."""
  return jax.make_array_from_process_local_data(sharding, local)


def train_batches(features: FeatureMaps, *, batch_size: int, images_per_class: int,
                  seed: int, start_step: int, num_steps: int,
                  process_index: int | None = None, process_count: int | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Class-balanced batches of cached maps, each a function of ``(seed, step)``.

  The images of step ``t`` are those of :func:`diml_jax.data.sampler.batch_indices`
  (the image pipeline's sampler), drawn among the images that were decoded.

  Args:
    features: the training split's :class:`FeatureMaps`.
    batch_size: the global batch size ``B``.
    images_per_class: ``m``: each batch holds ``B / m`` classes x ``m`` images.
    seed: the sampler's seed.
    start_step: the first step (the step to resume at).
    num_steps: how many batches.
    process_index, process_count: this host and the number of hosts; from JAX when None.

  Yields:
    ``{"pooled": float32 [b, c], "feature_map": float32 [b, h, w, c], "label": int32
    [b]}``, this host's ``b = B / process_count`` rows of each global batch.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  rows = np.flatnonzero(features.kept)
  index = sampler.class_index(features.labels[rows])
  sampler.check_batch_size(batch_size, images_per_class, index.num_classes, process_count)
  host = sampler.host_rows(batch_size, process_index, process_count)
  for step in range(start_step, start_step + num_steps):
    chosen = rows[sampler.batch_indices(index, step=step, seed=seed, batch_size=batch_size,
                                        images_per_class=images_per_class)[host]]
    yield {"pooled": features.pooled[chosen],
           "feature_map": features.feature_map[chosen],
           "label": features.labels[chosen].astype(np.int32)}


def embeddings(model, variables: dict, features: FeatureMaps, mesh: Mesh, *,
               batch_size: int, is_query: np.ndarray | None = None) -> evaluation.Embeddings:
  """The head's embeddings of a split's cached maps: what evaluation ranks.

  Args:
    model: the :class:`~diml_jax.models.EmbeddingModel` or
      :class:`~diml_jax.models.GroupingModel` being trained.
    variables: its current variables.
    features: the split's :class:`FeatureMaps`.
    mesh: the devices (batches split along ``"data"``).
    batch_size: the global batch size, divisible by the number of devices.
    is_query: the split's ``Dataset.is_query`` (``bool [n]``, In-Shop's test split), or
      ``None``.

  Returns:
    :class:`~diml_jax.evaluation.Embeddings` of the decoded images, in their order:
    global ``[n, d]`` and local ``[n, g * g, d]`` (None for DGML's grouping head), and
    which of them are queries.
  """
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  apply = _head_outputs(model, mesh)
  rows = np.flatnonzero(features.kept)
  host = sampler.host_rows(batch_size, jax.process_index(), jax.process_count())
  outputs = []
  for start in range(0, len(rows), batch_size):
    # Fixed shapes under jit: the last batch repeats its last row.
    chosen = rows[np.minimum(np.arange(start, start + batch_size), len(rows) - 1)][host]
    out = apply(variables, _global(features.pooled[chosen], batch_sharding),
                _global(features.feature_map[chosen], batch_sharding))
    outputs.append(multihost_utils.process_allgather(out, tiled=True))
  outputs = jax.tree.map(lambda *parts: np.concatenate(parts)[:len(rows)], *outputs)
  global_, local = (outputs, None) if isinstance(model, models.GroupingModel) else outputs
  return evaluation.Embeddings(global_, local, features.labels[rows],
                               is_query=None if is_query is None else is_query[rows])
