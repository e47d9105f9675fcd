"""Stanford Online Products / multisimilarity: the baseline, evaluated with test-time DIML.

  python train.py --config configs/sop_multisimilarity.py --config.data.root=/path/to/data
"""
from configs import common


def get_config():
  return common.paper("sop", "multisimilarity", diml=False)
