"""Contrastive loss on a distance matrix (global or DIML's)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diml_jax import miners
from diml_jax.losses._reduce import LossOutput, average_nonzero

__all__ = ["contrastive_loss"]


def contrastive_loss(
    distances: jax.Array,
    labels: jax.Array,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    pairs: miners.PairMasks | None = None,
) -> LossOutput:
  """``relu(d - pos_margin)`` on positive pairs plus ``relu(neg_margin - d)`` on negatives.

  pytorch-metric-learning's ``ContrastiveLoss``: each of the two parts is averaged over
  its own nonzero terms (``AvgNonZeroReducer``) and the parts are added. Margins 0 and 1
  as the Roth et al. / DIML code.

  Args:
    distances: ``[b, b]``: :func:`quantities.euclidean_distance`, or DIML's distance.
    labels: class ids ``[b]``.
    pos_margin: distance below which positive pairs cost nothing.
    neg_margin: distance above which negative pairs cost nothing.
    pairs: :class:`miners.PairMasks` ``[b, b]`` from a miner; by default all pairs.

  Returns:
    :class:`LossOutput`: ``active_fraction`` is the share of selected pairs with a
    nonzero term, ``selected`` their number. Empty parts give 0 and zero gradient.

  References:
    Hadsell, Chopra, LeCun. Dimensionality Reduction by Learning an Invariant Mapping.
    CVPR 2006.
  """
  distances, labels = miners.check_square("distances", distances, labels)
  if pairs is None:
    pairs = miners.all_pairs(labels)
  if pairs.positive.shape != distances.shape or pairs.negative.shape != distances.shape:
    raise ValueError(
        f"pairs must be masks of shape {distances.shape}; got {pairs.positive.shape} and "
        f"{pairs.negative.shape}."
    )
  pos = average_nonzero(jax.nn.relu(distances - pos_margin), pairs.positive)
  neg = average_nonzero(jax.nn.relu(neg_margin - distances), pairs.negative)
  selected = pos.selected + neg.selected
  active = pos.active_fraction * pos.selected + neg.active_fraction * neg.selected
  return LossOutput(
      loss=pos.loss + neg.loss,
      active_fraction=active / jnp.maximum(selected, 1),
      selected=selected,
  )
