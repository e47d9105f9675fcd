r"""CUB-200-2011 / multi-similarity with DIML on ViT-S/16: rollout marginals, partial similarity.

  python train.py --config configs/cub_vit_diml.py --config.data.root=/path/to/data \
      --config.model.weights=/path/to/deit_small_patch16_224-cd65a155.pth
  python train.py --config configs/cub_vit_diml.py --config.data.root=/path/to/data \
      --config.model.weights=... --config.model.rollout_blocks=2 --config.matching.mass=0.8
  python eval.py --workdir runs/cub_vit_diml

See ``common.vit_diml``. Without the DeiT file: ``--config.model.pretrained=False``
(random initialisation).
"""
from configs import common


def get_config():
  return common.vit_diml("cub", "multisimilarity")
