"""CUB-200-2011 / margin: the baseline, evaluated with test-time DIML.

  python train.py --config configs/cub_margin.py --config.data.root=/path/to/data
"""
from configs import common


def get_config():
  return common.paper("cub", "margin", diml=False)
