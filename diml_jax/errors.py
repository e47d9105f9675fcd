"""The error of a user's mistake: a config value, a flag, a missing data set or run.

Raised at the library's boundary with the command line (:mod:`diml_jax.experiment`,
:mod:`diml_jax.eval_lib`, :mod:`diml_jax.runtime`); the entry points print its message
alone, without a traceback, and exit with code 2 (:func:`diml_jax.runtime.run`).
"""


class UsageError(ValueError):
  """A user's mistake; the message names the flag or config key and the fix."""
