"""Triplet margin loss on a distance matrix (global or DIML's)."""
from __future__ import annotations

from typing import Literal

import jax

from diml_jax import miners
from diml_jax.losses._reduce import LossOutput, reduce

__all__ = ["triplet_loss"]


def triplet_loss(
    distances: jax.Array,
    labels: jax.Array,
    *,
    margin: float = 0.2,
    triplets: jax.Array | None = None,
    squared: bool = False,
    reduction: Literal["nonzero", "mean"] = "nonzero",
) -> LossOutput:
  """``relu(d_ap - d_an + margin)`` over selected triplets.

  Defaults are pytorch-metric-learning's ``TripletMarginLoss`` (distances, averaged over
  the nonzero terms); the published Roth et al. / DIML criterion (``criteria/triplet.py``)
  compares squared distances and takes the mean over the mined triplets:
  ``squared=True, reduction="mean"``. Margin 0.2 in both.

  Args:
    distances: ``[b, b]``: :func:`quantities.euclidean_distance` of the embeddings, or
      DIML's from ``quantities.structural_matrix(..., quantity="distance")``.
    labels: class ids ``[b]``.
    margin: the triplet margin.
    triplets: ``[b, b, b]`` mask indexed ``[a, p, n]`` from a miner (e.g.
      :func:`miners.semihard_triplets`, :attr:`miners.Sampled.triplets`,
      :func:`miners.random_triplets`); by default :func:`miners.all_triplets`.
    squared: compare ``d_ap² - d_an²``.
    reduction: ``"nonzero"`` (sum over the nonzero terms' count) or ``"mean"`` (over the
      selected triplets).

  Returns:
    :class:`LossOutput`: ``active_fraction`` is the share of selected triplets with a
    nonzero loss, ``selected`` their number. None selected, or none violating the
    margin, gives loss 0 and zero gradient.

  References:
    Schroff, Kalenichenko, Philbin. FaceNet. CVPR 2015, Sec. 3.
  """
  distances, labels = miners.check_square("distances", distances, labels)
  if triplets is None:
    triplets = miners.all_triplets(labels)
  b = labels.shape[0]
  if triplets.shape != (b, b, b):
    raise ValueError(f"triplets must be a [{b}, {b}, {b}] mask; got {triplets.shape}.")
  d = distances * distances if squared else distances
  terms = jax.nn.relu(d[:, :, None] - d[:, None, :] + margin)
  return reduce(terms, triplets, reduction)
