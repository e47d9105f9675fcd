"""Stanford Online Products / quadruplet loss, distance-weighted miner.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/sop_quadruplet.py --config.data.root=DIR
  python eval.py --config configs/sop_quadruplet.py --workdir runs/sop_quadruplet
"""
from configs import baselines


def get_config():
  return baselines.baseline("sop", "quadruplet")
