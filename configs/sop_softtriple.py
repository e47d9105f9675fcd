"""Stanford Online Products / SoftTriple loss.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/sop_softtriple.py --config.data.root=DIR
  python eval.py --config configs/sop_softtriple.py --workdir runs/sop_softtriple
"""
from configs import baselines


def get_config():
  return baselines.baseline("sop", "softtriple")
