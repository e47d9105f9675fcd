"""Config keys of earlier versions and where they went.

A config file (:func:`diml_jax.experiment.check_config`) or a command-line override
(``--config.sinkhorn.epsilon=0.1``, :func:`diml_jax.runtime.parse_flags`) that still
uses one fails with one message naming the new key. Imports nothing, so that the entry
points can say so before importing JAX.
"""
from __future__ import annotations

__all__ = ["MOVED", "moved_message"]

# Old key (a dotted path in the config) -> (its new path, a note for the key itself).
MOVED = {"sinkhorn": ("matching", " (epsilon, threshold, max_iterations, ...)"),
         "loss.marginals": ("matching.marginals", " ('rollout' is now 'weights')"),
         "loss.partial_mass": ("matching.mass", "")}


def moved_message(path: str) -> str | None:
  """The message for a config key ``path`` that moved, or lies in a section that moved
  (``"sinkhorn.epsilon"``: set ``matching.epsilon``); ``None`` for any other key."""
  for old, (new, note) in MOVED.items():
    if path == old:
      return f"--config.{old} has moved: set --config.{new}{note} instead."
    if path.startswith(old + "."):
      return f"--config.{path} has moved: set --config.{new}{path[len(old):]} instead."
  return None
