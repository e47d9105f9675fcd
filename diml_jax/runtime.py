"""What the entry points (``train.py``, ``eval.py``) set up before any work starts.

Both entry points share the flags of a multi-process run, defined here: ``--distributed``
and, where JAX cannot detect them (it does on Cloud TPU VMs and under SLURM or Open MPI),
``--coordinator_address``, ``--num_processes`` and ``--process_id``.
"""
import logging
import os
import sys

import jax
from absl import flags
from absl import logging as absl_logging

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Join the other processes of a multi-host run (one process per host, all running the "
    "same command) with jax.distributed.initialize() before anything else.")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
    "With --distributed: HOST:PORT of process 0, where the others meet (default "
    "$JAX_COORDINATOR_ADDRESS; detected on Cloud TPU VMs and under SLURM / Open MPI).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", os.environ.get("JAX_NUM_PROCESSES"),
    "With --distributed: how many processes (default $JAX_NUM_PROCESSES, or detected).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", os.environ.get("JAX_PROCESS_ID"),
    "With --distributed: this process's index, 0 .. num_processes - 1 (default "
    "$JAX_PROCESS_ID, or detected).")
# A process that stops sending heartbeats for this long is declared dead, and then every
# process ends (README, "Running on a Cloud TPU pod").
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 60,
    "With --distributed: when one process dies (or its host goes away), the others end "
    "after at most this many seconds rather than wait for it forever.")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (``app.run(main, flags_parser=...)``), where an override of a
  config key that does not exist (``--config.lerning_rate=0.1``) ends the program with one
  line naming the flag, rather than a traceback."""
  try:
    return flags.FLAGS(argv)
  except AttributeError as e:  # ml_collections: "'key'\nDid you mean ...?"
    message = e
    while isinstance(message, BaseException) and message.args:  # KeyError inside
      message = message.args[0]
    key, _, hint = str(message).partition("\n")
    key = key.strip("'\"")
    names = [a.split("=")[0] for a in argv[1:]
             if a.startswith("--config.") and a.split("=")[0].endswith(f".{key}")]
    if not names:
      raise
    sys.exit(f"FATAL Flags parsing error: {names[0]}: the config has no key {key!r}. "
             f"{hint or 'See the config file for its keys.'}")


class _QuietLibraries(logging.Filter):
  """Drops INFO records logged from Orbax's modules: one line per checkpoint is ours."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def start() -> None:
  """Sets up this process: the compilation cache, multi-host JAX, readable logs.

  Compiled programs are cached on disk, so a restarted (e.g. preempted) run does not
  compile them again; ``JAX_COMPILATION_CACHE_DIR`` overrides the place (default
  ``~/.cache/diml_jax/xla``). With ``--distributed`` this process joins the others of the
  run (``jax.distributed.initialize``) from the distributed flags above; on CPUs the
  processes' collectives go through Gloo (TCP), which is how runs of several processes
  are tested on one machine. Orbax's per-operation INFO lines are kept out of the log
  (its warnings and errors stay).

  A user's mistake (``--distributed`` outside a cluster JAX knows, without the address
  flags) ends the program with a message naming the flags, exit code 2.
  """
  jax.config.update("jax_compilation_cache_dir", os.environ.get(
      "JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/diml_jax/xla")))
  if _DISTRIBUTED.value:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
      jax.distributed.initialize(
          coordinator_address=_COORDINATOR_ADDRESS.value,
          num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
          heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value)
    except ValueError as e:  # what JAX could not detect and was not given
      _usage_error(
          f"--distributed: {e} Outside a Cloud TPU VM or a SLURM / Open MPI job, give "
          f"every process --coordinator_address=HOST:PORT (process 0's host, a free port) "
          f"--num_processes=N --process_id=I, or the environment variables "
          f"JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.")
  elif any(f.present for f in (flags.FLAGS[n] for n in _DISTRIBUTED_ONLY)):
    _usage_error(f"--{'/--'.join(_DISTRIBUTED_ONLY)} apply to multi-process runs: add "
                 f"--distributed.")
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())


_DISTRIBUTED_ONLY = ("coordinator_address", "num_processes", "process_id")


def _usage_error(message: str) -> None:
  """Ends the program on a user's mistake: one message, no traceback, exit code 2."""
  print(f"FATAL {message}", file=sys.stderr)
  sys.exit(2)
