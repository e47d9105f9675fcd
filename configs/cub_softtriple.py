"""CUB-200-2011 / SoftTriple loss.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cub_softtriple.py --config.data.root=DIR
  python eval.py --config configs/cub_softtriple.py --workdir runs/cub_softtriple
"""
from configs import baselines


def get_config():
  return baselines.baseline("cub", "softtriple")
