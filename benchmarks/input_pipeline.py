"""Input pipeline speed: decoded + augmented training images per second at 224 px.

Ours: ``diml_jax.data.train_iterator`` (grain; decoding in parallel; float32 batches).
Reference: a plain single-process PIL loop doing the same work for the same images in the
same order: open, RGB (alpha on white), letterbox (clip art), random resized crop, flip,
``(x / 255 - mean) / std`` per image, stack. The two run alternately, in rounds, so load
from other processes on the machine falls on both alike. Ours is timed at its steady rate:
its start-up (spawning workers) and the batches its buffers may hold are not counted.

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
from PIL import Image

from diml_jax import data
from diml_jax.data import images as images_lib
from diml_jax.data import sampler

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def reference_loop(dataset, indices_by_step, seeds_by_step, image_size):
  """The plain loop: one image after the other in this process. Returns images decoded."""
  count = 0
  for indices, seeds in zip(indices_by_step, seeds_by_step):
    batch = []
    for i, seed in zip(indices, seeds):
      rng = np.random.default_rng(seed)
      image = images_lib.to_rgb(Image.open(io.BytesIO(dataset.images[int(i)])))
      if dataset.letterbox:
        image = images_lib.letterbox(image)
      left, top, w, h = images_lib.random_resized_crop_box(*image.size, rng)
      image = image.crop((left, top, left + w, top + h)).resize((image_size, image_size),
                                                                Image.BILINEAR)
      if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
      batch.append((np.asarray(image, np.float32) / 255.0 - _MEAN) / _STD)
    np.stack(batch)
    count += len(batch)
  return count


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

    steps = range(first + warmup, first + warmup + args.steps)  # the steps ours timed
    indices = [sampler.batch_indices(index, step=t, seed=0, batch_size=args.batch_size)
               for t in steps]
    seeds = [[(1, 0, t, row) for row in range(args.batch_size)] for t in steps]
    t3 = time.perf_counter()
    ref_images += reference_loop(dataset, indices, seeds, args.image_size)
    ref_seconds += time.perf_counter() - t3

  ours_rate = ours_images / ours_seconds
  ref_rate = ref_images / ref_seconds
  ratio = ours_rate / ref_rate
  print(f"input pipeline, {args.image_size} px, batch {args.batch_size}, {cores} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f}")
  print(f"data: {source}")
  print(f"{'pipeline':<46} {'images':>7} {'seconds':>8} {'images/s':>9}")
  print(f"{'plain PIL loop, one process (reference)':<46} {int(ref_images):>7} "
        f"{ref_seconds:>8.2f} {ref_rate:>9.1f}")
  ours_name = f"diml_jax.data, {workers} workers x {args.num_threads} threads"
  print(f"{ours_name:<46} {int(ours_images):>7} {ours_seconds:>8.2f} {ours_rate:>9.1f}")
  print(f"ratio ours / reference: {ratio:.2f}x (target >= 1.8x on 2 cores); not counted: "
        f"start-up + {warmup} buffered batches of ours, {startup / args.rounds:.2f} s a round")
  total = time.perf_counter() - start
  if args.json:
    print(json.dumps({"ratio": round(ratio, 3), "total_s": round(total, 2),
                      "peak_rss_gb": round(peak_rss_gb(), 3),
                      "images_per_s": round(ours_rate, 1),
                      "reference_images_per_s": round(ref_rate, 1), "data": dataset.name}))


if __name__ == "__main__":
  main()
