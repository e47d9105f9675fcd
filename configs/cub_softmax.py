"""CUB-200-2011 / normalised softmax loss.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cub_softmax.py --config.data.root=DIR
  python eval.py --config configs/cub_softmax.py --workdir runs/cub_softmax
"""
from configs import baselines


def get_config():
  return baselines.baseline("cub", "softmax")
