"""Generalised lifted-structure loss (Hermans et al. 2017), as the published DIML baseline."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diml_jax import miners
from diml_jax.losses import quantities
from diml_jax.losses._reduce import LossOutput, embedding_norm, masked_logsumexp

__all__ = ["lifted_loss"]


def lifted_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    margin: float = 1.0,
    l2_weight: float = 0.005,
) -> LossOutput:
  """``mean_a relu(logsumexp_p d_ap + logsumexp_n (margin - d_an)) + l2 mean_i |x_i|``.

  Every positive and negative of each anchor (the published ``lifted`` miner,
  :func:`miners.all_pairs`), Euclidean distances of the unnormalised embeddings, the
  mean over anchors that have a positive and a negative, plus ``l2_weight`` times the mean embedding
  norm: the published ``criteria/lifted.py``.

  Args:
    embeddings: ``[b, d]``, not normalised.
    labels: class ids ``[b]``.
    margin: the negative margin (1).
    l2_weight: weight of the norm penalty (0.005).

  Returns:
    :class:`LossOutput`: ``selected`` is the number of anchors with both,
    ``active_fraction`` the share of them with a nonzero term.

  References:
    Hermans, Beyer, Leibe. In Defense of the Triplet Loss for Person Re-Identification.
    arXiv 1703.07737, 2017, Sec. 2; Oh Song, Xiang, Jegelka, Savarese. Deep Metric
    Learning via Lifted Structured Feature Embedding. CVPR 2016.
  """
  embeddings = quantities.check_embeddings("embeddings", embeddings)
  labels = miners.check_labels(labels, embeddings.shape[0])
  pairs = miners.all_pairs(labels)
  d = quantities.euclidean_distance(embeddings, normalize=False)
  anchors = jnp.any(pairs.positive, axis=1) & jnp.any(pairs.negative, axis=1)
  terms = jax.nn.relu(masked_logsumexp(d, pairs.positive, axis=1)
                      + masked_logsumexp(margin - d, pairs.negative, axis=1))
  terms = jnp.where(anchors, terms, 0.0)
  count = jnp.sum(anchors)
  return LossOutput(
      loss=jnp.sum(terms) / jnp.maximum(count, 1) + l2_weight * embedding_norm(embeddings),
      active_fraction=jnp.sum(terms > 0) / jnp.maximum(count, 1),
      selected=count,
  )
