"""Input pipeline speed: decoded + augmented training images per second at 224 px.

Ours: ``diml_jax.data.train_iterator`` (grain; decoding in parallel; float32 batches).
Reference: what a user would pick instead, a ``torch.utils.data.DataLoader`` with the same
number of worker processes doing the same work for the same images in the same order:
open, RGB (alpha on white), letterbox (clip art), random resized crop, flip,
``(x / 255 - mean) / std`` per image, stacked into batches. The two run alternately, in
rounds, so load from other processes on the machine falls on both alike. Both are timed at
their steady rate: their start-up (spawning workers) and the batches their buffers may
hold are not counted. A plain single-process loop is shown too, for scale.

The data are the OpenClipArt demo set (``apt-get install openclipart-png``), or the
synthetic set (said so in the output) where it is not installed.

  python benchmarks/input_pipeline.py            # table
  python benchmarks/input_pipeline.py --json     # table, then one JSON line
"""
import argparse
import io
import json
import os
import resource
import time

import numpy as np
import torch
from PIL import Image

from diml_jax import data
from diml_jax.data import images as images_lib
from diml_jax.data import sampler

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def decode_augment(dataset, i, seed, image_size) -> np.ndarray:
  """One training image as ours makes it: ``[image_size, image_size, 3]`` float32."""
  rng = np.random.default_rng(seed)
  image = images_lib.to_rgb(Image.open(io.BytesIO(dataset.images[int(i)])))
  if dataset.letterbox:
    image = images_lib.letterbox(image)
  left, top, w, h = images_lib.random_resized_crop_box(*image.size, rng)
  image = image.crop((left, top, left + w, top + h)).resize((image_size, image_size),
                                                            Image.BILINEAR)
  if rng.random() < 0.5:
    image = image.transpose(Image.FLIP_LEFT_RIGHT)
  return (np.asarray(image, np.float32) / 255.0 - _MEAN) / _STD


def reference_loop(dataset, indices_by_step, seeds_by_step, image_size):
  """The plain loop: one image after the other in this process. Returns images decoded."""
  count = 0
  for indices, seeds in zip(indices_by_step, seeds_by_step):
    np.stack([decode_augment(dataset, i, seed, image_size) for i, seed in zip(indices, seeds)])
    count += len(indices)
  return count


class TorchImages(torch.utils.data.Dataset):
  """The same images, in the same order, for ``torch.utils.data.DataLoader``."""

  def __init__(self, dataset, indices_by_step, seeds_by_step, image_size):
    self.dataset, self.image_size = dataset, image_size
    self.items = [(i, seed) for indices, seeds in zip(indices_by_step, seeds_by_step)
                  for i, seed in zip(indices, seeds)]

  def __len__(self):
    return len(self.items)

  def __getitem__(self, k):
    i, seed = self.items[k]
    return decode_augment(self.dataset, i, seed, self.image_size)


def stack(images):
  return np.stack(images)


def torch_loader(dataset, indices_by_step, seeds_by_step, image_size, *, workers, prefetch):
  """A DataLoader over these batches with ``workers`` processes (none: this process)."""
  return iter(torch.utils.data.DataLoader(
      TorchImages(dataset, indices_by_step, seeds_by_step, image_size),
      batch_size=len(indices_by_step[0]), num_workers=workers, collate_fn=stack,
      prefetch_factor=prefetch if workers else None))


