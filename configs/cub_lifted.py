"""CUB-200-2011 / generalised lifted-structure loss (unnormalised embeddings).

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cub_lifted.py --config.data.root=DIR
  python eval.py --config configs/cub_lifted.py --workdir runs/cub_lifted
"""
from configs import baselines


def get_config():
  return baselines.baseline("cub", "lifted")
