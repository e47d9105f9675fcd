"""Trains a DIML model; restarting with the same --workdir resumes.

  python train.py --config configs/sop_margin.py [--workdir DIR] [--config.key=value ...]
  python train.py --config configs/demo.py                  # a few minutes on a CPU
  python train.py --config configs/cub_margin_diml.py --config.data.root=/data/CUB_200_2011

On a multi-host TPU or GPU slice, run the same command on every host with --distributed
(README, "Running on a Cloud TPU pod"); outside a Cloud TPU VM or a SLURM / Open MPI job
also --coordinator_address=HOST:PORT --num_processes=N --process_id=I.
A mistake in the command line, the config or the data's place ends the program with one
message and exit code 2, before anything is written.
"""
import os

from absl import flags
from ml_collections import config_flags

from diml_jax import UsageError, runtime

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The experiment's config file, e.g. configs/cub_margin.py.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Checkpoints, logs and results; default runs/<config name>.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}: flags only.")
  runtime.start()
  from diml_jax import train_lib  # after initialize(): it may use the backend
  train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value or default_workdir())


def default_workdir() -> str:
  path = config_flags.get_config_filename(flags.FLAGS["config"])
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("runs", name)


if __name__ == "__main__":  # also keeps the data loader's spawned workers from re-running this
  runtime.run(main)
