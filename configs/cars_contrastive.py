"""Cars196 / contrastive loss, distance-weighted miner.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cars_contrastive.py --config.data.root=DIR
  python eval.py --config configs/cars_contrastive.py --workdir runs/cars_contrastive
"""
from configs import baselines


def get_config():
  return baselines.baseline("cars", "contrastive")
