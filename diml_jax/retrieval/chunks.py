"""The host side of retrieval's chunked computations: queries in fixed-size chunks, each
split over a one-axis device mesh, and the checks of the host arrays they take.

Shared by the global ranking (:mod:`~diml_jax.retrieval.ranking`) and the structural
re-ranking (:mod:`~diml_jax.retrieval.rerank`).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["AXIS", "query_mesh", "chunk_size", "run_chunked", "check_vectors"]

AXIS = "queries"  # the mesh axis each chunk of queries is split along


def query_mesh(devices: Sequence[jax.Device] | None) -> Mesh:
  """A one-axis (:data:`AXIS`) mesh of ``devices``, default all local devices."""
  return Mesh(np.asarray(devices if devices is not None else jax.local_devices()), (AXIS,))


def chunk_size(per_device: int | None, q: int, mesh: Mesh, *, cpu: int, accelerator: int) -> int:
  """Queries per step: ``per_device`` on each device (default by backend), at most ``q``."""
  if per_device is None:
    per_device = cpu if jax.default_backend() == "cpu" else accelerator
  if per_device < 1:
    raise ValueError(f"chunk_per_device must be >= 1 or None; got {per_device}.")
  d = mesh.devices.size
  return min(per_device, -(-q // d)) * d


def run_chunked(fn, per_query: Sequence[np.ndarray], shared: Sequence[jax.Array], *,
                mesh: Mesh, chunk_size: int, progress: bool, desc: str):
  """Runs ``fn(*chunk_of_per_query, *shared)`` over query chunks, split over ``mesh``.

  Each chunk is padded to ``chunk_size`` (a multiple of the device count), so ``fn``
  compiles once. The next chunk is dispatched before the previous one is fetched, so
  the host keeps the devices busy. Returns ``fn``'s outputs concatenated, as NumPy.
  """
  q = per_query[0].shape[0]
  split = NamedSharding(mesh, P(AXIS))
  pending, done = None, []
  bar = tqdm.tqdm(total=q, desc=desc, unit="query", disable=not progress, leave=False)
  for start in range(0, q, chunk_size):
    stop = min(start + chunk_size, q)
    args = [
        jax.device_put(np.pad(a[start:stop], [(0, chunk_size - (stop - start))]
                              + [(0, 0)] * (a.ndim - 1)), split)
        for a in per_query
    ]
    out = fn(*args, *shared)
    if pending is not None:
      done.append(_fetch(pending, bar))
    pending = (out, stop - start)
  if pending is not None:
    done.append(_fetch(pending, bar))
  bar.close()
  return jax.tree.map(lambda *xs: np.concatenate(xs), *done)


def _fetch(pending, bar):
  out, size = pending
  out = jax.tree.map(lambda a: np.asarray(a)[:size], out)
  bar.update(size)
  return out


def check_vectors(name: str, x: Any, layout: str = "[n, d]") -> np.ndarray:
  """``x`` as a floating-point NumPy array of ``layout``'s rank; a ``ValueError`` naming
  ``name``, ``layout`` and what came otherwise."""
  x = np.asarray(x)
  dims = layout.count(",") + 1
  if x.ndim != dims or not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{name} must be floating-point {layout}; got {x.dtype} {x.shape}.")
  return x
