"""Contrastive loss on a distance matrix (global or DIML's)."""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from diml_jax import miners
from diml_jax.losses._reduce import LossOutput, reduce

__all__ = ["contrastive_loss"]


def contrastive_loss(
    distances: jax.Array,
    labels: jax.Array,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    pairs: miners.PairMasks | None = None,
    reduction: Literal["nonzero", "mean"] = "nonzero",
) -> LossOutput:
  """``relu(d - pos_margin)`` on positive pairs plus ``relu(neg_margin - d)`` on negatives.

  Each of the two parts is averaged on its own and the parts are added: over its nonzero
  terms (``"nonzero"``, pytorch-metric-learning's ``ContrastiveLoss``) or over its
  selected pairs (``"mean"``, the published Roth et al. / DIML ``criteria/contrastive.py``
  on the pairs of its mined triplets). Margins 0 and 1 as the published code.

  Args:
    distances: ``[b, k]``: all pairs (``k = b``; :func:`quantities.euclidean_distance`,
      or DIML's distance), or each anchor's picked partners (e.g. ``[b, 2]`` from
      :attr:`miners.Sampled.partners`).
    labels: class ids ``[b]``.
    pos_margin: distance below which positive pairs cost nothing.
    neg_margin: distance above which negative pairs cost nothing.
    pairs: :class:`miners.PairMasks` of the distances' shape from a miner (e.g.
      :attr:`miners.Sampled.pairs`); by default all pairs (needs ``k = b``).
    reduction: ``"nonzero"`` or ``"mean"``.

  Returns:
    :class:`LossOutput`: ``active_fraction`` is the share of selected pairs with a
    nonzero term, ``selected`` their number. Empty parts give 0 and zero gradient.

  References:
    Hadsell, Chopra, LeCun. Dimensionality Reduction by Learning an Invariant Mapping.
    CVPR 2006.
  """
  distances, labels = miners.check_rows("distances", distances, labels, "[b, k]")
  if pairs is None:
    distances, labels = miners.check_square("distances", distances, labels)
    pairs = miners.all_pairs(labels)
  if pairs.positive.shape != distances.shape or pairs.negative.shape != distances.shape:
    raise ValueError(
        f"pairs must be masks of shape {distances.shape}; got {pairs.positive.shape} and "
        f"{pairs.negative.shape}."
    )
  pos = reduce(jax.nn.relu(distances - pos_margin), pairs.positive, reduction)
  neg = reduce(jax.nn.relu(neg_margin - distances), pairs.negative, reduction)
  selected = pos.selected + neg.selected
  active = pos.active_fraction * pos.selected + neg.active_fraction * neg.selected
  return LossOutput(
      loss=pos.loss + neg.loss,
      active_fraction=active / jnp.maximum(selected, 1),
      selected=selected,
  )
