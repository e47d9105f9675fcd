"""N-pair loss (Sohn 2016) on unnormalised embeddings, as the published DIML baseline."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diml_jax import miners
from diml_jax.losses import quantities
from diml_jax.losses._reduce import LossOutput, embedding_norm, log1p_sum_exp

__all__ = ["npair_loss", "npair_terms"]


def npair_terms(similarity: jax.Array, pairs: miners.PairMasks) -> jax.Array:
  """Per anchor ``log(1 + sum_n exp(s_an - s_ap))``, ``[b]``; 0 for anchors without a pair.

  Args:
    similarity: ``[b, b]`` inner products.
    pairs: :func:`miners.npair`'s masks: one positive per anchor, its negatives.
  """
  s_ap = jnp.sum(jnp.where(pairs.positive, similarity, 0.0), axis=1, keepdims=True)
  return log1p_sum_exp(similarity - s_ap, pairs.negative, axis=1)


def npair_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    pairs: miners.PairMasks,
    l2_weight: float = 0.005,
) -> LossOutput:
  """N-pair loss: ``mean_a log(1 + sum_n exp(<x_a, x_n> - <x_a, x_p>)) + l2 mean_i |x_i|``.

  The published ``criteria/npair.py``: unnormalised embeddings, one positive per anchor
  (:func:`miners.npair`), the mean over anchors that have one, plus ``l2_weight`` times
  the batch's mean embedding norm. (Sohn's paper penalises the squared norm with weight
  0.02 x 0.25; the published code the norm itself, with 0.005.)

  Args:
    embeddings: ``[b, d]``, not normalised.
    labels: class ids ``[b]``.
    pairs: :func:`miners.npair`'s masks ``[b, b]``.
    l2_weight: weight of the norm penalty (0.005).

  Returns:
    :class:`LossOutput`: ``selected`` is the number of anchors with a positive,
    ``active_fraction`` their share of the batch.

  References:
    Sohn. Improved Deep Metric Learning with Multi-class N-pair Loss Objective. NeurIPS
    2016, Sec. 3.
  """
  embeddings = quantities.check_embeddings("embeddings", embeddings)
  labels = miners.check_labels(labels, embeddings.shape[0])
  anchors = jnp.any(pairs.positive, axis=1)
  terms = npair_terms(quantities.inner_product(embeddings), pairs)
  count = jnp.sum(anchors)
  return LossOutput(
      loss=jnp.sum(jnp.where(anchors, terms, 0.0)) / jnp.maximum(count, 1)
      + l2_weight * embedding_norm(embeddings),
      active_fraction=count / anchors.shape[0],
      selected=count,
  )
