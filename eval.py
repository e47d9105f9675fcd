"""Evaluates a saved model: global ranking and multi-scale DIML re-ranking (test-time DIML).

  python eval.py --workdir runs/cub_margin           # with the config the run saved
  python eval.py --workdir runs/x --checkpoint runs/x/checkpoints/1200
  python eval.py --workdir runs/demo --explain       # + report.html, flow figures
  python eval.py --workdir runs/x --config.eval.ks='(0, 100)'   # overrides apply
  python eval.py --config configs/cub_margin.py --workdir runs/cub_margin

The config defaults to the one training saved in the run's directory (config.json).
Any model trained with these configs works, including baselines trained without DIML.
On several hosts, run it on every host with the distributed flags of train.py.
"""
import os

from absl import flags
from ml_collections import config_flags

from diml_jax import UsageError, runtime

# Reads a run's config.json: the config when --config is not given.
SAVED_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "saved.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The config the model was trained with; default: the run's config.json.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The training run's directory, e.g. runs/cub_margin.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A checkpoint step directory; default: the best, else the latest.")
_EXPLAIN = flags.DEFINE_bool(
    "explain", False, "Also write an HTML retrieval report and flow figures.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}: flags only.")
  runtime.start()
  from diml_jax import eval_lib
  eval_lib.run(_CONFIG.value, _WORKDIR.value, checkpoint=_CHECKPOINT.value,
               explain_results=_EXPLAIN.value)


if __name__ == "__main__":
  runtime.run(main, saved_config=SAVED_CONFIG)
