"""Input pipelines: class-balanced training batches and fixed-order evaluation batches.

Both are grain pipelines over *steps*: element ``t`` is the whole host-local batch of step
``t``, decoded and augmented by one worker. Several batches are prepared at once, by
``num_workers`` processes (``grain`` ``mp_prefetch``; 0 = threads of this process) with
``num_threads`` threads each, and buffered ahead of the training loop. Each batch is a pure
function of ``(seed, step)``, so the output does not depend on the number of workers, and a
run restarted with ``start_step=t`` sees the batches it would have seen.

Batches are numpy dicts of fixed shapes (``b`` = the host's rows of the global batch)::

  train: {"image": float32 [b, s, s, 3], "label": int32 [b]}
  eval:  {"image": float32 [b, s, s, 3], "label": int32 [b], "index": int64 [b], "mask": bool [b]}

A corrupt image is skipped and counted (``on_corrupt="skip"``, the default) and the counts
are logged at the end of each epoch; ``on_corrupt="raise"`` stops with an error naming the
file. In training a skipped image is replaced by the next decodable image of its class,
which keeps the batch class-balanced; in evaluation its row is masked out.
:func:`device_prefetch` then puts batches on devices ahead of use.

Worker processes are spawned (grain), so a script that starts them needs the usual
``if __name__ == "__main__":`` guard (``absl.app.run`` scripts have one).
"""
import collections
import dataclasses
import itertools
import logging
import math
import os
from collections.abc import Iterator

from absl import flags
import grain
import numpy as np

from diml_jax.data import dataset as dataset_lib
from diml_jax.data import images as images_lib
from diml_jax.data import sampler

_log = logging.getLogger(__name__)
_ON_CORRUPT = ("skip", "raise")
# Seed-sequence prefixes keep the sampler's and the augmentation's random streams apart.
_AUGMENT_STREAM = 1
# Enough to feed one accelerator host at DIML's batch sizes; more only cost memory.
_MAX_DEFAULT_WORKERS = 16


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return process_index, process_count


@dataclasses.dataclass(frozen=True)
class _Decoder:
  """Decodes one image of ``dataset``, reporting a corrupt one by its description."""
  dataset: dataset_lib.Dataset
  image_size: int
  on_corrupt: str

  def train(self, index: int, rng: np.random.Generator) -> np.ndarray | None:
    return self._guard(index, lambda data: images_lib.train_image(
        data, rng, image_size=self.image_size, letterbox_to_square=self.dataset.letterbox))

  def eval(self, index: int, resize_size: int | None) -> np.ndarray | None:
    return self._guard(index, lambda data: images_lib.eval_image(
        data, image_size=self.image_size, resize_size=resize_size,
        letterbox_to_square=self.dataset.letterbox))

  def _guard(self, index, decode) -> np.ndarray | None:
    """``decode(bytes)``, or None for a corrupt image when skipping."""
    try:
      return decode(self.dataset.images[index])
    except images_lib.CorruptImageError as e:
      if self.on_corrupt == "raise":
        raise images_lib.CorruptImageError(
            f"{self.dataset.images.describe(index)}: {e} (pass on_corrupt='skip' to skip "
            "corrupt images)") from e
      return None


