"""Cars196 / histogram loss (65 bins).

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cars_histogram.py --config.data.root=DIR
  python eval.py --config configs/cars_histogram.py --workdir runs/cars_histogram
"""
from configs import baselines


def get_config():
  return baselines.baseline("cars", "histogram")
