"""CUB-200-2011 / margin loss with beta 0.6, distance-weighted miner.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cub_margin_b06.py --config.data.root=DIR
  python eval.py --config configs/cub_margin_b06.py --workdir runs/cub_margin_b06
"""
from configs import baselines


def get_config():
  return baselines.baseline("cub", "margin_b06")
