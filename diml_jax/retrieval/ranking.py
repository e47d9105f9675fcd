"""Global ranking: the ``k`` nearest gallery items of every query by the cosine of the
global vectors, the first stage of DIML's multi-scale retrieval (ICCV 2021, Sec. 3.4).

Query chunk by query chunk, each chunk split over the local devices, so memory is one
``[n, chunk]`` block of similarities per device, never ``[n, q]``; each block's top ``k``
by the exact two-stage :func:`column_top_k`. Equal cosines are ordered by gallery index.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diml_jax.retrieval.chunks import AXIS, check_vectors, chunk_size, query_mesh, run_chunked

__all__ = ["Neighbours", "column_top_k", "global_neighbours"]


class Neighbours(NamedTuple):
  """The ``k`` nearest gallery items of each query, best first.

  Attributes:
    indices: gallery indices ``[q, k]`` int32.
    similarities: their cosine similarities to the query ``[q, k]`` float32.
  """

  indices: np.ndarray
  similarities: np.ndarray


# --------------------------------------------------------------------------------------
# Exact top-k.


def column_top_k(
    s: jax.Array, k: int, *, group_size: int | None = None
) -> tuple[jax.Array, jax.Array]:
  """Exact top ``k`` of each column of ``s [n, b]``: ``jax.lax.top_k(s.T, k)``, faster.

  The rows are cut into ``g`` contiguous groups; the ``k`` groups with the largest
  maxima contain the ``k`` largest entries (an entry outside them is at most the
  ``k``-th largest group maximum, and ``k`` maxima at least that large lie inside), so
  only their ``k * n / g`` entries are searched. With ``g ~ sqrt(k n)`` that is two small
  top-k searches instead of one over ``n``. The layout is gallery-major (``n`` first) so
  that the group maxima reduce across rows, which vectorises on a CPU. The result,
  including the order of ties (lower index first), is exactly ``jax.lax.top_k``'s:
  groups tied at the ``k``-th maximum are taken lowest first, and the chosen groups are
  searched in index order.

  Args:
    s: ``[n, b]`` scores, e.g. gallery x queries similarities (no NaN); ``n`` a
      multiple of the group size avoids a padded copy.
    k: how many, ``1 <= k <= n``.
    group_size: rows per group; default a power of two near ``sqrt(n / k)``. ``1``
      is a plain ``jax.lax.top_k``.

  Returns:
    ``(values [b, k], indices [b, k] int32)``, best first.
  """
  n, b = s.shape
  group = _group_size(n, k) if group_size is None else group_size
  if -(-n // group) < k:
    raise ValueError(f"group_size {group} leaves fewer than k={k} groups of n={n} rows.")
  if group == 1:
    values, indices = jax.lax.top_k(s.T, k)
    return values, indices.astype(jnp.int32)
  groups = -(-n // group)
  if groups * group != n:
    s = jnp.pad(s, ((0, groups * group - n), (0, 0)), constant_values=-jnp.inf)
  blocks = s.reshape(groups, group, b)
  _, chosen = jax.lax.top_k(blocks.max(axis=1).T, k)  # [b, k] groups
  chosen = jnp.sort(chosen, axis=1)
  candidates = blocks[chosen, :, jnp.arange(b)[:, None]].reshape(b, k * group)
  values, position = jax.lax.top_k(candidates, k)
  block = jnp.take_along_axis(chosen, position // group, axis=1)
  return values, (block * group + position % group).astype(jnp.int32)


def _group_size(n: int, k: int) -> int:
  """A power of two near ``sqrt(n / k)`` (vectorises well) leaving at least ``k`` groups."""
  group = 2 ** max(0, round(math.log2(max(n / k, 1.0)) / 2))
  while group > 1 and -(-n // group) < k:
    group //= 2
  return group


# --------------------------------------------------------------------------------------
# Global ranking.


@functools.lru_cache(maxsize=None)
def _neighbours_fn(mesh: Mesh, k: int, n: int, group: int):
  def local(q, self_index, gallery):  # one device's queries against the whole gallery
    s = jax.lax.dot_general(gallery, q, (((1,), (1,)), ((), ())),
                            precision=jax.lax.Precision.HIGHEST)  # [n_padded, b]
    # Padding rows and each query's own item can never be retrieved. In-place updates
    # of b and (n_padded - n) entries, not a pass over the matrix.
    s = s.at[n:].set(-jnp.inf)
    s = s.at[self_index, jnp.arange(q.shape[0])].set(-jnp.inf, mode="drop")
    values, indices = column_top_k(s, k, group_size=group)
    return indices, values

  return jax.jit(jax.shard_map(
      local, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P()), out_specs=(P(AXIS), P(AXIS)),
  ))


def global_neighbours(
    queries: Any,
    gallery: Any,
    *,
    k: int,
    self_index: Any = None,
    chunk_per_device: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = False,
) -> Neighbours:
  """The ``k`` gallery items with the largest cosine similarity to each query.

  Queries are processed in chunks split over ``devices``, ``chunk_per_device`` on each
  (the gallery is replicated on each), so memory is ``[n, chunk_per_device]``
  similarities per device, not ``[n, q]``. Within a chunk: one matrix product, then the
  exact two-stage :func:`column_top_k`.

  Args:
    queries: global vectors ``[q, d]`` (normalised here).
    gallery: global vectors ``[n, d]`` (normalised here).
    k: neighbours per query, ``1 <= k <= n`` (``n - 1`` when queries are excluded).
    self_index: ``[q]`` int, the gallery index of each query, excluded from its own
      list (``-1``: none); ``None`` when the queries are not in the gallery. When the
      query set is the gallery, pass ``np.arange(n)``.
    chunk_per_device: queries per device and step; default 64 on CPU (larger
      similarity blocks are fresh allocations, whose page faults cost more than the
      matrix products save), 1024 on accelerators.
    devices: devices to split each chunk over; default all local devices.
    progress: show a progress bar.

  Returns:
    :class:`Neighbours` with ``indices`` and ``similarities`` ``[q, k]``; equal
    similarities are ordered by gallery index.
  """
  queries, gallery = check_vectors("queries", queries), check_vectors("gallery", gallery)
  if queries.shape[1] != gallery.shape[1]:
    raise ValueError(
        f"queries [q, d] and gallery [n, d] need the same d; got {queries.shape} and "
        f"{gallery.shape}."
    )
  q, n = queries.shape[0], gallery.shape[0]
  if self_index is None:
    self_index = np.full(q, -1, np.int32)
  self_index = np.asarray(self_index)
  if self_index.shape != (q,) or not np.issubdtype(self_index.dtype, np.integer):
    raise ValueError(
        f"self_index must be int [q={q}]; got {self_index.dtype} {self_index.shape}."
    )
  if self_index.size and not -1 <= self_index.min() <= self_index.max() < n:
    raise ValueError(f"self_index must hold gallery indices in [0, {n}) or -1.")
  available = n - int(np.any(self_index >= 0))
  if not 1 <= k <= available:
    raise ValueError(
        f"k must be in [1, {available}] (gallery of {n}"
        f"{', each query excluded' if available < n else ''}); got {k}."
    )
  mesh = query_mesh(devices)
  group = _group_size(n, k)
  padded = np.zeros((-(-n // group) * group, gallery.shape[1]), np.float32)
  padded[:n] = _normalize(gallery)
  # -1 (no own item) becomes an out-of-range row, which the masking update drops.
  self_index = np.where(self_index < 0, padded.shape[0], self_index).astype(np.int32)
  indices, values = run_chunked(
      _neighbours_fn(mesh, int(k), n, group), [_normalize(queries), self_index],
      [jax.device_put(padded, NamedSharding(mesh, P()))], mesh=mesh,
      chunk_size=chunk_size(chunk_per_device, q, mesh, cpu=64, accelerator=1024),
      progress=progress, desc="global ranking",
  )
  return Neighbours(indices, values)


def _normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
