"""Histogram loss (Ustinova & Lempitsky 2016) on a similarity matrix (global or DIML's)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diml_jax import miners
from diml_jax.losses._reduce import LossOutput

__all__ = ["histogram_loss"]


def histogram_loss(similarity: jax.Array, labels: jax.Array, *, num_bins: int = 65
                   ) -> LossOutput:
  """Probability that a negative pair is more similar than a positive one, by histograms.

  The similarities of the positive and of the negative pairs (each unordered pair once)
  are spread over ``num_bins`` evenly spaced nodes ``t_r`` on ``[-1, 1]`` with linear
  (triangular) weights ``relu(1 - |s - t_r| / Δ)``, normalised to histograms ``h+``
  and ``h-``; the loss is ``sum_r h-_r sum_{q <= r} h+_q``. This is the paper's and the
  published ``criteria/histogram.py``'s estimate; that code assigns bins by float
  equality, which drops similarities when ``2 / (num_bins - 1)`` is not a power of two
  (its SOP run's 11 bins), and here every similarity counts.

  Args:
    similarity: ``[b, b]`` (cosine of normalised embeddings, or DIML's).
    labels: class ids ``[b]``.
    num_bins: nodes on ``[-1, 1]`` (65; 11 on SOP in the published runs).

  Returns:
    :class:`LossOutput`: ``selected`` is the number of pairs, ``active_fraction`` the
    share of negative pairs more similar than the least similar positive one.

  References:
    Ustinova, Lempitsky. Learning Deep Embeddings with Histogram Loss. NeurIPS 2016,
    Sec. 3.
  """
  similarity, labels = miners.check_square("similarity", similarity, labels)
  if int(num_bins) < 2:
    raise ValueError(f"num_bins must be >= 2; got {num_bins!r}.")
  b = labels.shape[0]
  upper = jnp.triu(jnp.ones((b, b), bool), 1)
  same = labels[:, None] == labels[None, :]
  positive, negative = upper & same, upper & ~same
  step = 2.0 / (num_bins - 1)
  nodes = jnp.linspace(-1.0, 1.0, num_bins)
  weights = jax.nn.relu(1.0 - jnp.abs(similarity[None] - nodes[:, None, None]) / step)

  def histogram(mask):
    return (jnp.sum(jnp.where(mask, weights, 0.0), axis=(1, 2))
            / jnp.maximum(jnp.sum(mask), 1))

  loss = jnp.sum(histogram(negative) * jnp.cumsum(histogram(positive)))
  s = jax.lax.stop_gradient(similarity)
  least_positive = jnp.min(jnp.where(positive, s, jnp.inf))
  n_negative = jnp.sum(negative)
  return LossOutput(
      loss=loss,
      active_fraction=jnp.sum(negative & (s > least_positive)) / jnp.maximum(n_negative, 1),
      selected=jnp.sum(positive) + n_negative,
  )
