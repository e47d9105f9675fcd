"""One pass of a split's images through a jitted function, each output row in its image's
place: how evaluation embeds a split (:func:`diml_jax.eval_lib.embed`) and how the feature
cache runs it through the frozen backbone (:mod:`diml_jax.feature_cache`).

Every process decodes its rows of each batch (:func:`diml_jax.data.eval_iterator`, the test
transform), the batch is split over the mesh along ``"data"``, and every process then gets
the whole output; padded rows and images that could not be decoded are left out.
"""
from __future__ import annotations

import collections
from typing import Callable, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diml_jax import data, experiment
from diml_jax.experiment import DATA_AXIS

__all__ = ["embed_split"]


def embed_split(
    config: ml_collections.ConfigDict,
    model,
    dataset: data.Dataset,
    mesh: Mesh,
    apply: Callable[[jax.Array], Sequence[jax.Array]],
    allocate: Callable[[list[tuple[int, ...]]], Sequence[np.ndarray]],
    *,
    desc: str | None = None,
) -> tuple[Sequence[np.ndarray], np.ndarray]:
  """Runs ``apply`` over every image of ``dataset`` and writes its outputs by image index.

  Args:
    config: the run's config (``eval.batch_size``, ``data.image_size``,
      ``data.resize_size``, ``data.num_workers``).
    model: the model whose backbone's pixel normalisation the images get.
    dataset: the split.
    mesh: the devices; each batch is split along ``"data"``.
    apply: ``images [B, s, s, 3] -> (out [B, ...], ...)``, jitted, batch-sharded.
    allocate: called once with the shapes ``[...]`` of one row of each output; returns
      the arrays ``[n, ...]`` to write the rows into (in memory, or memory-mapped files).
    desc: a progress bar's label (process 0 only); ``None``: no bar.

  Returns:
    ``(arrays, kept)``: ``allocate``'s arrays, row ``i`` the outputs of image ``i``, and
    ``kept [n]`` bool, False for an image that could not be decoded (its rows untouched).
  """
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  batches = data.eval_iterator(
      dataset, batch_size=config.eval.batch_size, image_size=config.data.image_size,
      resize_size=config.data.resize_size, normalization=experiment.normalization(model),
      num_workers=None if config.data.num_workers < 0 else config.data.num_workers)
  host = collections.deque()  # index and mask stay on the host, in step with the images

  def images():
    for batch in batches:
      host.append((batch["index"], batch["mask"]))
      yield {"image": batch["image"]}

  n = len(dataset)
  arrays, kept = None, np.zeros(n, bool)
  bar = tqdm.tqdm(total=-(-n // config.eval.batch_size), unit="batch", leave=False, desc=desc,
                  disable=desc is None or jax.process_index() != 0)
  try:
    for batch in data.device_prefetch(images(), batch_sharding):
      outs = multihost_utils.process_allgather(apply(batch["image"]), tiled=True)
      index, mask = (multihost_utils.process_allgather(a, tiled=True) for a in host.popleft())
      if arrays is None:  # the shapes are known now
        arrays = allocate([o.shape[1:] for o in outs])
      keep = mask & (index >= 0)
      for array, out in zip(arrays, outs):
        array[index[keep]] = out[keep]
      kept[index[keep]] = True
      bar.update()
  finally:
    bar.close()
  if jax.process_count() > 1:
    logging.info("Process %d of %d embedded %d of the %d images of %s", jax.process_index(),
                 jax.process_count(), batches.decoded, n, dataset)
  if not kept.all():
    logging.warning("%d of %d %s images could not be decoded and are left out",
                    n - kept.sum(), n, dataset)
  return arrays, kept
