"""Miners: which pairs or triplets of a batch a metric loss looks at, as fixed-shape masks.

pytorch-metric-learning decomposes a metric loss into similarity -> miner -> per-element loss
-> reduction, with miners returning index lists. Index lists have data-dependent lengths and
do not compile under ``jit``, so the miners here return boolean masks over all candidates
(``[b, b]`` for pairs, ``[b, b, b]`` for triplets) or, for samplers that pick one partner
per anchor, fixed-length ``[b]`` index arrays with a validity flag. Mining never passes
gradients: every miner reads its similarities or distances through ``stop_gradient``.

Public functions:

- :func:`all_pairs`: every positive and negative pair (self excluded).
- :func:`multi_similarity`: Wang et al.'s pair mining for the multi-similarity loss.
- :func:`all_triplets`, :func:`semihard_triplets`: triplet masks ``[b, b, b]``.
- :func:`distance_weighted`: Wu et al.'s distance-weighted sampling, one positive and one
  negative per anchor.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "PairMasks",
    "Sampled",
    "all_pairs",
    "multi_similarity",
    "all_triplets",
    "semihard_triplets",
    "distance_weighted",
    "check_labels",
    "check_square",
]


class PairMasks(NamedTuple):
  """Selected pairs ``(anchor i, partner j)``.

  Attributes:
    positive: ``[b, k]`` bool, pairs of the same class.
    negative: ``[b, k]`` bool, pairs of different classes.
  """

  positive: jax.Array
  negative: jax.Array


class Sampled(NamedTuple):
  """One positive and one negative partner per anchor (:func:`distance_weighted`).

  Attributes:
    positive: index of each anchor's positive, ``[b]`` int32; the anchor itself where
      ``has_positive`` is false.
    negative: index of each anchor's negative, ``[b]`` int32; the anchor itself where
      ``has_negative`` is false.
    has_positive: ``[b]`` bool, the anchor has another image of its class in the batch.
    has_negative: ``[b]`` bool, the anchor has an image of another class in the batch.
  """

  positive: jax.Array
  negative: jax.Array
  has_positive: jax.Array
  has_negative: jax.Array

  @property
  def partners(self) -> jax.Array:
    """``[b, 2]`` indices: column 0 the positive, column 1 the negative."""
    return jnp.stack([self.positive, self.negative], axis=1)

  @property
  def pairs(self) -> PairMasks:
    """The two pairs of each anchor as masks over :attr:`partners`, ``[b, 2]``."""
    false = jnp.zeros_like(self.has_positive)
    return PairMasks(
        positive=jnp.stack([self.has_positive, false], axis=1),
        negative=jnp.stack([false, self.has_negative], axis=1),
    )


def check_labels(labels, b: int | None = None, name: str = "labels") -> jax.Array:
  """Integer class ids ``[b]`` (any ``b`` if ``None``); the losses check theirs with it."""
  labels = jnp.asarray(labels)
  if labels.ndim != 1 or (b is not None and labels.shape[0] != b):
    want = "[b]" if b is None else f"[{b}]"
    raise ValueError(f"{name} must have shape {want}; got {labels.shape}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{name} must be integer class ids; got dtype {labels.dtype}.")
  return labels


def check_square(name: str, matrix, labels) -> tuple[jax.Array, jax.Array]:
  """A square similarity or distance matrix ``[b, b]`` and its labels ``[b]``."""
  matrix = jnp.asarray(matrix)
  labels = check_labels(labels)
  b = labels.shape[0]
  if matrix.shape != (b, b):
    raise ValueError(
        f"{name} must be a [b, b] matrix over the batch (b={b} labels); got {matrix.shape}."
    )
  return matrix, labels


def all_pairs(labels: jax.Array) -> PairMasks:
  """Every pair of the batch: positives (same class, not self) and negatives.

  Args:
    labels: class ids ``[b]``.

  Returns:
    :class:`PairMasks` with ``[b, b]`` masks.
  """
  labels = check_labels(labels)
  same = labels[:, None] == labels[None, :]
  return PairMasks(positive=same & ~jnp.eye(labels.shape[0], dtype=bool), negative=~same)


def multi_similarity(
    similarity: jax.Array, labels: jax.Array, *, epsilon: float = 0.1
) -> PairMasks:
  """Pair mining of the multi-similarity loss.

  A negative ``(i, j)`` is kept if ``s_ij + epsilon > min_p s_ip`` over the anchor's
  positives; a positive ``(i, p)`` if ``s_ip - epsilon < max_n s_in`` over its negatives
  (strict inequalities, as pytorch-metric-learning's ``MultiSimilarityMiner`` and the
  DIML / Roth et al. criteria). An anchor without positives keeps no negatives and one
  without negatives keeps no positives.

  Args:
    similarity: ``[b, b]`` similarities (cosine or DIML's), larger is more similar.
    labels: class ids ``[b]``.
    epsilon: mining margin (0.1 in the papers).

  Returns:
    :class:`PairMasks` with ``[b, b]`` masks.

  References:
    Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting for
    Deep Metric Learning. CVPR 2019, Sec. 4.2.
  """
  similarity, labels = check_square("similarity", similarity, labels)
  s = jax.lax.stop_gradient(similarity)
  pairs = all_pairs(labels)
  hardest_positive = jnp.min(jnp.where(pairs.positive, s, jnp.inf), axis=1, keepdims=True)
  hardest_negative = jnp.max(jnp.where(pairs.negative, s, -jnp.inf), axis=1, keepdims=True)
  return PairMasks(
      positive=pairs.positive & (s - epsilon < hardest_negative),
      negative=pairs.negative & (s + epsilon > hardest_positive),
  )


def all_triplets(labels: jax.Array) -> jax.Array:
  """Every triplet ``(a, p, n)``: ``p`` of ``a``'s class (not ``a``), ``n`` of another.

  Args:
    labels: class ids ``[b]``.

  Returns:
    ``[b, b, b]`` bool mask indexed ``[a, p, n]``.
  """
  pairs = all_pairs(labels)
  return pairs.positive[:, :, None] & pairs.negative[:, None, :]


def semihard_triplets(
    distances: jax.Array, labels: jax.Array, *, margin: float = 0.2
) -> jax.Array:
  """Semi-hard triplets: ``d_ap < d_an <= d_ap + margin``.

  The negative is farther than the positive but still inside the margin, so the triplet
  has a nonzero loss without being the hardest (FaceNet's choice; pytorch-metric-learning's
  ``TripletMarginMiner(type_of_triplets="semihard")``).

  Args:
    distances: ``[b, b]`` distances (Euclidean between normalised embeddings, or DIML's).
    labels: class ids ``[b]``.
    margin: the triplet margin.

  Returns:
    ``[b, b, b]`` bool mask indexed ``[a, p, n]``.

  References:
    Schroff, Kalenichenko, Philbin. FaceNet. CVPR 2015, Sec. 3.2.
  """
  distances, labels = check_square("distances", distances, labels)
  d = jax.lax.stop_gradient(distances)
  gap = d[:, None, :] - d[:, :, None]  # [a, p, n]: d_an - d_ap
  return all_triplets(labels) & (gap > 0) & (gap <= margin)


def distance_weighted(
    key: jax.Array,
    distances: jax.Array,
    labels: jax.Array,
    *,
    dim: int,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float | None = None,
) -> Sampled:
  """Distance-weighted sampling: one positive and one negative per anchor.

  Pairwise distances between points spread uniformly on the unit sphere in ``R^dim``
  have density ``q(d) ∝ d^(dim-2) (1 - d²/4)^((dim-3)/2)``. Each anchor draws its negative
  with probability ``∝ 1 / q(d)`` among the images of other classes, with distances
  clipped below at ``cutoff`` (so near-duplicates do not dominate), and its positive
  uniformly among the other images of its class. Both draws are
  ``jax.random.categorical`` on masked log-weights, so no weight is ever exponentiated
  (``1 / q`` spans e^90 at ``dim = 128``).

  ``nonzero_loss_cutoff``: Wu et al. also give zero weight to negatives at distance
  ``>= 1.4`` (their margin loss is zero there) and fall back to a uniform draw over the
  negatives when that leaves none. The DIML and Roth et al. code this project reproduces
  has that line commented out, hence ``None`` (off) by default; pass ``1.4`` for Wu et al.

  Args:
    key: a PRNG key.
    distances: ``[b, b]`` Euclidean distances between L2-normalised embeddings (the
      global vectors for DIML); read through ``stop_gradient``.
    labels: class ids ``[b]``.
    dim: the embedding dimension ``n`` of the sphere.
    cutoff: lower clip of the distances (0.5).
    nonzero_loss_cutoff: ``None``, or the distance from which negatives get weight 0.

  Returns:
    :class:`Sampled`; anchors without a positive (a class with one image in the batch)
    or without a negative (a batch of one class) are flagged, not dropped.

  References:
    Wu, Manmatha, Smola, Krähenbühl. Sampling Matters in Deep Embedding Learning.
    ICCV 2017, Sec. 4.
  """
  distances, labels = check_square("distances", distances, labels)
  if int(dim) < 4:
    raise ValueError(f"dim must be the embedding dimension (>= 4); got {dim!r}.")
  if not 0.0 < cutoff < 2.0:
    raise ValueError(f"cutoff must be in (0, 2); got {cutoff!r}.")
  if nonzero_loss_cutoff is not None and not cutoff < nonzero_loss_cutoff:
    raise ValueError(
        f"nonzero_loss_cutoff must be None or > cutoff={cutoff}; got {nonzero_loss_cutoff!r}."
    )
  b = labels.shape[0]
  pairs = all_pairs(labels)
  d = jnp.maximum(jax.lax.stop_gradient(distances), cutoff)
  # float32 distances of unit vectors can exceed 2 by rounding; keep the log finite.
  log_inverse_q = (2.0 - dim) * jnp.log(d) - 0.5 * (dim - 3.0) * jnp.log(
      jnp.maximum(1.0 - 0.25 * d * d, 1e-12)
  )
  negative = pairs.negative
  if nonzero_loss_cutoff is not None:
    near = negative & (d < nonzero_loss_cutoff)
    # No negative within the cutoff: uniform over all negatives, as Wu et al.
    uniform = ~jnp.any(near, axis=1, keepdims=True)
    log_weights = jnp.where(uniform, 0.0, log_inverse_q)
    negative = jnp.where(uniform, negative, near)
  else:
    log_weights = log_inverse_q
  key_positive, key_negative = jax.random.split(key)
  has_positive = jnp.any(pairs.positive, axis=1)
  has_negative = jnp.any(pairs.negative, axis=1)
  self_index = jnp.arange(b, dtype=jnp.int32)
  positive_index = jax.random.categorical(
      key_positive, jnp.where(pairs.positive, 0.0, -jnp.inf), axis=1
  ).astype(jnp.int32)
  negative_index = jax.random.categorical(
      key_negative, jnp.where(negative, log_weights, -jnp.inf), axis=1
  ).astype(jnp.int32)
  return Sampled(
      positive=jnp.where(has_positive, positive_index, self_index),
      negative=jnp.where(has_negative, negative_index, self_index),
      has_positive=has_positive,
      has_negative=has_negative,
  )
