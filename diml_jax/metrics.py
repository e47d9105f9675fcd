"""Retrieval and clustering metrics of deep metric learning, exactly as in the literature.

Retrieval metrics are computed from ranked lists: for each query, whether each retrieved
item has the query's label (``hits [q, L]``, best first, the query itself never in its
own list) and ``R``, the number of items of the query's class in the gallery: the other
items of the split, or a separate gallery (query/gallery benchmarks such as In-Shop).

- **Recall@k**: 1 if at least one of the first ``k`` items has the query's label, else 0.
- **R-Precision** (Musgrave et al. 2020, Sec. 3.2): the fraction of the first ``R`` items
  that have the query's label.
- **MAP@R** (same reference): ``(1 / R) sum_{i <= R} P(i) rel(i)``, with ``P(i)`` the
  precision of the first ``i`` items and ``rel(i)`` whether item ``i`` has the label.
- **NMI** of a clustering against the labels: ``2 I(Y; C) / (H(Y) + H(C))``, the
  arithmetic normalisation (scikit-learn's default), of :func:`kmeans` on the
  embeddings with as many clusters as classes.
- **F1** of the same clustering by pair counting (Manning et al. 2008, Sec. 16.3; the
  clustering score DGML reports next to NMI): over all pairs of items, precision is the
  fraction of same-cluster pairs that share a class, recall the fraction of same-class
  pairs that share a cluster, and F1 their harmonic mean.

Conventions (see README, Evaluation): ``R`` is the class size minus one (the query is
excluded from its own gallery; with a separate gallery, the gallery's items of the
class), and queries with ``R = 0`` (single-image classes, or classes the gallery lacks)
are left out of every retrieval average, as pytorch-metric-learning does. The original DIML
code instead takes ``R`` as the class size, query included, although the query is never
retrieved, and averages over all queries; :func:`retrieval_metrics` reproduces it with
``include_query_in_r=True``, to compare with published numbers.

References:
  Musgrave, Belongie, Lim. A Metric Learning Reality Check. ECCV 2020.
  Arthur, Vassilvitskii. k-means++: The Advantages of Careful Seeding. SODA 2007.
  Manning, Raghavan, Schütze. Introduction to Information Retrieval. 2008.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "recall_at_k",
    "r_precision",
    "map_at_r",
    "num_relevant",
    "retrieval_metrics",
    "KMeans",
    "kmeans",
    "nmi",
    "f1",
]


def _check_hits(hits, relevant=None) -> tuple[jax.Array, jax.Array | None]:
  hits = jnp.asarray(hits)
  if hits.ndim != 2 or hits.dtype != jnp.bool_:
    raise ValueError(f"hits must be a boolean array [q, L]; got {hits.dtype} {hits.shape}.")
  if relevant is None:
    return hits, None
  relevant = jnp.asarray(relevant)
  if relevant.shape != hits.shape[:1] or not jnp.issubdtype(relevant.dtype, jnp.integer):
    raise ValueError(
        f"relevant must be integer counts R [q] with q = {hits.shape[0]} (hits {hits.shape}); "
        f"got {relevant.dtype} {relevant.shape}."
    )
  return hits, relevant


def recall_at_k(hits: jax.Array, k: int) -> jax.Array:
  """Per-query Recall@k: whether any of the first ``k`` items is relevant.

  Args:
    hits: ``[q, L]`` bool, ``hits[i, j]`` whether the ``j``-th item retrieved for query
      ``i`` has its label; ``L >= k``.
    k: cut-off, ``1 <= k <= L``.

  Returns:
    ``[q]`` float32 of 0 and 1.
  """
  hits, _ = _check_hits(hits)
  if not 1 <= k <= hits.shape[1]:
    raise ValueError(f"k must be in [1, L={hits.shape[1]}] (hits {hits.shape}); got {k}.")
  return _recall_at_k(hits, k=int(k))


@functools.partial(jax.jit, static_argnames=("k",))
def _recall_at_k(hits, *, k):
  return jnp.any(hits[:, :k], axis=1).astype(jnp.float32)


def r_precision(hits: jax.Array, relevant: jax.Array) -> jax.Array:
  """Per-query R-Precision: relevant items among the first ``R``, divided by ``R``.

  Args:
    hits: ``[q, L]`` bool (see :func:`recall_at_k`), ``L >= max(R)``.
    relevant: ``R`` for each query, ``[q]`` int.

  Returns:
    ``[q]`` float32; 0 where ``R = 0`` (leave those queries out of averages).
  """
  hits, relevant = _check_hits(hits, relevant)
  _check_length(hits, relevant)
  return _r_precision(hits, relevant)


@jax.jit
def _r_precision(hits, relevant):
  within = jnp.arange(hits.shape[1]) < relevant[:, None]
  found = jnp.sum(hits & within, axis=1)
  return found / jnp.maximum(relevant, 1).astype(jnp.float32)


def map_at_r(hits: jax.Array, relevant: jax.Array) -> jax.Array:
  """Per-query MAP@R: ``(1 / R) sum_{i <= R} P(i) rel(i)`` (Musgrave et al. 2020).

  Args:
    hits: ``[q, L]`` bool (see :func:`recall_at_k`), ``L >= max(R)``.
    relevant: ``R`` for each query, ``[q]`` int.

  Returns:
    ``[q]`` float32; 0 where ``R = 0`` (leave those queries out of averages).
  """
  hits, relevant = _check_hits(hits, relevant)
  _check_length(hits, relevant)
  return _map_at_r(hits, relevant)


@jax.jit
def _map_at_r(hits, relevant):
  within = jnp.arange(hits.shape[1]) < relevant[:, None]
  rel = (hits & within).astype(jnp.float32)
  precision = jnp.cumsum(rel, axis=1) / jnp.arange(1, hits.shape[1] + 1, dtype=jnp.float32)
  return jnp.sum(precision * rel, axis=1) / jnp.maximum(relevant, 1).astype(jnp.float32)


def _check_length(hits: jax.Array, relevant: jax.Array) -> None:
  if int(jnp.max(relevant, initial=0)) > hits.shape[1]:
    raise ValueError(
        f"hits must hold at least max(R) = {int(jnp.max(relevant))} items per query for "
        f"R-Precision and MAP@R; got L = {hits.shape[1]}."
    )


def num_relevant(labels: np.ndarray, gallery_labels: np.ndarray | None = None, *,
                 include_query_in_r: bool = False) -> np.ndarray:
  """``R`` of each query: the number of gallery items of its class.

  Args:
    labels: ``[q]`` integer class labels of the queries.
    gallery_labels: ``[n]`` labels of a separate gallery (a query/gallery benchmark such
      as In-Shop): ``R`` counts its items of the query's class. ``None``: the queries are
      the gallery, each query against the others, and ``R`` is its class size minus one.
    include_query_in_r: count the query itself, as the original DIML code does (only
      without a separate gallery, where the query is one of the gallery's items).

  Returns:
    ``[q]`` int32.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be [q]; got shape {labels.shape}.")
  if gallery_labels is None:
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return (counts[inverse] - (0 if include_query_in_r else 1)).astype(np.int32)
  if include_query_in_r:
    raise ValueError("include_query_in_r=True counts the query among its gallery's items; "
                     "with a separate gallery the query is none of them: leave it False.")
  gallery_labels = np.asarray(gallery_labels)
  if gallery_labels.ndim != 1:
    raise ValueError(f"gallery_labels must be [n]; got shape {gallery_labels.shape}.")
  classes, inverse = np.unique(np.concatenate([gallery_labels, labels]), return_inverse=True)
  counts = np.bincount(inverse[:gallery_labels.size], minlength=classes.size)
  return counts[inverse[gallery_labels.size:]].astype(np.int32)


def retrieval_metrics(
    hits: jax.Array,
    relevant: jax.Array,
    *,
    recall_ks: Sequence[int] = (1, 2, 4, 8),
    include_query_in_r: bool = False,
) -> dict[str, float]:
  """Averages of Recall@k, R-Precision and MAP@R over the queries.

  With ``include_query_in_r=False`` (default, the literature's definition) ``relevant``
  is the class size minus one and queries with ``R = 0`` are left out of all averages
  (pytorch-metric-learning's rule: such a query has nothing to retrieve). With
  ``include_query_in_r=True`` (the original DIML code) ``relevant`` is the class size,
  query included, and every query counts, single-image classes with scores of 0: since
  the query is never retrieved, R-Precision and MAP@R are then at most ``(R - 1) / R``.
  Pass ``relevant`` from :func:`num_relevant` with the same flag.

  Args:
    hits: ``[q, L]`` bool, best first, the query excluded from its own list.
    relevant: ``[q]`` int, ``R`` of each query.
    recall_ks: cut-offs of Recall@k.
    include_query_in_r: the original DIML code's convention (see above).

  Returns:
    ``{"recall@k": ..., "r_precision": ..., "map@r": ..., "queries": counted}``, the
    scores as fractions in [0, 1].
  """
  hits, relevant = _check_hits(hits, relevant)
  counted = np.ones(hits.shape[0], bool) if include_query_in_r else np.asarray(relevant) > 0
  out = {}
  for k in recall_ks:
    out[f"recall@{k}"] = _mean(recall_at_k(hits, k), counted)
  out["r_precision"] = _mean(r_precision(hits, relevant), counted)
  out["map@r"] = _mean(map_at_r(hits, relevant), counted)
  out["queries"] = int(counted.sum())
  return out


def _mean(values: jax.Array, counted: np.ndarray) -> float:
  # float64 on the host: a float32 sum over 10^5 queries loses the 5th digit.
  values = np.asarray(values, np.float64)[counted]
  return float(values.mean()) if values.size else float("nan")


# --------------------------------------------------------------------------------------
# Clustering.


class KMeans(NamedTuple):
  """Result of :func:`kmeans`.

  Attributes:
    centroids: ``[k, d]``.
    assignments: the nearest centroid of each point, ``[n]`` int32.
    inertia: sum of squared distances of the points to their centroids, ``[]``.
  """

  centroids: jax.Array
  assignments: jax.Array
  inertia: jax.Array


def kmeans(
    x: jax.Array,
    k: int,
    *,
    key: jax.Array,
    iterations: int = 20,
    chunk_size: int = 4096,
) -> KMeans:
  """k-means with k-means++ seeding and a fixed number of Lloyd iterations.

  Seeding (Arthur & Vassilvitskii 2007): the first centroid is a uniformly drawn point,
  each next one a point drawn with probability proportional to its squared distance to
  the nearest centroid so far. Then ``iterations`` Lloyd steps: assign each point to its
  nearest centroid (ties to the lower index), move each centroid to the mean of its
  points; a centroid with no points stays where it is. Distances are computed in chunks
  of ``chunk_size`` points, so memory is ``[chunk_size, k]``, not ``[n, k]``.

  Args:
    x: points ``[n, d]`` (the evaluation passes L2-normalised global embeddings).
    k: number of clusters, ``1 <= k <= n``.
    key: PRNG key of the seeding.
    iterations: Lloyd iterations (fixed, so the cost is known; faiss's default is 20).
    chunk_size: points per distance computation.

  Returns:
    A :class:`KMeans`.
  """
  x = jnp.asarray(x)
  if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x must be floating points [n, d]; got {x.dtype} {x.shape}.")
  if not 1 <= k <= x.shape[0]:
    raise ValueError(f"k must be in [1, n={x.shape[0]}]; got {k}.")
  if iterations < 0 or chunk_size < 1:
    raise ValueError(
        f"iterations must be >= 0 and chunk_size >= 1; got {iterations} and {chunk_size}."
    )
  return _kmeans(x.astype(jnp.float32), key, k=int(k), iterations=int(iterations),
                 chunk=int(min(chunk_size, x.shape[0])))


@functools.partial(jax.jit, static_argnames=("k", "iterations", "chunk"))
def _kmeans(x, key, *, k, iterations, chunk):
  n, d = x.shape
  sq = jnp.sum(x * x, axis=1)

  def seed(i, carry):
    centroids, nearest, key = carry
    key, sub = jax.random.split(key)
    # Inverse-CDF draw: one uniform number per centroid instead of n Gumbel draws.
    cdf = jnp.cumsum(nearest)
    pick = jnp.searchsorted(cdf, jax.random.uniform(sub) * cdf[-1], side="right")
    c = x[jnp.minimum(pick, n - 1)]
    nearest = jnp.minimum(nearest, _sq_distances(x, sq, c))
    return centroids.at[i].set(c), nearest, key

  key, sub = jax.random.split(key)
  first = x[jax.random.randint(sub, (), 0, n)]
  centroids = jnp.zeros((k, d), x.dtype).at[0].set(first)
  nearest = _sq_distances(x, sq, first)
  centroids, _, _ = jax.lax.fori_loop(1, k, seed, (centroids, nearest, key))

  pad = -n % chunk
  xs = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, chunk, d)

  def assign(centroids):
    csq = jnp.sum(centroids * centroids, axis=1)

    def one(xc):  # argmin ||x - c||^2 = argmin |c|^2 - 2 <x, c>
      dist = csq[None, :] - 2.0 * xc @ centroids.T
      return jnp.argmin(dist, axis=1)

    return jax.lax.map(one, xs).reshape(-1)[:n].astype(jnp.int32)

  def lloyd(_, centroids):
    a = assign(centroids)
    sums = jax.ops.segment_sum(x, a, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones(n, x.dtype), a, num_segments=k)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centroids)

  centroids = jax.lax.fori_loop(0, iterations, lloyd, centroids)
  a = assign(centroids)
  # The inertia from the differences themselves: |x|^2 - 2 <x, c> + |c|^2 loses digits to
  # cancellation in float32 when the points are far from the origin.
  return KMeans(centroids, a, jnp.sum(jnp.square(x - centroids[a])))


