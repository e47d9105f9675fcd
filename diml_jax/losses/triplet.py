"""Triplet margin loss on a distance matrix (global or DIML's)."""
from __future__ import annotations

import jax

from diml_jax import miners
from diml_jax.losses._reduce import LossOutput, average_nonzero

__all__ = ["triplet_loss"]


def triplet_loss(
    distances: jax.Array,
    labels: jax.Array,
    *,
    margin: float = 0.2,
    triplets: jax.Array | None = None,
) -> LossOutput:
  """``relu(d_ap - d_an + margin)`` over selected triplets, averaged over the nonzero ones.

  pytorch-metric-learning's ``TripletMarginLoss`` with its default ``AvgNonZeroReducer``;
  margin 0.2 as the Roth et al. / DIML code.

  Args:
    distances: ``[b, b]``: :func:`quantities.euclidean_distance` of the embeddings, or
      DIML's from ``quantities.structural_matrix(..., quantity="distance")``.
    labels: class ids ``[b]``.
    margin: the triplet margin.
    triplets: ``[b, b, b]`` mask indexed ``[a, p, n]`` from a miner (e.g.
      :func:`miners.semihard_triplets`); by default :func:`miners.all_triplets`.

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
  terms = jax.nn.relu(distances[:, :, None] - distances[:, None, :] + margin)
  return average_nonzero(terms, triplets)
