"""CUB-200-2011 / multi-similarity loss, 512-d embeddings.

A baseline recipe of the published DIML code (the table in ``configs/baselines.py``),
evaluated with test-time DIML.

  python train.py --config configs/cub_multisimilarity_512.py --config.data.root=DIR
  python eval.py --config configs/cub_multisimilarity_512.py --workdir runs/cub_multisimilarity_512
"""
from configs import baselines


def get_config():
  return baselines.baseline("cub", "multisimilarity", embed_dim=512)