def _sq_distances(x, sq, c):
  """``||x_i - c||^2`` for ``x [n, d]`` with ``sq = ||x_i||^2``: one matrix-vector product
  (twice as fast as forming ``x - c`` on a CPU: the seeding's cost is reading ``x``)."""
  return jnp.maximum(sq - 2.0 * (x @ c) + c @ c, 0.0)


def _check_labelings(labels, clusters) -> tuple[np.ndarray, np.ndarray]:
  labels, clusters = np.asarray(labels), np.asarray(clusters)
  if labels.ndim != 1 or labels.shape != clusters.shape:
    raise ValueError(
        f"labels and clusters must both be [n]; got {labels.shape} and {clusters.shape}."
    )
  return labels, clusters


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
  """Normalised mutual information ``2 I(Y; C) / (H(Y) + H(C))`` of two labelings.

  The arithmetic normalisation, scikit-learn's default ``normalized_mutual_info_score``
  as the deep-metric-learning literature reports it; natural logarithms (the ratio does
  not depend on the base). Two constant labelings give 1.

  Args:
    labels: ``[n]`` class labels.
    clusters: ``[n]`` cluster assignments.

  Returns:
    NMI in [0, 1].
  """
  labels, clusters = _check_labelings(labels, clusters)
  n = labels.size
  _, y = np.unique(labels, return_inverse=True)
  _, c = np.unique(clusters, return_inverse=True)
  pairs, joint = np.unique(np.stack([y, c]), axis=1, return_counts=True)
  py, pc = np.bincount(y) / n, np.bincount(c) / n
  pj = joint / n
  mi = np.sum(pj * np.log(pj / (py[pairs[0]] * pc[pairs[1]])))
  hy, hc = -np.sum(py * np.log(py)), -np.sum(pc * np.log(pc))
  if hy + hc == 0.0:
    return 1.0
  return float(np.clip(2.0 * mi / (hy + hc), 0.0, 1.0))


