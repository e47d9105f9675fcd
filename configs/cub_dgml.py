"""CUB-200-2011 / multi-similarity with DGML's attentive grouping (3 groups) on ResNet-50.

  python train.py --config configs/cub_dgml.py --config.data.root=/path/to/data
  python eval.py --workdir runs/cub_dgml

See ``common.dgml``: per-group multi-similarity loss + 0.02 x diversity loss.
"""
from configs import common


def get_config():
  return common.dgml("cub", "multisimilarity")
