"""What the entry points (``train.py``, ``eval.py``) set up before any work starts."""
import logging
import os
import sys

import jax
from absl import flags
from absl import logging as absl_logging


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


def start(*, distributed: bool = False) -> None:
  """Sets up this process: the compilation cache, multi-host JAX, readable logs.

  Compiled programs are cached on disk, so a restarted (e.g. preempted) run does not
  compile them again; ``JAX_COMPILATION_CACHE_DIR`` overrides the place (default
  ``~/.cache/diml_jax/xla``). ``distributed`` calls ``jax.distributed.initialize()``, for
  a multi-host TPU or GPU slice. Orbax's per-operation INFO lines are kept out of the log
  (its warnings and errors stay).
  """
  jax.config.update("jax_compilation_cache_dir", os.environ.get(
      "JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/diml_jax/xla")))
  if distributed:
    jax.distributed.initialize()
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