@dataclasses.dataclass(frozen=True)
class _TrainBatch:
  """Step -> this host's rows of the class-balanced global batch, decoded and augmented."""
  decoder: _Decoder
  index: sampler.ClassIndex
  batch_size: int
  images_per_class: int
  seed: int
  rows: slice
  normalization: images_lib.Normalization

  def __call__(self, step: int) -> tuple[dict[str, np.ndarray], tuple[str, ...], int]:
    """``(batch, descriptions of the skipped images, images decoded)``."""
    indices = sampler.batch_indices(
        self.index, step=step, seed=self.seed, batch_size=self.batch_size,
        images_per_class=self.images_per_class)[self.rows]
    labels = self.decoder.dataset.labels
    images, skipped = [], []
    for row, i in enumerate(indices, start=self.rows.start):
      rng = np.random.default_rng((_AUGMENT_STREAM, self.seed, step, row))
      image, bad = self._decode_or_substitute(int(i), rng)
      images.append(image)
      skipped += bad
    batch = {"image": images_lib.normalize(np.stack(images), self.normalization),
             "label": labels[indices].astype(np.int32)}
    return batch, tuple(skipped), len(images) + len(skipped)

  def _decode_or_substitute(self, i: int, rng) -> tuple[np.ndarray, list[str]]:
    """Image ``i``, or if corrupt the next decodable image of its class (cyclically)."""
    members = self.index.members(self.decoder.dataset.labels[i])
    start = int(np.flatnonzero(members == i)[0])
    skipped = []
    for k in range(len(members)):
      candidate = int(members[(start + k) % len(members)])
      image = self.decoder.train(candidate, rng)
      if image is not None:
        return image, skipped
      skipped.append(self.decoder.dataset.images.describe(candidate))
    dataset = self.decoder.dataset
    raise images_lib.CorruptImageError(
        f"every image of class {dataset.class_names[dataset.labels[i]]!r} is corrupt: {skipped}")


@dataclasses.dataclass(frozen=True)
class _EvalBatch:
  """Step -> this host's rows of the ``step``-th fixed-order global batch, padded and masked."""
  decoder: _Decoder
  batch_size: int
  rows: slice
  resize_size: int | None
  normalization: images_lib.Normalization

  def __call__(self, step: int) -> tuple[dict[str, np.ndarray], tuple[str, ...], int]:
    """``(batch, descriptions of the skipped images, images decoded)``."""
    size = self.decoder.image_size
    n = len(self.decoder.dataset)
    indices = np.arange(step * self.batch_size, (step + 1) * self.batch_size)[self.rows]
    pixels = np.zeros((len(indices), size, size, 3), np.uint8)
    mask = indices < n
    skipped = []
    for row, i in enumerate(indices):
      if mask[row]:
        image = self.decoder.eval(int(i), self.resize_size)
        if image is None:
          mask[row] = False
          skipped.append(self.decoder.dataset.images.describe(int(i)))
        else:
          pixels[row] = image
    labels = np.where(mask, self.decoder.dataset.labels[np.minimum(indices, n - 1)], -1)
    normalized = images_lib.normalize(pixels, self.normalization)
    normalized[~mask] = 0.0
    batch = {"image": normalized,
             "label": labels.astype(np.int32),
             "index": np.where(indices < n, indices, -1).astype(np.int64),
             "mask": mask}
    return batch, tuple(skipped), int(np.sum(indices < n))


