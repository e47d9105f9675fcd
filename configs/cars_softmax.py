"""Cars196 / normalised softmax loss.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cars_softmax.py --config.data.root=DIR
  python eval.py --config configs/cars_softmax.py --workdir runs/cars_softmax
"""
from configs import baselines


def get_config():
  return baselines.baseline("cars", "softmax")
