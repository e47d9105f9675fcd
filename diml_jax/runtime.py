"""What the entry points (``train.py``, ``eval.py``) set up before any work starts.

Both entry points share the flags of a multi-process run, defined here: ``--distributed``
and, where JAX cannot detect them (it does on Cloud TPU VMs and under SLURM or Open MPI),
``--coordinator_address``, ``--num_processes`` and ``--process_id``.

:func:`run` is their ``main``'s caller: it parses the flags and turns a user's mistake
(:class:`diml_jax.UsageError`, from flag parsing or from the library) into one message
on stderr and exit code 2, with no traceback and nothing written.
"""
import functools
import glob
import logging
import os
import re
import sys

from absl import app, flags
from absl import logging as absl_logging

from diml_jax import moved_keys
from diml_jax.errors import UsageError

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

_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", None,
    "Split the host's CPU into this many JAX devices (0: one per core available to this "
    "process). XLA runs each CPU device's share of a batch on its own thread, so on a "
    "machine without an accelerator the backbone and the matching use every core; the "
    "batch sizes must then be divisible by the number of devices. Default: JAX's single "
    "CPU device. CPU devices only: no effect on the GPUs or TPUs JAX computes on.")

# As argparse: the command line was wrong.
USAGE_EXIT_CODE = 2


def run(main, *, saved_config: str | None = None) -> None:
  """Runs ``main(argv)`` under ``absl.app`` with :func:`parse_flags`; a
  :class:`UsageError` ends the program with its message and exit code 2.

  Args:
    main: the entry point's main function.
    saved_config: the path of ``configs/saved.py``, for an entry point whose config
      defaults to the one its ``--workdir`` holds (``eval.py``): see :func:`parse_flags`.
  """
  program = os.path.basename(sys.argv[0])
  try:
    app.run(main, flags_parser=functools.partial(parse_flags, saved_config=saved_config))
  except UsageError as e:
    sys.stderr.write(f"{program}: error: {e}\n")
    sys.exit(USAGE_EXIT_CODE)


def parse_flags(argv: list[str], *, saved_config: str | None = None) -> list[str]:
  """absl's flag parsing (``app.run(main, flags_parser=...)``), every mistake a
  :class:`UsageError` that names the flag: an unknown flag, a missing one, a bad value,
  a config file that does not exist, a config key that does not
  (``--config.lerning_rate=0.1``).

  With ``saved_config`` and no ``--config``, the config is the one saved by training in
  ``--workdir`` (``config.json``, read by ``saved_config``, i.e. ``configs/saved.py``);
  ``--config.key=value`` overrides apply to it as to any config file.
  """
  config = _flag_value(argv, "config")
  if config is None and saved_config:
    workdir = _flag_value(argv, "workdir")
    if workdir:
      _check_run_directory(workdir)
      argv = [argv[0], f"--config={saved_config}:{workdir}", *argv[1:]]
  elif config is not None:
    _check_config_file(config.split(":", 1)[0])
  try:
    return flags.FLAGS(argv)
  # ml_collections: AttributeError "'key'\nDid you mean ...?" for a key, KeyError for a
  # section on the path to one (--config.nope.key).
  except (AttributeError, KeyError) as e:
    message = _unknown_key(e, argv)
    if message is None:
      raise
    raise UsageError(message) from None
  except flags.UnrecognizedFlagError as e:  # "Unknown command line flag 'x'. Did you ..."
    message = str(e).replace(f"Unknown command line flag '{e.flagname}'",
                             f"unknown flag --{e.flagname}")
    raise UsageError(f"{message} {_HELP}") from None
  except flags.Error as e:
    missing = re.search(r"Flag --(\S+) must have a value other than None", str(e))
    if missing:
      name = missing.group(1)
      raise UsageError(f"--{name} is required. {flags.FLAGS[name].help} {_HELP}") from None
    raise UsageError(re.sub(r"^flag ", "", str(e))) from None


_HELP = "(--helpshort lists the flags.)"


def _flag_value(argv: list[str], name: str) -> str | None:
  """The value of ``--name=value`` or ``--name value`` in ``argv`` (the last one), or None."""
  value = None
  for i, arg in enumerate(argv[1:], start=1):
    if arg == "--":
      break
    for prefix in (f"--{name}", f"-{name}"):
      if arg.startswith(prefix + "="):
        value = arg[len(prefix) + 1:]
      elif arg == prefix and i + 1 < len(argv):
        value = argv[i + 1]
  return value


