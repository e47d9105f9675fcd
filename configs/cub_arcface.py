"""CUB-200-2011 / ArcFace loss.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cub_arcface.py --config.data.root=DIR
  python eval.py --config configs/cub_arcface.py --workdir runs/cub_arcface
"""
from configs import baselines


def get_config():
  return baselines.baseline("cub", "arcface")