class BatchIterator(Iterator[dict[str, np.ndarray]]):
  """Iterates over batches ``step .. stop - 1``; counts skipped corrupt images and logs
  them once per epoch.

  The batches are ordinary numpy arrays of this process: each is copied out of the
  shared memory the workers hand it over in, so the shared block is released at once,
  not whenever (or, at exit, never) the consumer drops the batch. The workers are
  stopped after the last batch, before grain reaches its own end of data, whose
  exception would keep each worker's last block alive to the end of the program
  (both showed as ``resource_tracker`` warnings of leaked shared memory at exit).

  Attributes:
    step: the step of the next batch.
    skipped: ``Counter`` image description -> times skipped, since the start.
    decoded: images this process has decoded since the start (its rows of each batch,
      and the replacements of corrupt ones): what a multi-process run's log reports.
  """

  def __init__(self, grain_iterator, *, step: int, stop: int, steps_per_epoch: int,
               name: str):
    self._iterator = grain_iterator
    self._stop = stop
    self._steps_per_epoch = steps_per_epoch
    self._name = name
    self._epoch_skipped = collections.Counter()
    self.step = step
    self.skipped = collections.Counter()
    self.decoded = 0

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      raise StopIteration
    if self.step >= self._stop:
      self.close()  # stops the workers now, not at garbage collection
      raise StopIteration
    batch, skipped, decoded = next(self._iterator)
    batch = {k: np.array(v) if isinstance(v, grain.multiprocessing.SharedMemoryArray) else v
             for k, v in batch.items()}
    self.skipped.update(skipped)
    self.decoded += decoded
    self._epoch_skipped.update(skipped)
    self.step += 1
    if self.step % self._steps_per_epoch == 0:
      self._report(self.step // self._steps_per_epoch - 1)
    return batch

  def _report(self, epoch: int) -> None:
    if self._epoch_skipped:
      _log.warning("%s, epoch %d: skipped %d corrupt image(s): %s", self._name, epoch,
                   sum(self._epoch_skipped.values()), dict(self._epoch_skipped))
    self._epoch_skipped.clear()

  def close(self) -> None:
    """Stops the worker processes (also done after the last batch)."""
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None


def _grain_iterator(batch_fn, start: int, num_workers: int | None, num_threads: int,
                    prefetch: int):
  """Endless: :class:`BatchIterator` stops it (a range has to end; 2**62 steps do not)."""
  if num_workers is None:
    num_workers = min(len(os.sched_getaffinity(0)), _MAX_DEFAULT_WORKERS)
  ds = grain.MapDataset.range(start, 2**62).map(batch_fn)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
  if num_workers > 0:
    # grain's worker start-up reads an absl flag; outside absl.app nobody parsed the flags.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=prefetch))
  return iter(ds)


def _check_common(image_size: int, on_corrupt: str, num_threads: int, prefetch: int) -> None:
  if image_size < 1:
    raise ValueError(f"image_size={image_size} must be >= 1.")
  if on_corrupt not in _ON_CORRUPT:
    raise ValueError(f"on_corrupt={on_corrupt!r} must be one of {_ON_CORRUPT}.")
  if num_threads < 1 or prefetch < 1:
    raise ValueError(f"num_threads={num_threads} and prefetch={prefetch} must be >= 1.")


def train_iterator(
    dataset: dataset_lib.Dataset,
    *,
    batch_size: int,
    images_per_class: int = 2,
    image_size: int = 224,
    seed: int = 0,
    start_step: int = 0,
    num_steps: int | None = None,
    normalization: str | images_lib.Normalization = "imagenet",
    num_workers: int | None = None,
    num_threads: int = 2,
    prefetch: int = 2,
    on_corrupt: str = "skip",
    process_index: int | None = None,
    process_count: int | None = None,
) -> BatchIterator:
  """Class-balanced, augmented training batches from step ``start_step`` on.

  Args:
    dataset: the training split.
    batch_size: global batch size ``B`` (all hosts), a multiple of ``images_per_class``.
    images_per_class: ``m``; each batch holds ``B / m`` classes x ``m`` images.
    image_size: side ``s`` of the random resized crops.
    seed: the batches and their augmentation are a function of ``(seed, step)``.
    start_step: first step to produce (the step to resume at).
    num_steps: how many steps; endless when None.
    normalization: ``"imagenet"``, ``"efficientnet_lite"`` or a ``Normalization``.
    num_workers: worker processes; 0 decodes in threads of this process; one per CPU core
      (at most 16) when None.
    num_threads: threads per process, each preparing a batch.
    prefetch: batches buffered per process.
    on_corrupt: ``"skip"`` (replace by another image of the class, count, log at epoch end)
      or ``"raise"``.
    process_index, process_count: this host and the number of hosts; from JAX when None.

  Returns:
    A :class:`BatchIterator` of ``{"image": float32 [b, s, s, 3], "label": int32 [b]}``
    with ``b = B / process_count`` rows: this host's share of each global batch. Labels
    are ``dataset.labels`` (contiguous); ``dataset.class_ids[label]`` is the archive's id.
    An epoch is ``len(dataset) // B`` steps.
  """
  _check_common(image_size, on_corrupt, num_threads, prefetch)
  process_index, process_count = _process(process_index, process_count)
  sampler.check_batch_size(batch_size, images_per_class, dataset.num_classes, process_count)
  batch_fn = _TrainBatch(
      decoder=_Decoder(dataset, image_size, on_corrupt),
      index=sampler.class_index(dataset.labels),
      batch_size=batch_size,
      images_per_class=images_per_class,
      seed=seed,
      rows=sampler.host_rows(batch_size, process_index, process_count),
      normalization=images_lib.get_normalization(normalization))
  stop = start_step + num_steps if num_steps is not None else 2**62
  return BatchIterator(
      _grain_iterator(batch_fn, start_step, num_workers, num_threads, prefetch),
      step=start_step, stop=stop, steps_per_epoch=max(1, len(dataset) // batch_size),
      name=f"{dataset.name}/{dataset.split}")


def eval_iterator(
    dataset: dataset_lib.Dataset,
    *,
    batch_size: int,
    image_size: int = 224,
    resize_size: int | None = None,
    normalization: str | images_lib.Normalization = "imagenet",
    num_workers: int | None = None,
    num_threads: int = 2,
    prefetch: int = 2,
    on_corrupt: str = "skip",
    process_index: int | None = None,
    process_count: int | None = None,
) -> BatchIterator:
  """One pass over ``dataset`` in order, in fixed-shape batches.

  Image ``i`` is row ``i % B`` of global batch ``i // B``; the last batch is padded. Padded
  rows and corrupt images have ``mask`` False, ``label`` -1, a zero image, and (padded
  rows) ``index`` -1, so every batch has the same shape under ``jit``.

  Args:
    dataset: the split to embed.
    batch_size: global batch size ``B``, divisible by ``process_count``.
    image_size: side ``s`` of the centre crop (224).
    resize_size: shorter side before cropping; ``round(s * 256 / 224)`` when None.
    normalization, num_workers, num_threads, prefetch, on_corrupt, process_index,
      process_count: as for :func:`train_iterator`.

  Returns:
    A :class:`BatchIterator` of ``ceil(len(dataset) / B)`` batches of
    ``{"image": float32 [b, s, s, 3], "label": int32 [b], "index": int64 [b],
    "mask": bool [b]}``, ``b = B / process_count``.
  """
  _check_common(image_size, on_corrupt, num_threads, prefetch)
  process_index, process_count = _process(process_index, process_count)
  batch_fn = _EvalBatch(
      decoder=_Decoder(dataset, image_size, on_corrupt),
      batch_size=batch_size,
      rows=sampler.host_rows(batch_size, process_index, process_count),
      resize_size=resize_size,
      normalization=images_lib.get_normalization(normalization))
  num_batches = math.ceil(len(dataset) / batch_size)
  return BatchIterator(
      _grain_iterator(batch_fn, 0, num_workers, num_threads, prefetch),
      step=0, stop=num_batches, steps_per_epoch=num_batches,
      name=f"{dataset.name}/{dataset.split}")


def device_prefetch(batches: Iterator[dict[str, np.ndarray]], sharding, *,
                    size: int = 2) -> Iterator[dict]:
  """Puts batches on devices ``size`` steps ahead of use.

  Transfers are asynchronous, so keeping ``size`` batches in flight overlaps the copy of
  the next batches with the current step (Flax's ImageNet example does the same).

  Args:
    batches: host-local numpy batches (this host's rows of each global batch).
    sharding: a ``jax.sharding.Sharding`` of the global batch, e.g.
      ``NamedSharding(mesh, PartitionSpec("data"))``; every leaf is sharded along its
      first axis by it.
    size: batches in flight.

  Yields:
    The same dicts as global ``jax.Array``\\ s (``jax.make_array_from_process_local_data``).
  """
  import jax  # pylint: disable=g-import-not-at-top
  if size < 1:
    raise ValueError(f"size={size} must be >= 1.")
  batches = iter(batches)

  def put(batch):
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)

  queue = collections.deque(put(b) for b in itertools.islice(batches, size))
  while queue:
    yield queue.popleft()
    queue.extend(put(b) for b in itertools.islice(batches, 1))
