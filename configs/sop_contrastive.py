"""Stanford Online Products / contrastive loss, distance-weighted miner.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/sop_contrastive.py --config.data.root=DIR
  python eval.py --config configs/sop_contrastive.py --workdir runs/sop_contrastive
"""
from configs import baselines


def get_config():
  return baselines.baseline("sop", "contrastive")
