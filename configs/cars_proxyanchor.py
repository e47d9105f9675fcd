"""Cars196 / ProxyAnchor, evaluated with test-time DIML (the papers' ProxyAnchor + DIML).

  python train.py --config configs/cars_proxyanchor.py --config.data.root=/path/to/data
"""
from configs import common


def get_config():
  return common.paper("cars", "proxyanchor", diml=False)
