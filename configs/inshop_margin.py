"""In-Shop Clothes Retrieval / margin: the baseline of the DIML protocol on In-Shop.

  python train.py --config configs/inshop_margin.py --config.data.root=/path/to/inshop

``data.root`` is the benchmark's folder (``Eval/list_eval_partition.txt``, ``img/``). The
test split is the 14,218 queries followed by the 12,612 gallery images
(``diml_jax.data.inshop``); evaluation embeds it once and ranks each query against the
gallery only (``diml_jax.evaluation.evaluate`` with ``Embeddings.is_query``), with the
benchmark's Recall@1, 10, 20, 30, 40, 50.
"""
from configs import common


def get_config():
  return common.paper("inshop", "margin", diml=False)
