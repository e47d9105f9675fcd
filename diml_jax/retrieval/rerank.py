"""Structural re-ranking: DIML's ``(structural + global) / 2`` between each query and its
global candidates, and the ranked lists with their first ``K`` items re-sorted by it.

DIML, ICCV 2021, Sec. 3.4 (multi-scale retrieval).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diml_jax import matching
from diml_jax.retrieval.chunks import AXIS, check_vectors, chunk_size, query_mesh, run_chunked

__all__ = ["rerank_scores", "multiscale_order"]


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
      local, mesh=mesh, in_specs=(P(AXIS),) * per_query + (P(),) * shared,
      out_specs=P(AXIS), check_vma=False,
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
  ql = check_vectors("query_local", query_local, "[q, r, c]")
  qg = check_vectors("query_global", query_global, "[q, c]")
  gl = check_vectors("gallery_local", gallery_local, "[n, r, c]")
  gg = check_vectors("gallery_global", gallery_global, "[n, c]")
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
    qw = check_vectors("query weights", marginals[0], "[q, r]")
    gw = check_vectors("gallery weights", marginals[1], "[n, r]")
    if qw.shape != ql.shape[:2] or gw.shape != gl.shape[:2]:
      raise ValueError(f"part weights must be [q, r] = {ql.shape[:2]} and [n, r] = "
                       f"{gl.shape[:2]}; got {qw.shape} and {gw.shape}.")
    per_query_weights, gallery_weights = [qw.astype(np.float32)], [gw.astype(np.float32)]
  if candidates.shape[1] == 0:
    return np.zeros((q, 0), np.float32)
  mesh = query_mesh(devices)
  replicated = NamedSharding(mesh, P())
  fn = _rerank_fn(mesh, "weights" if per_query_weights else marginals,
                  matching.check_mass(mass), matching.check_options(options))
  return run_chunked(
      fn, [ql.astype(np.float32, copy=False), qg.astype(np.float32, copy=False),
           candidates.astype(np.int32), *per_query_weights],
      [jax.device_put(a.astype(np.float32, copy=False), replicated)
       for a in (gl, gg, *gallery_weights)],
      mesh=mesh, chunk_size=chunk_size(chunk_per_device, q, mesh, cpu=16, accelerator=128),
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
