"""CUB-200-2011 / multisimilarity: trained with DIML (multisimilarity_diml).

  python train.py --config configs/cub_multisimilarity_diml.py --config.data.root=/path/to/data
"""
from configs import common


def get_config():
  return common.paper("cub", "multisimilarity", diml=True)
