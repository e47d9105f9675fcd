"""Stanford Online Products / angular loss (N-pair miner, unnormalised embeddings).

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/sop_angular.py --config.data.root=DIR
  python eval.py --config configs/sop_angular.py --workdir runs/sop_angular
"""
from configs import baselines


def get_config():
  return baselines.baseline("sop", "angular")
