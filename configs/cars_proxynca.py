"""Cars196 / ProxyNCA loss.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cars_proxynca.py --config.data.root=DIR
  python eval.py --config configs/cars_proxynca.py --workdir runs/cars_proxynca
"""
from configs import baselines


def get_config():
  return baselines.baseline("cars", "proxynca")
