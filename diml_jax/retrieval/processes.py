"""Retrieval over several JAX processes (hosts): each ranks its share of the queries, and
the shares are then put together on every process."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

__all__ = ["process_queries", "gather_queries"]


def process_queries(q: int) -> np.ndarray:
  """The queries this process ranks, of ``q``: its share, ``ceil(q / P)`` consecutive ones.

  With ``P`` JAX processes, process ``p`` takes queries ``[p * s, (p + 1) * s)``,
  ``s = ceil(q / P)``; the last share is padded by repeating query ``q - 1`` (its extra
  results are dropped by :func:`gather_queries`). Equal shares give every process chunks
  of the same shape, the shape one process with all the devices would use, so that the
  results are exactly the single-process ones (each query's result does not depend on
  the others in its chunk).

  Returns:
    ``[s]`` int64 query indices.
  """
  if q < 1:
    raise ValueError(f"q must be >= 1; got {q}.")
  share = -(-q // jax.process_count())
  start = jax.process_index() * share
  return np.minimum(np.arange(start, start + share), q - 1)


def gather_queries(local: Any, q: int) -> Any:
  """Every process's per-query results put together, in query order, on every process.

  A collective: every process calls it, with the results for its
  :func:`process_queries`.

  Args:
    local: a pytree of arrays ``[ceil(q / P), ...]``, this process's share.
    q: the number of queries.

  Returns:
    The same pytree of arrays ``[q, ...]``.
  """
  if jax.process_count() == 1:
    return jax.tree.map(lambda a: np.asarray(a)[:q], local)
  return jax.tree.map(
      lambda a: np.asarray(multihost_utils.process_allgather(np.asarray(a), tiled=True))[:q],
      local)
