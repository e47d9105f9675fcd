"""Stanford Online Products / ProxyAnchor, evaluated with test-time DIML (the papers' ProxyAnchor + DIML).

  python train.py --config configs/sop_proxyanchor.py --config.data.root=/path/to/data
"""
from configs import common


def get_config():
  return common.paper("sop", "proxyanchor", diml=False)
