"""The full DIML training step: images/s, diml_jax against the published PyTorch step.

One step of ``configs/sop_margin_diml.py`` -- ResNet-50 at 224 px, batch 112 (56 classes x
2), frozen batch norm, the DIML head (4 x 4 grid, 128-d), the margin loss on DIML
distances with distance-weighted sampling, Adam on the network and on the margin's beta --
timed end to end (forward, backward, update; the batch already on the device):

  1. diml_jax: ``train_lib.make_train_step`` exactly as ``train.py`` builds it, over a mesh
     of every device (on a CPU: one device, or one per core with ``--devices``), float32,
     and on an accelerator also with ``--config.model.compute_dtype=bfloat16``'s setting;
  2. the reference (float32, skipped with ``--no-reference``): the same network and head
     in PyTorch (``tests/models/torch_reference.py``) and the published margin-DIML
     criterion (``benchmarks/losses.py``: NumPy sampling, then one matching per
     anchor-positive and anchor-negative pair), ``torch.optim.Adam``.
  3. the share of diml_jax's step spent in matching: the same loss's forward and backward
     on the step's embeddings ([b, 16, 128] local, [b, 128] global), timed alone, over
     the whole step's time.

The two alternate step by step after warm-up (compilation is not timed); each reports its
median step. Weights are random (the speed does not depend on them).

  python benchmarks/train_step.py [--json] [--steps 3] [--batch-size 112] [--image-size 224]
      [--devices N] [--no-reference]

JSON keys: ``ratio`` (diml_jax / reference, float32, images/s; null unless diml_jax ran
on the CPU, the reference's device), ``images_per_s`` (by
dtype), ``reference_images_per_s``, ``matching_share``, ``total_s``, ``peak_rss_gb``,
``device``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import sys
import time


def _parse():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--json", action="store_true", help="end with one JSON line")
  parser.add_argument("--steps", type=int, default=3, help="timed steps of each")
  parser.add_argument("--batch-size", type=int, default=112)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--devices", type=int, default=1,
                      help="CPU only: split the CPU into this many JAX devices")
  parser.add_argument("--no-reference", action="store_true", help="skip PyTorch")
  return parser.parse_args()


ARGS = _parse()
if ARGS.devices > 1:  # before JAX starts
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={ARGS.devices}")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np
import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import losses as published  # the published criterion, in PyTorch
from configs import common
from diml_jax import experiment, train_lib
from diml_jax.models import grid
from jax.sharding import NamedSharding, PartitionSpec as P
from tests.models.torch_reference import TorchBottleneck, TorchResNet


def config_for(dtype: str, batch_size: int, image_size: int):
  c = common.paper("sop", "margin", diml=True)
  c.batch_size, c.data.image_size = batch_size, image_size
  c.model.pretrained = False
  c.model.compute_dtype = dtype
  return c


def ours(dtype: str, images: np.ndarray, labels: np.ndarray):
  """``(step(), loss_only())``: diml_jax's update and its loss alone, each blocking."""
  config = config_for(dtype, len(labels), images.shape[1])
  mesh = experiment.make_mesh()
  model = experiment.build_model(config)
  num_classes = int(labels.max()) + 1
  params, batch_stats = experiment.init_variables(config, model, num_classes)
  tx = experiment.make_optimizer(config, params, steps_per_epoch=100)
  state = experiment.replicate(experiment.TrainState(
      step=np.int32(0), params=params, batch_stats=batch_stats,
      opt_state=tx.init(params)), mesh)
  loss_fn = train_lib.make_loss(config, mesh if jax.device_count() > 1 else None)
  train_step = train_lib.make_train_step(model, loss_fn, tx, mesh)
  sharding = NamedSharding(mesh, P(experiment.DATA_AXIS))
  batch = jax.device_put({"image": images, "label": labels}, sharding)
  key = jax.random.key(0)
  holder = {"state": state}

  def step():
    holder["state"], m = train_step(holder["state"], batch, key)
    jax.block_until_ready(m)

  global_, aux = jax.jit(lambda p, x: model.apply(
      {"params": p["model"], "batch_stats": batch_stats}, x))(params, batch["image"])
  loss_grad = jax.jit(jax.value_and_grad(
      lambda lp, g, l: loss_fn(lp, g, {"local": l}, batch["label"], key).loss,
      argnums=(0, 1, 2)))

  def loss_only():
    jax.block_until_ready(loss_grad(params["loss"], global_, aux["local"]))

  return step, loss_only