def f1(labels: np.ndarray, clusters: np.ndarray) -> float:
  """Pair-counting F1 of a clustering against the labels.

  With ``TP`` the pairs of items in the same class and the same cluster, precision is
  ``TP / (pairs in the same cluster)`` and recall ``TP / (pairs in the same class)``;
  ``F1 = 2 TP / (same-cluster pairs + same-class pairs)``, their harmonic mean. This is
  the F1 of the published DGML code (``metrics/f1.py``, which names the two counts the
  other way round; F1 is symmetric in them). Counts are exact integers. When no two items
  share a class and none share a cluster the two partitions agree, and F1 is 1.

  Args:
    labels: ``[n]`` class labels.
    clusters: ``[n]`` cluster assignments.

  Returns:
    F1 in [0, 1].
  """
  labels, clusters = _check_labelings(labels, clusters)
  _, y = np.unique(labels, return_inverse=True)
  _, c = np.unique(clusters, return_inverse=True)
  _, joint = np.unique(np.stack([y, c]), axis=1, return_counts=True)

  def pairs(counts):
    counts = counts.astype(np.int64)
    return int(np.sum(counts * (counts - 1) // 2))

  same_both, same_class, same_cluster = pairs(joint), pairs(np.bincount(y)), pairs(np.bincount(c))
  if same_class + same_cluster == 0:
    return 1.0
  return 2.0 * same_both / (same_class + same_cluster)
