"""Cars196 / margin: the baseline, evaluated with test-time DIML.

  python train.py --config configs/cars_margin.py --config.data.root=/path/to/data
"""
from configs import common


def get_config():
  return common.paper("cars", "margin", diml=False)
