"""Forward throughput of the backbones: images/s at 224 px, ours (Flax, jitted) against the
same network in PyTorch, measured in the same run with the same weights.

  python benchmarks/backbone.py            # a table
  python benchmarks/backbone.py --json     # ... and one JSON object as the last line

Networks: ResNet-50 and BN-Inception (random weights with random batch-norm statistics) and
EfficientNet-Lite0 (its real ImageNet weights), all in inference mode with their ImageNet
classifier. The
PyTorch networks are the independent references of the parity tests
(``tests/models/torch_reference.py``), loaded with the very state dict our model is converted
from. Ours and PyTorch alternate call by call after warm-up and each reports its median call,
so other load on a shared machine falls on both alike. On a GPU, ours also runs in bfloat16 (``dtype=jnp.bfloat16``); PyTorch runs float32 on
its own best device, so a ratio compares devices only where both ran on the same one.

JSON keys: ``ratio`` (geometric mean over networks of ours / PyTorch, float32, same device;
higher is better), ``ratios``, ``images_per_s`` (ours, by ``network/dtype``),
``torch_images_per_s``, ``total_s``, ``peak_rss_gb``, ``device``, ``batch_size``.
"""
import argparse
import json
import math
import os
import pathlib
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=g-import-not-at-top,wrong-import-position
from diml_jax.models import (LITE0_STAGES, BNInception, EfficientNetLite0, ResNet50,
                             backbone_variables, lite0_weights_path, load_state_dict)
from tests.models.torch_reference import (TorchBNInception, TorchBottleneck,
                                          TorchEfficientNetLite, TorchResNet,
                                          randomize_batch_norm)


_WARMUP_CALLS = 3


def _interleaved_throughput(runs: dict, batch_size: int, min_seconds: float,
                            min_rounds: int) -> dict:
  """Median images/s of each ``runs[name]()`` (which blocks until done), after warm-up.

  The runs alternate round by round so that load from other processes on a shared machine
  falls on all of them alike. PyTorch's first calls on a CPU are several times slower than
  its steady state (oneDNN primitives, allocator), hence a few warm-up calls.
  """
  for run in runs.values():
    for _ in range(_WARMUP_CALLS):
      run()
  seconds = {name: [] for name in runs}
  start, rounds = time.perf_counter(), 0
  while rounds < min_rounds or time.perf_counter() - start < min_seconds:
    for name, run in runs.items():
      tic = time.perf_counter()
      run()
      seconds[name].append(time.perf_counter() - tic)
    rounds += 1
  return {name: batch_size / float(np.median(s)) for name, s in seconds.items()}


def _networks():
  """``(name, flax model, torch model)`` pairs sharing one state dict."""
  torch.manual_seed(0)
  resnet = randomize_batch_norm(TorchResNet(TorchBottleneck, (3, 4, 6, 3))).eval()
  lite = TorchEfficientNetLite(LITE0_STAGES).eval()
  lite.load_state_dict({k: torch.from_numpy(v) for k, v in
                        load_state_dict(lite0_weights_path()).items()})
  bninception = randomize_batch_norm(TorchBNInception()).eval()
  return [("resnet50", ResNet50, resnet), ("lite0", EfficientNetLite0, lite),
          ("bninception", BNInception, bninception)]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--min-seconds", type=float, default=8.0,
                      help="time each network at least this long (all runs together)")
  parser.add_argument("--min-rounds", type=int, default=3)
  parser.add_argument("--json", action="store_true", help="print one JSON line at the end")
  args = parser.parse_args()

  start = time.perf_counter()
  device = jax.devices()[0]
  on_gpu = device.platform == "gpu"
  torch_device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
  same_device = torch_device == ("cuda" if on_gpu else "cpu")
  dtypes = {"f32": jnp.float32, "bf16": jnp.bfloat16} if on_gpu else {"f32": jnp.float32}
  b, s = args.batch_size, args.image_size
  images = np.random.default_rng(0).normal(size=(b, s, s, 3)).astype(np.float32)
  timing = dict(batch_size=b, min_seconds=args.min_seconds, min_rounds=args.min_rounds)

  ours, theirs, rows = {}, {}, []
  for name, ctor, torch_model in _networks():
    state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    torch_model = torch_model.to(torch_device)
    torch_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(torch_device)

    def run_torch(model=torch_model, x=torch_images):
      with torch.inference_mode():
        model(x)[1].cpu()

    runs, compile_s = {"torch": run_torch}, {}
    for dtype_name, dtype in dtypes.items():
      model = ctor(num_classes=1000, dtype=dtype)
      variables = jax.device_put(backbone_variables(state_dict, model), device)
      forward = jax.jit(lambda v, x, model=model: model.apply(v, x)[1]["logits"])
      x = jax.device_put(images, device)
      tic = time.perf_counter()
      jax.block_until_ready(forward(variables, x))
      compile_s[dtype_name] = time.perf_counter() - tic
      runs[dtype_name] = (lambda f=forward, v=variables, x=x:
                          jax.block_until_ready(f(v, x)))
    measured = _interleaved_throughput(runs, **timing)
    theirs[name] = measured["torch"]
    for dtype_name in dtypes:
      key = f"{name}/{dtype_name}"
      ours[key] = measured[dtype_name]
      ratio = ours[key] / theirs[name] if dtype_name == "f32" and same_device else None
      rows.append((key, ours[key], theirs[name], ratio, compile_s[dtype_name]))

  ratios = {k: r for k, _, _, r, _ in rows if r is not None}
  summary = {
      "benchmark": "backbone",
      "device": f"{device.platform}: {device.device_kind} ({jax.local_device_count()} devices,"
                f" torch on {torch_device}, {torch.get_num_threads()} torch threads)",
      "batch_size": b,
      "image_size": s,
      "ratio": math.exp(np.mean(np.log(list(ratios.values())))) if ratios else None,
      "ratios": ratios,
      "images_per_s": ours,
      "torch_images_per_s": theirs,
      "total_s": time.perf_counter() - start,
      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
      # Ratios measured beside another program flatter XLA (PyTorch's threads suffer more).
      "load_average": round(os.getloadavg()[0], 1),
  }
  print(f"Backbone forward at {s} px, batch {b}, on {summary['device']}")
  print(f"{'network/dtype':<16}{'ours img/s':>12}{'torch img/s':>13}{'ours/torch':>12}"
        f"{'compile s':>11}")
  for key, ours_ips, torch_ips, ratio, compile_s in rows:
    ratio_text = f"{ratio:.2f}" if ratio is not None else "-"
    print(f"{key:<16}{ours_ips:>12.1f}{torch_ips:>13.1f}{ratio_text:>12}{compile_s:>11.1f}")
  print(f"total {summary['total_s']:.0f} s, peak RSS {summary['peak_rss_gb']:.2f} GB, "
        f"load average {summary['load_average']:.1f}")
  if args.json:
    print(json.dumps(summary))


if __name__ == "__main__":
  main()
