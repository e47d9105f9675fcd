"""Stanford Online Products / triplet loss, random miner.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/sop_triplet_random.py --config.data.root=DIR
  python eval.py --config configs/sop_triplet_random.py --workdir runs/sop_triplet_random
"""
from configs import baselines


def get_config():
  return baselines.baseline("sop", "triplet_random")
