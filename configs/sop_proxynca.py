"""Stanford Online Products / ProxyNCA loss.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/sop_proxynca.py --config.data.root=DIR
  python eval.py --config configs/sop_proxynca.py --workdir runs/sop_proxynca
"""
from configs import baselines


def get_config():
  return baselines.baseline("sop", "proxynca")
