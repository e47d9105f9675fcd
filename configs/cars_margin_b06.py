"""Cars196 / margin loss with beta 0.6, distance-weighted miner.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cars_margin_b06.py --config.data.root=DIR
  python eval.py --config configs/cars_margin_b06.py --workdir runs/cars_margin_b06
"""
from configs import baselines


def get_config():
  return baselines.baseline("cars", "margin_b06")
