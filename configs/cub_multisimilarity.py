"""CUB-200-2011 / multisimilarity: the baseline, evaluated with test-time DIML.

  python train.py --config configs/cub_multisimilarity.py --config.data.root=/path/to/data
"""
from configs import common


def get_config():
  return common.paper("cub", "multisimilarity", diml=False)
