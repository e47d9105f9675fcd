"""Multi-scale retrieval: global top-K neighbours, then structural re-ranking of the top K.

DIML (ICCV 2021, Sec. 3.4) ranks the whole gallery by the cosine of
the global vectors, then re-ranks only the first ``K`` items of each list by
``structural + global`` similarity; the items after ``K`` keep their global order. This
module does that for many queries at once, without an ``n x n`` matrix in memory:

- :func:`global_neighbours`: the ``k`` nearest gallery items of every query by cosine,
  query chunk by query chunk, each chunk split over the local devices;
- :func:`rerank_scores`: ``(structural + global) / 2`` between each query and its
  candidates (:func:`diml_jax.matching.rerank`), likewise chunked and split;
- :func:`multiscale_order`: the ranked lists after re-ranking their first ``K`` items;
- :func:`process_queries`, :func:`gather_queries`: with several JAX processes (hosts),
  each ranks its share of the queries, and the shares are then put together.

Scores are computed once for the largest ``K``; every smaller ``K`` only re-sorts.

**Ties** are broken by position, stably: the global ranking orders equal cosines by
gallery index (lower first), and re-ranking orders equal scores by their global rank.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diml_jax import matching

__all__ = [
    "Neighbours",
    "global_neighbours",
    "rerank_scores",
    "multiscale_order",
    "column_top_k",
    "process_queries",
    "gather_queries",
]

_AXIS = "queries"


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
# Host-side chunk loop, shared by the two sharded computations.


def _mesh(devices: Sequence[jax.Device] | None) -> Mesh:
  return Mesh(np.asarray(devices if devices is not None else jax.local_devices()), (_AXIS,))


def _chunked(fn, per_query: Sequence[np.ndarray], shared: Sequence[jax.Array], *,
             mesh: Mesh, chunk_size: int, progress: bool, desc: str):
  """Runs ``fn(*chunk_of_per_query, *shared)`` over query chunks, split over ``mesh``.

  Each chunk is padded to ``chunk_size`` (a multiple of the device count), so ``fn``
  compiles once. The next chunk is dispatched before the previous one is fetched, so
  the host keeps the devices busy. Returns ``fn``'s outputs concatenated, as NumPy.
  """
  q = per_query[0].shape[0]
  split = NamedSharding(mesh, P(_AXIS))
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


def _chunk_size(per_device: int | None, q: int, mesh: Mesh, cpu: int, accelerator: int) -> int:
  """Queries per step: ``per_device`` on each device (default by backend), at most ``q``."""
  if per_device is None:
    per_device = cpu if jax.default_backend() == "cpu" else accelerator
  if per_device < 1:
    raise ValueError(f"chunk_per_device must be >= 1 or None; got {per_device}.")
  d = mesh.devices.size
  return min(per_device, -(-q // d)) * d


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
      local, mesh=mesh, in_specs=(P(_AXIS), P(_AXIS), P()), out_specs=(P(_AXIS), P(_AXIS)),
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
  queries, gallery = _check_vectors("queries", queries), _check_vectors("gallery", gallery)
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
  mesh = _mesh(devices)
  group = _group_size(n, k)
  padded = np.zeros((-(-n // group) * group, gallery.shape[1]), np.float32)
  padded[:n] = _normalize(gallery)
  # -1 (no own item) becomes an out-of-range row, which the masking update drops.
  self_index = np.where(self_index < 0, padded.shape[0], self_index).astype(np.int32)
  indices, values = _chunked(
      _neighbours_fn(mesh, int(k), n, group), [_normalize(queries), self_index],
      [jax.device_put(padded, NamedSharding(mesh, P()))], mesh=mesh,
      chunk_size=_chunk_size(chunk_per_device, q, mesh, cpu=64, accelerator=1024),
      progress=progress, desc="global ranking",
  )
  return Neighbours(indices, values)


def _normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _check_vectors(name: str, x: Any, layout: str = "[n, d]") -> np.ndarray:
  x = np.asarray(x)
  dims = layout.count(",") + 1
  if x.ndim != dims or not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{name} must be floating-point {layout}; got {x.dtype} {x.shape}.")
  return x


# --------------------------------------------------------------------------------------
# Structural re-ranking.


@functools.lru_cache(maxsize=None)
def _rerank_fn(mesh: Mesh, marginals: str, mass: float, options: matching.SinkhornOptions):
  # One device's queries (and with part weights, theirs: ``qw``); the gallery (and its
  # part weights ``gw``) replicated.
  def local(ql, qg, candidates, *rest):
    if marginals == "weights":
      qw, gl, gg, gw = rest
      pair_marginals = (qw, gw)
    else:
      gl, gg = rest
      pair_marginals = marginals
    return matching.rerank(
        ql, gl, qg, gg, indices=candidates, quantity="similarity",
        marginals=pair_marginals, mass=mass, options=options,
    )

  per_query = 4 if marginals == "weights" else 3
  shared = 3 if marginals == "weights" else 2
  # OTT's Sinkhorn has a lax.cond whose branches differ in shard_map's varying-axis
  # types, so the check is off; every computation here is per device anyway.
  return jax.jit(jax.shard_map(
      local, mesh=mesh, in_specs=(P(_AXIS),) * per_query + (P(),) * shared,
      out_specs=P(_AXIS), check_vma=False,
  ))


def rerank_scores(
    query_local: Any,
    query_global: Any,
    gallery_local: Any,
    gallery_global: Any,
    candidates: Any,
    *,
    marginals: str | tuple[Any, Any] = "cross",
    mass: float = 1.0,
    chunk_per_device: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = False,
    options: matching.SinkhornOptions | None = None,
) -> np.ndarray:
  """DIML similarity ``(structural + global) / 2`` of each query with its candidates.

  The score that re-ranks (it orders as ``structural + global``), from
  :func:`diml_jax.matching.rerank`. Queries are processed in chunks split over
  ``devices``, ``chunk_per_device`` on each; the gallery is replicated on each device,
  and ``rerank`` gathers (and normalises) each tile's candidates from it by index, so
  no ``[chunk, k, r, c]`` copy of candidate features is made: a tile's candidates are
  read from memory once and then stay in cache.

  Args:
    query_local: local features of the queries ``[q, r, c]``.
    query_global: global vectors of the queries ``[q, c]``.
    gallery_local: local features of the gallery ``[n, r, c]``.
    gallery_global: global vectors of the gallery ``[n, c]``.
    candidates: gallery indices to score for each query ``[q, k]`` int.
    marginals: a kind of :data:`diml_jax.matching.MARGINAL_KINDS` (default ``"cross"``),
      or part weights ``(query weights [q, r], gallery weights [n, r])``, e.g. ViT
      attention rollouts pooled to the grid (:func:`diml_jax.matching.rerank`).
    mass: ``p`` of partial similarity; the structural term is on the scale of
      :class:`diml_jax.matching.Matching` (the mean over the matched parts). 1: ordinary
      matching.
    chunk_per_device: queries per device and step; default 16 on CPU, 128 on
      accelerators.
    devices: devices to split each chunk over; default all local devices.
    progress: show a progress bar.
    options: the solver's :class:`diml_jax.matching.SinkhornOptions`.

  Returns:
    ``[q, k]`` float32.
  """
  ql = _check_vectors("query_local", query_local, "[q, r, c]")
  qg = _check_vectors("query_global", query_global, "[q, c]")
  gl = _check_vectors("gallery_local", gallery_local, "[n, r, c]")
  gg = _check_vectors("gallery_global", gallery_global, "[n, c]")
  candidates = np.asarray(candidates)
  q, n, c = ql.shape[0], gl.shape[0], ql.shape[2]
  if qg.shape != (q, c) or gl.shape[2] != c or gg.shape != (n, c):
    raise ValueError(
        f"expected query_local [q, r, c], query_global [q, c], gallery_local [n, r, c], "
        f"gallery_global [n, c] with one q, n and c; got {ql.shape}, {qg.shape}, "
        f"{gl.shape}, {gg.shape}."
    )
  if (candidates.ndim != 2 or candidates.shape[0] != q
      or not np.issubdtype(candidates.dtype, np.integer)):
    raise ValueError(
        f"candidates must be int [q={q}, k]; got {candidates.dtype} {candidates.shape}."
    )
  if candidates.size and not 0 <= candidates.min() <= candidates.max() < n:
    raise ValueError(f"candidates must be gallery indices in [0, {n}).")
  per_query_weights, gallery_weights = [], []
  if not isinstance(marginals, str):
    if not (isinstance(marginals, tuple) and len(marginals) == 2):
      raise ValueError(f"marginals must be one of {matching.MARGINAL_KINDS} or a pair "
                       f"(query weights [q, r], gallery weights [n, r]).")
    qw = _check_vectors("query weights", marginals[0], "[q, r]")
    gw = _check_vectors("gallery weights", marginals[1], "[n, r]")
    if qw.shape != ql.shape[:2] or gw.shape != gl.shape[:2]:
      raise ValueError(f"part weights must be [q, r] = {ql.shape[:2]} and [n, r] = "
                       f"{gl.shape[:2]}; got {qw.shape} and {gw.shape}.")
    per_query_weights, gallery_weights = [qw.astype(np.float32)], [gw.astype(np.float32)]
  if candidates.shape[1] == 0:
    return np.zeros((q, 0), np.float32)
  mesh = _mesh(devices)
  replicated = NamedSharding(mesh, P())
  fn = _rerank_fn(mesh, "weights" if per_query_weights else marginals,
                  matching.check_mass(mass), matching.check_options(options))
  return _chunked(
      fn, [ql.astype(np.float32, copy=False), qg.astype(np.float32, copy=False),
           candidates.astype(np.int32), *per_query_weights],
      [jax.device_put(a.astype(np.float32, copy=False), replicated)
       for a in (gl, gg, *gallery_weights)],
      mesh=mesh, chunk_size=_chunk_size(chunk_per_device, q, mesh, cpu=16, accelerator=128),
      progress=progress, desc="structural re-ranking",
  )


@functools.partial(jax.jit, static_argnames=("k",))
def _multiscale_order(indices, scores, *, k):
  order = jnp.argsort(-scores[:, :k], axis=1, stable=True)
  head = jnp.take_along_axis(indices[:, :k], order, axis=1)
  return jnp.concatenate([head, indices[:, k:]], axis=1)


def multiscale_order(indices: Any, scores: Any, *, k: int) -> np.ndarray:
  """Ranked lists with their first ``k`` items re-sorted by ``scores``.

  Multi-scale retrieval (DIML, ICCV 2021, Sec. 3.4): positions ``0..k-1`` are ordered by
  decreasing score (equal scores keep their global order); positions from ``k`` on are
  unchanged. ``k = 0`` is the global ranking.

  Args:
    indices: globally ranked gallery indices ``[q, m]``.
    scores: re-ranking score of the first ``kmax`` of them ``[q, kmax]``, ``kmax <= m``.
    k: how many to re-rank, ``0 <= k <= kmax``.

  Returns:
    ``[q, m]`` gallery indices.
  """
  indices, scores = np.asarray(indices), np.asarray(scores)
  if indices.ndim != 2 or scores.ndim != 2 or scores.shape[0] != indices.shape[0] \
      or scores.shape[1] > indices.shape[1]:
    raise ValueError(
        f"expected indices [q, m] and scores [q, kmax] with kmax <= m; got "
        f"{indices.shape} and {scores.shape}."
    )
  if not 0 <= k <= scores.shape[1]:
    raise ValueError(f"k must be in [0, kmax={scores.shape[1]}]; got {k}.")
  if k == 0:
    return indices
  return np.asarray(_multiscale_order(indices, scores, k=int(k)))


# --------------------------------------------------------------------------------------
# Several processes: each ranks its share of the queries.


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