class TorchDIML(torch.nn.Module):
  """ResNet-50 and the published DIML head: 16 x 16 bilinear, 4 x 4 pooling, 1x1 conv."""

  def __init__(self):
    super().__init__()
    self.backbone = TorchResNet(TorchBottleneck, [3, 4, 6, 3])
    self.embedding = torch.nn.Conv2d(2048, 128, 1)

  def forward(self, x):
    fmap, _ = self.backbone(x)
    fmap = F.interpolate(fmap, size=grid.RESIZE_TO, mode="bilinear", align_corners=True)
    local = self.embedding(F.adaptive_avg_pool2d(fmap, 4))
    return local.flatten(2).transpose(1, 2)  # [b, 16, 128], raw: the criterion normalises


def reference(images: np.ndarray, labels: np.ndarray):
  """The published step in PyTorch (float32, CPU, all cores), blocking."""
  torch.set_num_threads(os.cpu_count() or 1)
  model = TorchDIML()
  for m in model.modules():  # frozen batch norm, as in the papers
    if isinstance(m, torch.nn.BatchNorm2d):
      m.eval()
      m.requires_grad_(False)
  beta = torch.full((int(labels.max()) + 1,), 1.2, requires_grad=True)
  opt = torch.optim.Adam([{"params": [p for p in model.parameters() if p.requires_grad],
                           "lr": 1e-5, "weight_decay": 4e-4},
                          {"params": [beta], "lr": 5e-4}])
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  rng = np.random.default_rng(0)

  def step():
    opt.zero_grad()
    local = model(x)
    triplets = published.torch_distance_weighted(local.detach(), labels, rng)
    published.torch_margin_diml(local, labels, beta, triplets).backward()
    opt.step()

  return step


def interleaved_median(runs: dict, steps: int) -> dict:
  """Median seconds of each ``runs[name]()`` after one untimed call, alternating."""
  for run in runs.values():
    run()
  seconds = {name: [] for name in runs}
  for _ in range(steps):
    for name, run in runs.items():
      tic = time.perf_counter()
      run()
      seconds[name].append(time.perf_counter() - tic)
  return {name: float(np.median(s)) for name, s in seconds.items()}


def main():
  start = time.perf_counter()
  b, size = ARGS.batch_size, ARGS.image_size
  if b % 2 or b % jax.device_count():
    sys.exit(f"--batch-size {b} must be even and divisible by the {jax.device_count()} devices")
  rng = np.random.default_rng(0)
  images = rng.standard_normal((b, size, size, 3), dtype=np.float32)
  labels = np.repeat(np.arange(b // 2), 2).astype(np.int32)
  accelerator = jax.default_backend() != "cpu"
  dtypes = ("float32", "bfloat16") if accelerator else ("float32",)

  runs = {}
  for dtype in dtypes:
    runs[dtype], loss_only = ours(dtype, images, labels)
    if dtype == "float32":
      runs["matching"] = loss_only
  if not ARGS.no_reference:
    runs["reference"] = reference(images, labels)
  seconds = interleaved_median(runs, ARGS.steps)
  total = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

  device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
  ips = {d: b / seconds[d] for d in dtypes}
  share = seconds["matching"] / seconds["float32"]
  print(f"DIML training step (configs/sop_margin_diml.py): ResNet-50, {size} px, batch {b}; "
        f"{device}, {os.cpu_count()} CPU cores; median of {ARGS.steps} steps\n")
  print(f"{'':<28} {'s/step':>8} {'images/s':>9}")
  for d in dtypes:
    print(f"{'diml_jax ' + d:<28} {seconds[d]:>8.2f} {ips[d]:>9.1f}")
  if "reference" in seconds:
    print(f"{'reference (PyTorch, CPU)':<28} {seconds['reference']:>8.2f} "
          f"{b / seconds['reference']:>9.1f}")
  print(f"\nmatching (the margin-DIML loss, forward + backward, alone): "
        f"{seconds['matching'] * 1e3:.0f} ms, {share:.1%} of diml_jax's float32 step")
  # The reference runs on the CPU: a ratio compares like with like only when diml_jax ran
  # on the CPU too; on an accelerator the images/s of both are printed and ratio is null.
  same_kind = jax.default_backend() == "cpu"
  ratio = (seconds["reference"] / seconds["float32"]
           if "reference" in seconds and same_kind else None)
  if ratio is not None:
    print(f"ratio (diml_jax / reference, float32): {ratio:.2f}x")
  elif "reference" in seconds:
    print(f"no ratio: diml_jax ran on {jax.default_backend()}, the reference on the CPU")
  print(f"total {total:.0f} s, peak RSS {peak:.2f} GB")
  if ARGS.json:
    print(json.dumps({
        "ratio": None if ratio is None else round(ratio, 3),
        "images_per_s": {d: round(v, 2) for d, v in ips.items()},
        "reference_images_per_s": (round(b / seconds["reference"], 2)
                                   if "reference" in seconds else None),
        "matching_share": round(share, 4),
        "total_s": round(total, 1),
        "peak_rss_gb": round(peak, 3),
        "device": device,
    }))


if __name__ == "__main__":
  main()
