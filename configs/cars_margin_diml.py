"""Cars196 / margin: trained with DIML (margin_diml).

  python train.py --config configs/cars_margin_diml.py --config.data.root=/path/to/data
"""
from configs import common


def get_config():
  return common.paper("cars", "margin", diml=True)
