"""CUB-200-2011 / margin: trained with DIML (margin_diml).

  python train.py --config configs/cub_margin_diml.py --config.data.root=/path/to/data
"""
from configs import common


def get_config():
  return common.paper("cub", "margin", diml=True)
