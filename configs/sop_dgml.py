"""Stanford Online Products / DGML: attentive grouping (3 groups) on ResNet-50, the
reference recipe.

  python train.py --config configs/sop_dgml.py --config.data.root=/path/to/data
  python eval.py --config configs/sop_dgml.py --workdir runs/sop_dgml --config.data.root=/path/to/data

See ``common.dgml`` and ``common.DGML_RECIPES`` (the reference DGML code's
``configs/online_products.yaml``): per-group margin loss + 0.03 x diversity loss, 150
epochs, Adam at 9e-6 decayed x0.3 at epoch 100, weight decay 3e-4 (group queries 1e-4),
beta lr 1e-5.
"""
from configs import common


def get_config():
  return common.dgml("sop")
