"""Cars196 / margin loss (beta 1.2), distance-weighted miner, 64-d embeddings.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cars_margin_64.py --config.data.root=DIR
  python eval.py --config configs/cars_margin_64.py --workdir runs/cars_margin_64
"""
from configs import baselines


def get_config():
  return baselines.baseline("cars", "margin", embed_dim=64)
