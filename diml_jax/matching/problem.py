"""From features to transport problems: part similarities ``S``, distances ``D``, marginals.

Each image is a set of ``r`` local feature vectors (its parts) and one global vector. For a
pair ``(x, y)``, with the local and global vectors L2-normalised (DIML, ICCV 2021, Sec. 3.2):
``S_ij = <x_i, y_j>``, cost ``1 - S``, and marginals ``mu_i ∝ relu(<x_i, g_y>)``,
``nu_j ∝ relu(<y_j, g_x>)`` (``"cross"``: a part weighs as much as it resembles the other
image as a whole), the published training criteria's swapped form of it
(``"cross_swapped"``, see :func:`marginal_pair`), ``1 / r`` (``"uniform"``), or given part
weights (``"weights"``).

**The default global vector** is the mean of the *raw* local features, normalised, as in
the published DIML code (``criteria/margin_diml.py``: ``feature_map.mean([2, 3])``); the
losses, the miners and the matching functions all use it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diml_jax.matching.checks import as_float32
from diml_jax.matching.types import Quantity

__all__ = [
    "DIML_DISTANCE_FLOOR",
    "DISTANCE_FLOOR",
    "combine",
    "default_global",
    "inner",
    "local_weights",
    "marginal_pair",
    "normalize",
    "prepare",
    "probabilities",
    "unit_distance",
]

# Below this total weight a marginal is taken as empty (every part anti-correlated with
# the other image, or all weights zero) and replaced by the uniform marginal.
_EMPTY_MASS = 1e-6
# Added under the square root of distances between unit vectors, so that identical
# vectors give a finite gradient, as the published criteria do: the margin loss on global
# embeddings (criteria/margin.py) adds 1e-8, the margin loss with DIML
# (criteria/margin_diml.py) 1e-6 to both its local and its global distances.
DISTANCE_FLOOR = 1e-8
DIML_DISTANCE_FLOOR = 1e-6


def normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """L2-normalises ``x`` along ``axis``; an all-zero vector stays zero (finite gradient)."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, 1e-12))


def probabilities(weights: jax.Array) -> jax.Array:
  """Part weights ``[..., r]`` -> a probability vector: ``relu``, then divided by the sum;
  uniform if the sum is (nearly) zero. The one normaliser of every marginal."""
  weights = jax.nn.relu(weights)
  mass = weights.sum(-1, keepdims=True)
  empty = mass < _EMPTY_MASS
  uniform = jnp.full_like(weights, 1.0 / weights.shape[-1])
  return jnp.where(empty, uniform, weights / jnp.where(empty, 1.0, mass))


def default_global(x: jax.Array) -> jax.Array:
  """The default global vector of local features ``[..., r, c]``: their mean ``[..., c]``."""
  return x.mean(-2)


def prepare(x: jax.Array, g: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Normalised local features ``[..., r, c]`` and global vectors ``[..., c]`` (by default
  the normalised mean of the raw local features)."""
  x = as_float32(x)
  g = default_global(x) if g is None else as_float32(g)
  return normalize(x), normalize(g)


def marginal_pair(marginals: str, x_gy: jax.Array, y_gx: jax.Array, wx=None, wy=None):
  """``(mu, nu)`` ``[..., r1]``, ``[..., r2]`` of a batch of pairs.

  ``"cross"`` is the paper's form (DIML, ICCV 2021, Sec. 3.2; the published evaluation,
  ``utilities/diml.py``): ``mu_i ∝ relu(<x_i, g_y>)``, ``nu_j ∝ relu(<y_j, g_x>)``.
  ``"cross_swapped"`` is the form the published training criteria compute
  (``criteria/margin_diml.py`` and ``criteria/multisimilarity_diml.py``,
  ``cross_attention``), with which the published models were trained: the two images'
  roles exchanged, ``mu_i ∝ relu(<y_i, g_x>)`` (the weights of y's parts, given to x's
  parts) and ``nu_j ∝ relu(<x_j, g_y>)``. It pairs part ``i`` of one image with part
  ``i`` of the other, so both need the same number of parts (``r1 == r2``).

  Args:
    marginals: ``"cross"``, ``"cross_swapped"``, ``"uniform"`` or ``"weights"``.
    x_gy: correlations ``<x_i, g_y>`` ``[..., r1]``.
    y_gx: correlations ``<y_j, g_x>`` ``[..., r2]``.
    wx: for ``"weights"``: part weights of the first images, broadcasting to ``x_gy``.
    wy: likewise for the second images.

  Raises:
    ValueError: ``"cross_swapped"`` with ``r1 != r2``.
  """
  if marginals == "weights":
    return (probabilities(jnp.broadcast_to(wx, x_gy.shape).astype(x_gy.dtype)),
            probabilities(jnp.broadcast_to(wy, y_gx.shape).astype(y_gx.dtype)))
  if marginals == "cross":
    return probabilities(x_gy), probabilities(y_gx)
  if marginals == "cross_swapped":
    if x_gy.shape[-1] != y_gx.shape[-1]:
      raise ValueError(
          f"marginals='cross_swapped' gives each part of one image the weight of the part "
          f"with the same index in the other, so both need the same number of parts; got "
          f"r1={x_gy.shape[-1]} and r2={y_gx.shape[-1]}: use the same grid on both sides, "
          f"or marginals='cross'.")
    return probabilities(y_gx), probabilities(x_gy)
  return (jnp.full_like(x_gy, 1.0 / x_gy.shape[-1]),
          jnp.full_like(y_gx, 1.0 / y_gx.shape[-1]))


def unit_distance(similarity: jax.Array, floor: float = DISTANCE_FLOOR) -> jax.Array:
  """Euclidean distance between unit vectors from their cosine similarity:
  ``sqrt(2 - 2 cos + floor)``."""
  return jnp.sqrt(jnp.maximum(2.0 - 2.0 * similarity, 0.0) + floor)


def local_weights(quantity: Quantity, s: jax.Array) -> jax.Array:
  """What the flow weighs for ``quantity``: ``S``, or ``D`` for the distance (with the
  published DIML criterion's floor)."""
  return unit_distance(s, DIML_DISTANCE_FLOOR) if quantity == "distance" else s


def combine(quantity: Quantity, transported: jax.Array, global_sim: jax.Array,
            mass: float = 1.0) -> jax.Array:
  """A DIML quantity from ``sum T ⊙ W`` (``W`` from :func:`local_weights`) and the global term.

  The structural term is divided by the flow's mass ``p`` (the similarity scale of
  :class:`~diml_jax.matching.Matching`): the flow-weighted mean over the matched parts, on
  the scale of a cosine (or of a distance between unit vectors) whatever ``p``, so the
  losses' margins and the ``structural + global`` re-ranking keep their meaning.
  ``"similarity"`` is ``(structural + <g_x, g_y>) / 2`` (the multi-similarity loss with
  DIML), ``"distance"`` ``(structural + ||g_x - g_y||) / 2`` (the margin loss with DIML).
  """
  transported = transported / mass
  if quantity == "structural":
    return transported
  if quantity == "similarity":
    return 0.5 * (transported + global_sim)
  return 0.5 * (transported + unit_distance(global_sim, DIML_DISTANCE_FLOOR))


def inner(a: jax.Array, b: jax.Array) -> jax.Array:
  """``sum_ij a_ij b_ij`` over the last two axes."""
  return jnp.sum(a * b, (-2, -1))
