"""CUB-200-2011 / triplet loss, semi-hard miner.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cub_triplet_semihard.py --config.data.root=DIR
  python eval.py --config configs/cub_triplet_semihard.py --workdir runs/cub_triplet_semihard
"""
from configs import baselines


def get_config():
  return baselines.baseline("cub", "triplet_semihard")
