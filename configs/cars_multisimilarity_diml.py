"""Cars196 / multisimilarity: trained with DIML (multisimilarity_diml).

  python train.py --config configs/cars_multisimilarity_diml.py --config.data.root=/path/to/data
"""
from configs import common


def get_config():
  return common.paper("cars", "multisimilarity", diml=True)
