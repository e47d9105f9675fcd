"""Class-balanced batches as a pure function of ``(seed, step)``.

A global batch of ``batch_size`` images is ``batch_size // m`` distinct classes drawn
uniformly, each with ``m`` of its images drawn without replacement (with replacement only
for a class with fewer than ``m`` images), laid out class by class:
``[c0, c0, c1, c1, ...]`` for ``m = 2``. This is the class-random sampler of the DIML code
base (Roth et al., "Revisiting Training Strategies ... in DML", ICML 2020), which the DIML
papers train with: batch 112 = 56 classes x 2.

Because step ``t``'s batch depends on ``(seed, t)`` only, a run restarted at step ``t``
continues with exactly the batches it would have seen, whatever the number of hosts or
workers; and host ``p`` of ``P`` takes rows ``[p * b / P, (p + 1) * b / P)`` of every global
batch, so the hosts' shards put together are the global batch.
"""
from typing import NamedTuple

import numpy as np


class ClassIndex(NamedTuple):
  """The images of each class: ``order[offsets[c]:offsets[c + 1]]`` are class ``c``'s.

  Attributes:
    order: ``int64 [n]`` image indices sorted by label (stable).
    offsets: ``int64 [num_classes + 1]`` start of each class in ``order``.
  """
  order: np.ndarray
  offsets: np.ndarray

  @property
  def num_classes(self) -> int:
    return len(self.offsets) - 1

  def members(self, label: int) -> np.ndarray:
    return self.order[self.offsets[label]:self.offsets[label + 1]]


def class_index(labels: np.ndarray) -> ClassIndex:
  """Groups image indices by label. ``labels``: ``int [n]`` in ``0 .. num_classes - 1``."""
  labels = np.asarray(labels)
  counts = np.bincount(labels)
  if (counts == 0).any():
    raise ValueError(f"labels must be contiguous; label(s) {np.flatnonzero(counts == 0)[:5]} "
                     "have no image.")
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  return ClassIndex(order=np.argsort(labels, kind="stable").astype(np.int64), offsets=offsets)


def check_batch_size(batch_size: int, images_per_class: int, num_classes: int,
                     process_count: int = 1) -> None:
  """Raises ``ValueError`` unless a class-balanced batch of this shape can be drawn."""
  if images_per_class < 1 or batch_size % images_per_class:
    raise ValueError(f"batch_size={batch_size} must be a multiple of "
                     f"images_per_class={images_per_class} >= 1.")
  if batch_size // images_per_class > num_classes:
    raise ValueError(f"batch_size={batch_size} needs {batch_size // images_per_class} distinct "
                     f"classes of {images_per_class} images, but the data set has {num_classes}.")
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} must be divisible by process_count={process_count}.")


def batch_indices(index: ClassIndex, *, step: int, seed: int, batch_size: int,
                  images_per_class: int = 2) -> np.ndarray:
  """Image indices of the global batch of ``step``.

  Args:
    index: from :func:`class_index`.
    step: training step (>= 0); the batch is a pure function of ``(seed, step)``.
    seed: sampler seed.
    batch_size: global batch size ``b``, a multiple of ``images_per_class``.
    images_per_class: ``m``, images of each class in the batch.

  Returns:
    ``int64 [b]``: ``m`` images of class 0 of the batch, then ``m`` of class 1, ...
  """
  check_batch_size(batch_size, images_per_class, index.num_classes)
  rng = np.random.default_rng((seed, step))
  classes = rng.choice(index.num_classes, batch_size // images_per_class, replace=False)
  out = []
  for label in classes:
    members = index.members(label)
    out.append(rng.choice(members, images_per_class, replace=len(members) < images_per_class))
  return np.concatenate(out)


def host_rows(batch_size: int, process_index: int, process_count: int) -> slice:
  """The rows of a global batch that host ``process_index`` of ``process_count`` reads."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, {process_count}).")
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} must be divisible by process_count={process_count}.")
  per_host = batch_size // process_count
  return slice(process_index * per_host, (process_index + 1) * per_host)