def peak_rss_gb() -> float:
  """Peak resident memory of this process plus its largest finished child, in GB."""
  own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  return (own + children) / 1e6


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--json", action="store_true", help="print one JSON line last")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=16, help="timed batches per round and side")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--num-workers", type=int, default=None, help="default: all cores")
  parser.add_argument("--num-threads", type=int, default=2)
  parser.add_argument("--prefetch", type=int, default=2)
  parser.add_argument("--synthetic", action="store_true", help="use the synthetic set")
  args = parser.parse_args()
  start = time.perf_counter()

  try:
    if args.synthetic:
      raise FileNotFoundError("--synthetic")
    dataset = data.load("openclipart", "train")
    source = f"OpenClipArt demo set, train split ({len(dataset)} images)"
  except FileNotFoundError as e:
    dataset = data.load("synthetic", "train", num_classes=64, images_per_class=16,
                        image_size=256)
    why = "--synthetic" if args.synthetic else f"the demo set is not installed: {e}"
    source = f"SYNTHETIC set ({len(dataset)} images, 256 px), {why}"
  cores = len(os.sched_getaffinity(0))
  index = sampler.class_index(dataset.labels)

  workers = cores if args.num_workers is None else args.num_workers
  # Batches that can be ready or in the making when timing starts: drained untimed, so
  # the timed ones are made at the steady rate, not before the clock started.
  warmup = max(workers, 1) * (args.num_threads + args.prefetch)
  ours_images = ours_seconds = ref_images = ref_seconds = startup = 0.0
  torch_images = torch_seconds = 0.0
  for round_ in range(args.rounds):
    first = round_ * (warmup + args.steps)  # every round draws new batches
    iterator = data.train_iterator(
        dataset, batch_size=args.batch_size, image_size=args.image_size, seed=0,
        start_step=first, num_steps=warmup + args.steps, num_workers=args.num_workers,
        num_threads=args.num_threads, prefetch=args.prefetch, process_index=0,
        process_count=1)
    t0 = time.perf_counter()
    for _ in range(warmup):  # start-up (worker processes) and the buffers: not counted
      next(iterator)
    t1 = time.perf_counter()
    for _ in range(args.steps):
      ours_images += len(next(iterator)["label"])
    t2 = time.perf_counter()
    iterator.close()
    startup += t1 - t0
    ours_seconds += t2 - t1

    steps = range(first, first + warmup + args.steps)  # the steps ours made
    indices = [sampler.batch_indices(index, step=t, seed=0, batch_size=args.batch_size)
               for t in steps]
    seeds = [[(1, 0, t, row) for row in range(args.batch_size)] for t in steps]
    loader = torch_loader(dataset, indices, seeds, args.image_size, workers=workers,
                          prefetch=args.num_threads + args.prefetch)
    for _ in range(warmup):  # as for ours: start-up and buffered batches not counted
      next(loader)
    t3 = time.perf_counter()
    for _ in range(args.steps):
      torch_images += len(next(loader))
    torch_seconds += time.perf_counter() - t3
    del loader
    t4 = time.perf_counter()  # the plain loop, on the batches both timed
    ref_images += reference_loop(dataset, indices[warmup:], seeds[warmup:], args.image_size)
    ref_seconds += time.perf_counter() - t4

  ours_rate = ours_images / ours_seconds
  ref_rate = ref_images / ref_seconds
  torch_rate = torch_images / torch_seconds
  ratio = ours_rate / torch_rate
  print(f"input pipeline, {args.image_size} px, batch {args.batch_size}, {cores} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f}")
  print(f"data: {source}")
  print(f"{'pipeline':<46} {'images':>7} {'seconds':>8} {'images/s':>9}")
  print(f"{'plain PIL loop, one process (for scale)':<46} {int(ref_images):>7} "
        f"{ref_seconds:>8.2f} {ref_rate:>9.1f}")
  torch_name = f"torch DataLoader, {workers} workers (reference)"
  print(f"{torch_name:<46} {int(torch_images):>7} {torch_seconds:>8.2f} {torch_rate:>9.1f}")
  ours_name = f"diml_jax.data, {workers} workers x {args.num_threads} threads"
  print(f"{ours_name:<46} {int(ours_images):>7} {ours_seconds:>8.2f} {ours_rate:>9.1f}")
  print(f"ratio ours / DataLoader: {ratio:.2f}x, ours / plain loop: {ours_rate / ref_rate:.2f}x;"
        f" not counted: start-up + {warmup} buffered batches of each "
        f"(ours: {startup / args.rounds:.2f} s a round)")
  total = time.perf_counter() - start
  if args.json:
    print(json.dumps({"ratio": round(ratio, 3), "total_s": round(total, 2),
                      "peak_rss_gb": round(peak_rss_gb(), 3),
                      "images_per_s": round(ours_rate, 1),
                      "reference_images_per_s": round(torch_rate, 1),
                      "plain_loop_images_per_s": round(ref_rate, 1), "data": dataset.name}))


if __name__ == "__main__":
  main()
