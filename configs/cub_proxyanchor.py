"""CUB-200-2011 / ProxyAnchor, evaluated with test-time DIML (the papers' ProxyAnchor + DIML).

  python train.py --config configs/cub_proxyanchor.py --config.data.root=/path/to/data
"""
from configs import common


def get_config():
  return common.paper("cub", "proxyanchor", diml=False)
