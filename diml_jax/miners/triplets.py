"""Triplet miners: masks ``[b, b, b]`` indexed ``[a, p, n]`` over every triplet of a batch."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diml_jax.miners.checks import check_labels, check_square
from diml_jax.miners.pairs import all_pairs

__all__ = ["all_triplets", "semihard_triplets", "random_triplets"]


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


def random_triplets(key: jax.Array, labels: jax.Array, *, num: int | None = None) -> jax.Array:
  """``num`` triplets drawn uniformly, without replacement, from all triplets of the batch.

  The published ``random`` miner (``random.sample`` of ``b`` triplets out of every
  ``(a, p, n)``), drawn here with the Gumbel top-k trick over the ``[b, b, b]`` mask of
  :func:`all_triplets`, so the shape is fixed. A batch with fewer than ``num`` triplets
  gives all of them.

  Args:
    key: a PRNG key.
    labels: class ids ``[b]``.
    num: how many triplets (default ``b``, as published).

  Returns:
    ``[b, b, b]`` bool mask indexed ``[a, p, n]`` with at most ``num`` entries.
  """
  labels = check_labels(labels)
  valid = all_triplets(labels).reshape(-1)
  num = labels.shape[0] if num is None else int(num)
  if not 1 <= num <= valid.shape[0]:
    raise ValueError(f"num must be in 1..b^3={valid.shape[0]}; got {num}.")
  scores = jnp.where(valid, jax.random.gumbel(key, valid.shape), -jnp.inf)
  _, picked = jax.lax.top_k(scores, num)
  mask = jnp.zeros_like(valid).at[picked].set(valid[picked])
  return mask.reshape((labels.shape[0],) * 3)
