"""Training on a frozen backbone: cached feature maps against images through the backbone.

The demo's setting (``configs/demo.py``): EfficientNet-Lite0 frozen, 160 px, batch 64 (32
classes x 2), the DIML head (4 x 4 grid, 128-d) and the multi-similarity loss on DIML
similarities, Adam on the head. Two ways of taking the same training step, both built by
``train_lib.make_train_step`` exactly as ``train.py`` builds them:

  1. through the backbone (``model.freeze_backbone=True`` before the cache): the frozen
     network's forward pass on the batch's images, then the head and the loss;
  2. on cached maps (``diml_jax.feature_cache``, what ``train.py`` does now): the head and
     the loss on the batch's cached feature maps.

The two alternate step by step after warm-up (compilation is not timed; the batch is
already on the device; decoding and augmentation, which only the first needs, are not
counted). The cached path also pays, once, one forward pass per image to fill the cache:
the embedding rate is timed too, and ``epochs_to_break_even`` is how many epochs it
takes the saving per step to repay it (an embedding pass over the training set costs
about one epoch through the backbone). Weights and images are random: the speed does not
depend on them.

  python benchmarks/frozen_training.py [--json] [--steps 5]

JSON keys: ``ratio`` (step time through the backbone / on cached maps),
``images_per_s`` (on cached maps), ``reference_images_per_s`` (through the backbone),
``embedding_images_per_s``, ``epochs_to_break_even``, ``total_s``, ``peak_rss_gb``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from configs import demo
from diml_jax import experiment, train_lib
from diml_jax.experiment import TrainState


def _parse():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--json", action="store_true", help="end with one JSON line")
  parser.add_argument("--steps", type=int, default=5, help="timed steps of each")
  return parser.parse_args()


def main():
  args = _parse()
  start = time.perf_counter()
  config = demo.get_config()
  config.model.pretrained = False  # the speed does not depend on the weights
  b, size = config.batch_size, config.data.image_size
  mesh = experiment.make_mesh()
  model = experiment.build_model(config)
  params, batch_stats = experiment.init_variables(config, model, num_classes=38)
  tx = experiment.make_optimizer(config, params, steps_per_epoch=40)
  loss_fn = train_lib.make_loss(config, None)

  def state():
    return experiment.replicate(TrainState(step=np.int32(0), params=params,
                                           batch_stats=batch_stats, opt_state=tx.init(params)),
                                mesh)

  rng = np.random.default_rng(0)
  sharding = NamedSharding(mesh, P(experiment.DATA_AXIS))
  labels = np.repeat(np.arange(b // 2), 2).astype(np.int32)
  images = jax.device_put(
      {"image": rng.standard_normal((b, size, size, 3), dtype=np.float32), "label": labels},
      sharding)
  variables = {"params": params["model"], "batch_stats": batch_stats}
  embed = jax.jit(lambda v, x: model.apply(v, x, train=False)[1])
  aux = embed(variables, images["image"])
  maps = jax.device_put({"pooled": aux["pooled"], "feature_map": aux["feature_map"],
                         "label": labels}, sharding)

  steps = {
      "backbone": (train_lib.make_train_step(model, loss_fn, tx, mesh), state(), images),
      "cached": (train_lib.make_train_step(model, loss_fn, tx, mesh, cached_features=True),
                 state(), maps),
  }
  seconds = {"backbone": [], "cached": [], "embedding": []}
  key = jax.random.key(0)
  for name, (step, s, batch) in steps.items():  # warm-up: compilation
    s, m = step(s, batch, key)
    jax.block_until_ready(m)
    steps[name] = (step, s, batch)
  jax.block_until_ready(embed(variables, images["image"]))
  for _ in range(args.steps):
    for name, (step, s, batch) in steps.items():
      tic = time.perf_counter()
      s, m = step(s, batch, key)
      jax.block_until_ready(m)
      seconds[name].append(time.perf_counter() - tic)
      steps[name] = (step, s, batch)
    tic = time.perf_counter()
    jax.block_until_ready(embed(variables, images["image"]))
    seconds["embedding"].append(time.perf_counter() - tic)
  median = {name: float(np.median(s)) for name, s in seconds.items()}
  ratio = median["backbone"] / median["cached"]
  # Filling the cache embeds each training image once: (n / b) embedding batches, repaid
  # by saving (backbone - cached) on each of the epoch's n / b steps.
  break_even = median["embedding"] / (median["backbone"] - median["cached"])
  total = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print(f"Frozen-backbone training step (configs/demo.py): EfficientNet-Lite0, {size} px, "
        f"batch {b}, multi-similarity DIML; {jax.devices()[0].device_kind} "
        f"x{jax.device_count()}, {os.cpu_count()} CPU cores; median of {args.steps} steps\n")
  print(f"{'':<34} {'s/step':>8} {'images/s':>9}")
  for name, label in (("backbone", "through the frozen backbone"),
                      ("cached", "on cached feature maps"),
                      ("embedding", "embedding (fills the cache once)")):
    print(f"{label:<34} {median[name]:>8.3f} {b / median[name]:>9.1f}")
  print(f"\nratio (through the backbone / on cached maps): {ratio:.1f}x; the one-time "
        f"embedding is repaid after {break_even:.2f} epochs")
  print(f"total {total:.0f} s, peak RSS {peak:.2f} GB")
  if args.json:
    print(json.dumps({
        "ratio": round(ratio, 3),
        "images_per_s": round(b / median["cached"], 2),
        "reference_images_per_s": round(b / median["backbone"], 2),
        "embedding_images_per_s": round(b / median["embedding"], 2),
        "epochs_to_break_even": round(break_even, 3),
        "total_s": round(total, 1),
        "peak_rss_gb": round(peak, 3),
    }))


if __name__ == "__main__":
  main()
