"""The resolved config a training run saved in its directory (``config.json``).

  python eval.py --workdir runs/cub_margin                    # uses this file
  python eval.py --config configs/saved.py:runs/cub_margin --config.eval.ks='(0, 100)'
"""
from diml_jax import experiment


def get_config(workdir):
  return experiment.load_config(workdir)
