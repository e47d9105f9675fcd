"""Stanford Online Products / histogram loss (11 bins).

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/sop_histogram.py --config.data.root=DIR
  python eval.py --config configs/sop_histogram.py --workdir runs/sop_histogram
"""
from configs import baselines


def get_config():
  return baselines.baseline("sop", "histogram")
