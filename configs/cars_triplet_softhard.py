"""Cars196 / triplet loss, soft-hard miner.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cars_triplet_softhard.py --config.data.root=DIR
  python eval.py --config configs/cars_triplet_softhard.py --workdir runs/cars_triplet_softhard
"""
from configs import baselines


def get_config():
  return baselines.baseline("cars", "triplet_softhard")
