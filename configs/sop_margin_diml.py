"""Stanford Online Products / margin: trained with DIML (margin_diml).

  python train.py --config configs/sop_margin_diml.py --config.data.root=/path/to/data
"""
from configs import common


def get_config():
  return common.paper("sop", "margin", diml=True)