def _check_config_file(path: str) -> None:
  if os.path.isfile(path):
    return
  folder = os.path.dirname(path) or "."
  found = sorted(glob.glob(os.path.join(folder, "*.py")))
  listed = (f" Configs in {folder}/: " + ", ".join(os.path.basename(p) for p in found)
            if found else "")
  raise UsageError(f"--config={path}: no such file.{listed}")


def _check_run_directory(workdir: str) -> None:
  """Why ``workdir`` cannot give the config (no directory, no ``config.json``), if so."""
  if not os.path.isdir(workdir):
    raise UsageError(
        f"--workdir={workdir}: no such directory. Give the directory of a training run "
        f"(train.py --workdir, by default runs/<config name>).")
  if not os.path.isfile(os.path.join(workdir, "config.json")):
    raise UsageError(
        f"--workdir={workdir} holds no config.json, which train.py writes at the start of "
        f"a run: give a training run's directory, or the config it was trained with, "
        f"--config=configs/<name>.py.")


def _unknown_key(error: Exception, argv: list[str]) -> str | None:
  """The message for an override of a config key that does not exist, or that has moved
  (:mod:`diml_jax.moved_keys`); None: not that."""
  overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
  for name in overrides:
    moved = moved_keys.moved_message(name[len("--config."):])
    if moved:
      return moved
  message = error
  while isinstance(message, BaseException) and message.args:  # KeyError inside
    message = message.args[0]
  key, _, hint = str(message).partition("\n")
  key = key.strip("'\"")
  names = [n for n in overrides if n.endswith(f".{key}") or f".{key}." in n]
  if not names:
    return None
  return (f"{names[0]}: the config has no key {key!r}. "
          f"{hint or 'See the config file for its keys.'}")


# INFO records from modules outside this package are the libraries' chatter (JAX's
# "Unable to initialize backend 'tpu'" on every machine without one, Orbax's line per
# operation); their warnings and errors stay.
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class _QuietLibraries(logging.Filter):
  """Keeps INFO records of this package only, and every library's warnings and errors."""

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.WARNING
            or os.path.abspath(record.pathname).startswith(_PACKAGE))


def start() -> None:
  """Sets up this process: the compilation cache, the CPU's devices, multi-host JAX,
  readable logs.

  Compiled programs are cached on disk, so a restarted (e.g. preempted) run does not
  compile them again; ``JAX_COMPILATION_CACHE_DIR`` overrides the place (default
  ``~/.cache/diml_jax/xla``). With ``--distributed`` this process joins the others of the
  run (``jax.distributed.initialize``) from the distributed flags above; on CPUs the
  processes' collectives go through Gloo (TCP), which is how runs of several processes
  are tested on one machine. The libraries' INFO lines are kept out of the log (their
  warnings and errors stay).

  A user's mistake (``--distributed`` outside a cluster JAX knows, without the address
  flags) ends the program with a message naming the flags, exit code 2.
  """
  # JAX is imported here, not at the top: a mistake in the flags is reported at once.
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", os.environ.get(
      "JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/diml_jax/xla")))
  if _CPU_DEVICES.value is not None:
    if _CPU_DEVICES.value < 0:
      raise UsageError(f"--cpu_devices={_CPU_DEVICES.value}: give a number of devices >= 1, "
                       f"or 0 for one per core.")
    jax.config.update("jax_num_cpu_devices",
                      _CPU_DEVICES.value or len(os.sched_getaffinity(0)))
  if _DISTRIBUTED.value:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
      jax.distributed.initialize(
          coordinator_address=_COORDINATOR_ADDRESS.value,
          num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
          heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value)
    except ValueError as e:  # what JAX could not detect and was not given
      raise UsageError(
          f"--distributed: {e} Outside a Cloud TPU VM or a SLURM / Open MPI job, give "
          f"every process --coordinator_address=HOST:PORT (process 0's host, a free port) "
          f"--num_processes=N --process_id=I, or the environment variables "
          f"JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.")
  elif any(f.present for f in (flags.FLAGS[n] for n in _DISTRIBUTED_ONLY)):
    raise UsageError(f"--{'/--'.join(_DISTRIBUTED_ONLY)} apply to multi-process runs: add "
                     f"--distributed.")
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())


_DISTRIBUTED_ONLY = ("coordinator_address", "num_processes", "process_id")

