"""CUB-200-2011 / ProxyNCA loss.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cub_proxynca.py --config.data.root=DIR
  python eval.py --config configs/cub_proxynca.py --workdir runs/cub_proxynca
"""
from configs import baselines


def get_config():
  return baselines.baseline("cub", "proxynca")
