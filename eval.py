"""Evaluates a saved model: global ranking and multi-scale DIML re-ranking (test-time DIML).

  python eval.py --config configs/cub_margin.py --workdir runs/cub_margin
  python eval.py --config configs/cub_margin.py --workdir runs/x --checkpoint runs/x/checkpoints/1200
  python eval.py --config configs/demo.py --workdir runs/demo --explain   # + report.html, flow figures

Any model trained with these configs works, including baselines trained without DIML.
On several hosts, run it on every host with the distributed flags of train.py.
"""
from absl import app, flags
from ml_collections import config_flags

from diml_jax import runtime

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The config the model was trained with (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's directory.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A checkpoint step directory; default: the best, else the latest.")
_EXPLAIN = flags.DEFINE_bool(
    "explain", False, "Also write an HTML retrieval report and flow figures.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.start()
  from diml_jax import eval_lib
  eval_lib.run(_CONFIG.value, _WORKDIR.value, checkpoint=_CHECKPOINT.value,
               explain_results=_EXPLAIN.value)


if __name__ == "__main__":
  app.run(main, flags_parser=runtime.parse_flags)
