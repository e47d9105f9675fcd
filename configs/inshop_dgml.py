"""In-Shop Clothes Retrieval / DGML: attentive grouping (3 groups) on ResNet-50, the
reference recipe.

  python train.py --config configs/inshop_dgml.py --config.data.root=/path/to/inshop

See ``common.dgml`` and ``common.DGML_RECIPES`` (the reference DGML code's
``configs/in_shop.yaml``): per-group margin loss + 0.03 x diversity loss, 150 epochs, Adam
at 1e-5 decayed x0.3 at epoch 100, weight decay 3e-4 (group queries 1e-4), beta lr 5e-5.
The test split is In-Shop's queries followed by its gallery (``diml_jax.data.inshop``),
evaluated as queries against the gallery, with Recall@1, 10, 20, 30, 40, 50.
"""
from configs import common


def get_config():
  return common.dgml("inshop")
