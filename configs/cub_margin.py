"""CUB-200-2011 / margin loss (beta 1.2), distance-weighted miner.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cub_margin.py --config.data.root=DIR
  python eval.py --config configs/cub_margin.py --workdir runs/cub_margin
"""
from configs import baselines


def get_config():
  return baselines.baseline("cub", "margin")
