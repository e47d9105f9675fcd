"""Stanford Online Products / multisimilarity: trained with DIML (multisimilarity_diml).

  python train.py --config configs/sop_multisimilarity_diml.py --config.data.root=/path/to/data
"""
from configs import common


def get_config():
  return common.paper("sop", "multisimilarity", diml=True)
