"""Sampling miners: random partners, a fixed number per anchor, as ``[b]`` indices with a
flag where an anchor has none (or, for :func:`npair`, as ``[b, b]`` masks)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diml_jax.miners.checks import check_labels, check_square
from diml_jax.miners.pairs import all_pairs
from diml_jax.miners.types import PairMasks, Sampled

__all__ = ["distance_weighted", "semihard", "softhard", "npair", "quadruplet_negatives"]


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


def _uniform_choice(key: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One column per row of ``mask [b, k]``, uniformly among its true entries.

  Returns ``(index [b] int32, found [b] bool)``; rows without a true entry get their own
  row index (a placeholder that ``found`` flags).
  """
  found = jnp.any(mask, axis=1)
  index = jax.random.categorical(key, jnp.where(mask, 0.0, -jnp.inf), axis=1)
  return jnp.where(found, index, jnp.arange(mask.shape[0])).astype(jnp.int32), found


def _choice_with_fallback(key, preferred: jax.Array, allowed: jax.Array):
  """Uniform among ``preferred`` where a row has one, else uniform among ``allowed``."""
  use = jnp.where(jnp.any(preferred, axis=1, keepdims=True), preferred, allowed)
  return _uniform_choice(key, use)


def semihard(key: jax.Array, distances: jax.Array, labels: jax.Array, *,
             margin: float = 0.2) -> Sampled:
  """One semi-hard triplet per anchor, as the published ``semihard`` miner.

  Each anchor takes a random positive ``p``, then a random negative with
  ``d_ap < d_an < d_ap + margin``, or a random negative if it has none of those. Unlike
  :func:`semihard_triplets` (every semi-hard triplet, FaceNet's / pytorch-metric-learning's
  choice), this keeps one triplet per anchor.

  Args:
    key: a PRNG key.
    distances: ``[b, b]`` distances; read through ``stop_gradient``.
    labels: class ids ``[b]``.
    margin: the triplet loss's margin (0.2).

  Returns:
    :class:`Sampled`.

  References:
    Schroff, Kalenichenko, Philbin. FaceNet. CVPR 2015, Sec. 3.2; Roth et al. Revisiting
    Training Strategies and Generalization Performance in Deep Metric Learning. ICML 2020.
  """
  distances, labels = check_square("distances", distances, labels)
  d = jax.lax.stop_gradient(distances)
  pairs = all_pairs(labels)
  key_p, key_n = jax.random.split(key)
  positive, has_positive = _uniform_choice(key_p, pairs.positive)
  d_ap = jnp.take_along_axis(d, positive[:, None], axis=1)
  window = pairs.negative & (d > d_ap) & (d < d_ap + margin)
  negative, has_negative = _choice_with_fallback(key_n, window, pairs.negative)
  return Sampled(positive, negative, has_positive, has_negative)


def softhard(key: jax.Array, distances: jax.Array, labels: jax.Array) -> Sampled:
  """One hard-ish triplet per anchor, as the published ``softhard`` miner.

  Each anchor takes a random positive among those farther than its nearest negative
  (``d_ap > min_n d_an``) and a random negative among those nearer than its farthest
  positive (``d_an < max_p d_ap``); where there is none, a random positive (negative).

  Args:
    key: a PRNG key.
    distances: ``[b, b]`` distances; read through ``stop_gradient``.
    labels: class ids ``[b]``.

  Returns:
    :class:`Sampled`.

  References:
    Roth et al. Revisiting Training Strategies and Generalization Performance in Deep
    Metric Learning. ICML 2020 (``batchminer/softhard.py`` of their and the DIML code).
  """
  distances, labels = check_square("distances", distances, labels)
  d = jax.lax.stop_gradient(distances)
  pairs = all_pairs(labels)
  farthest_positive = jnp.max(jnp.where(pairs.positive, d, -jnp.inf), axis=1, keepdims=True)
  nearest_negative = jnp.min(jnp.where(pairs.negative, d, jnp.inf), axis=1, keepdims=True)
  key_p, key_n = jax.random.split(key)
  positive, has_positive = _choice_with_fallback(
      key_p, pairs.positive & (d > nearest_negative), pairs.positive)
  negative, has_negative = _choice_with_fallback(
      key_n, pairs.negative & (d < farthest_positive), pairs.negative)
  return Sampled(positive, negative, has_positive, has_negative)


def npair(key: jax.Array, labels: jax.Array) -> PairMasks:
  """N-pair mining: one random positive per anchor and every image of another class.

  The published ``npair`` miner; anchors without a positive select nothing. (It takes
  every image but the anchor and its positive as negatives, which is the same thing for
  its two images per class; its commented-out line, other classes only, is used here.)

  Args:
    key: a PRNG key.
    labels: class ids ``[b]``.

  Returns:
    :class:`PairMasks` ``[b, b]``, at most one positive per row.

  References:
    Sohn. Improved Deep Metric Learning with Multi-class N-pair Loss Objective. NeurIPS
    2016, Sec. 3.
  """
  pairs = all_pairs(labels)
  positive, has_positive = _uniform_choice(key, pairs.positive)
  one_positive = jax.nn.one_hot(positive, labels.shape[0], dtype=bool) & has_positive[:, None]
  return PairMasks(positive=one_positive, negative=pairs.negative & has_positive[:, None])


def quadruplet_negatives(key: jax.Array, labels: jax.Array,
                         negative: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The quadruplet loss's second negative: an image of neither the anchor's nor the
  negative's class, uniformly.

  Args:
    key: a PRNG key.
    labels: class ids ``[b]``.
    negative: each anchor's negative, ``[b]`` int (e.g. :attr:`Sampled.negative`).

  Returns:
    ``(index [b] int32, found [b] bool)``: ``found`` is false where the batch has no
    third class.

  References:
    Chen, Chen, Zhang, Huang. Beyond Triplet Loss: a Deep Quadruplet Network for Person
    Re-identification. CVPR 2017, Sec. 3.
  """
  labels = check_labels(labels)
  negative = jnp.asarray(negative)
  if negative.shape != labels.shape or not jnp.issubdtype(negative.dtype, jnp.integer):
    raise ValueError(f"negative must be int indices {list(labels.shape)}; got "
                     f"{negative.dtype}{list(negative.shape)}.")
  same = labels[None, :] == labels[:, None]
  # Row negative[a] of `same`, as a product with a one-hot (a gather by a batch-sharded
  # index does not lower under an explicit-sharding mesh).
  same_as_negative = jax.nn.one_hot(negative, labels.shape[0]) @ same.astype(jnp.float32) > 0
  return _uniform_choice(key, ~same & ~same_as_negative)
