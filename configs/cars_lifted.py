"""Cars196 / generalised lifted-structure loss (unnormalised embeddings).

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cars_lifted.py --config.data.root=DIR
  python eval.py --config configs/cars_lifted.py --workdir runs/cars_lifted
"""
from configs import baselines


def get_config():
  return baselines.baseline("cars", "lifted")
