"""Cars196 / ArcFace loss.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cars_arcface.py --config.data.root=DIR
  python eval.py --config configs/cars_arcface.py --workdir runs/cars_arcface
"""
from configs import baselines


def get_config():
  return baselines.baseline("cars", "arcface")
