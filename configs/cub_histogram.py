"""CUB-200-2011 / histogram loss (65 bins).

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cub_histogram.py --config.data.root=DIR
  python eval.py --config configs/cub_histogram.py --workdir runs/cub_histogram
"""
from configs import baselines


def get_config():
  return baselines.baseline("cub", "histogram")
