"""CUB-200-2011 / DGML: attentive grouping (3 groups) on ResNet-50, the reference recipe.

  python train.py --config configs/cub_dgml.py --config.data.root=/path/to/data
  python eval.py --config configs/cub_dgml.py --workdir runs/cub_dgml --config.data.root=/path/to/data

See ``common.dgml`` and ``common.DGML_RECIPES`` (the reference DGML code's
``configs/cub200.yaml``): per-group margin loss + 0.02 x diversity loss, 100 epochs, Adam at
1e-5 decayed x0.3 at epoch 55, weight decay 3e-3 (group queries 1e-3), beta lr 5e-5.
"""
from configs import common


def get_config():
  return common.dgml("cub")
