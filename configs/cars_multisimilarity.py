"""Cars196 / multisimilarity: the baseline, evaluated with test-time DIML.

  python train.py --config configs/cars_multisimilarity.py --config.data.root=/path/to/data
"""
from configs import common


def get_config():
  return common.paper("cars", "multisimilarity", diml=False)
