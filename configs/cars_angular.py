"""Cars196 / angular loss (N-pair miner, unnormalised embeddings).

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cars_angular.py --config.data.root=DIR
  python eval.py --config configs/cars_angular.py --workdir runs/cars_angular
"""
from configs import baselines


def get_config():
  return baselines.baseline("cars", "angular")
