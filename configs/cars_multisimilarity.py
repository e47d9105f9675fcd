"""Cars196 / multi-similarity loss.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cars_multisimilarity.py --config.data.root=DIR
  python eval.py --config configs/cars_multisimilarity.py --workdir runs/cars_multisimilarity
"""
from configs import baselines


def get_config():
  return baselines.baseline("cars", "multisimilarity")
