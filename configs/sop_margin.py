"""Stanford Online Products / margin: the baseline, evaluated with test-time DIML.

  python train.py --config configs/sop_margin.py --config.data.root=/path/to/data
"""
from configs import common


def get_config():
  return common.paper("sop", "margin", diml=False)
