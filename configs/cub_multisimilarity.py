"""CUB-200-2011 / multi-similarity loss.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cub_multisimilarity.py --config.data.root=DIR
  python eval.py --config configs/cub_multisimilarity.py --workdir runs/cub_multisimilarity
"""
from configs import baselines


def get_config():
  return baselines.baseline("cub", "multisimilarity")
