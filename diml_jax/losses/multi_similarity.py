"""Multi-similarity loss (Wang et al. 2019), and its DIML variant on all pairs of the batch.

Per anchor ``i``, over the pairs kept by :func:`miners.multi_similarity`:

.. math::

  \\frac{1}{\\alpha} \\log\\Big(1 + \\sum_{p} e^{-\\alpha (s_{ip} - \\lambda)}\\Big)
  + \\frac{1}{\\beta} \\log\\Big(1 + \\sum_{n} e^{\\beta (s_{in} - \\lambda)}\\Big)

with ``alpha = pos_weight`` (2), ``beta = neg_weight`` (40), ``lambda = threshold`` (0.5)
and mining margin 0.1 (the published DIML code, ``criteria/multisimilarity_diml.py``).
DIML uses the similarity ``(sum T⊙S + <g_a, g_b>) / 2`` of every pair of the batch.
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from diml_jax import miners
from diml_jax.losses import quantities
from diml_jax.losses._reduce import LossOutput, log1p_sum_exp

__all__ = ["multi_similarity_loss", "multi_similarity_diml"]

Reduction = Literal["complete_anchors", "all_anchors"]


def multi_similarity_loss(
    similarity: jax.Array,
    labels: jax.Array,
    *,
    pos_weight: float = 2.0,
    neg_weight: float = 40.0,
    margin: float = 0.1,
    threshold: float = 0.5,
    reduction: Reduction = "complete_anchors",
) -> LossOutput:
  """Multi-similarity loss with its pair mining, on a ``[b, b]`` similarity matrix.

  Mining is :func:`miners.multi_similarity` with ``epsilon = margin``; the two terms
  are pytorch-metric-learning's ``MultiSimilarityLoss`` (``alpha = pos_weight``,
  ``beta = neg_weight``, ``base = threshold``). The two codes differ only in which
  anchors count:

  - ``"complete_anchors"`` (default; the DIML and Roth et al. criteria the papers ran):
    an anchor counts only if it kept at least one positive and one negative, and the
    loss is the mean over the anchors that count;
  - ``"all_anchors"`` (pytorch-metric-learning's ``MeanReducer``): every anchor counts
    with whichever terms it kept (an empty term is 0), mean over all ``b`` anchors.

  Args:
    similarity: ``[b, b]`` (cosine, or DIML's from :func:`quantities.structural_matrix`).
    labels: class ids ``[b]``.
    pos_weight: ``alpha`` (2).
    neg_weight: ``beta`` (40).
    margin: mining margin ``epsilon`` (0.1).
    threshold: ``lambda`` (0.5).
    reduction: ``"complete_anchors"`` or ``"all_anchors"``.

  Returns:
    :class:`LossOutput`: ``active_fraction`` is the share of anchors that count,
    ``selected`` the number of mined pairs. Nothing mined gives loss 0, zero gradient.

  References:
    Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting for
    Deep Metric Learning. CVPR 2019, Sec. 4.
  """
  if reduction not in ("complete_anchors", "all_anchors"):
    raise ValueError(
        f"reduction must be 'complete_anchors' or 'all_anchors'; got {reduction!r}."
    )
  pairs = miners.multi_similarity(similarity, labels, epsilon=margin)
  s = jnp.asarray(similarity)
  pos = log1p_sum_exp(-pos_weight * (s - threshold), pairs.positive, axis=1) / pos_weight
  neg = log1p_sum_exp(neg_weight * (s - threshold), pairs.negative, axis=1) / neg_weight
  has_pos, has_neg = jnp.any(pairs.positive, axis=1), jnp.any(pairs.negative, axis=1)
  if reduction == "complete_anchors":
    counts = has_pos & has_neg
  else:
    counts = has_pos | has_neg
  per_anchor = jnp.where(counts, pos + neg, 0.0)
  divisor = jnp.sum(counts) if reduction == "complete_anchors" else counts.shape[0]
  return LossOutput(
      loss=jnp.sum(per_anchor) / jnp.maximum(divisor, 1),
      active_fraction=jnp.mean(counts),
      selected=jnp.sum(pairs.positive) + jnp.sum(pairs.negative),
  )


def multi_similarity_diml(
    local_features: jax.Array,
    labels: jax.Array,
    *,
    global_features: jax.Array | None = None,
    pos_weight: float = 2.0,
    neg_weight: float = 40.0,
    margin: float = 0.1,
    threshold: float = 0.5,
    reduction: Reduction = "complete_anchors",
    structural: quantities.StructuralOptions = quantities.StructuralOptions(),
) -> LossOutput:
  """Multi-similarity loss with DIML: the papers' ``multisimilarity_diml`` criterion.

  The DIML similarity ``(sum T⊙S + <g_a, g_b>) / 2`` of all ``b²`` pairs of the batch
  (:func:`quantities.structural_matrix`; with a mesh each device matches its rows against
  the gathered batch), then :func:`multi_similarity_loss`.

  Args:
    local_features: ``[b, r, c]``.
    labels: class ids ``[b]``.
    global_features: ``[b, c]``; by default the mean of the local features (as published).
    pos_weight, neg_weight, margin, threshold, reduction: see
      :func:`multi_similarity_loss`.
    structural: how the pairs are matched (``"cross_swapped"`` marginals: as the
      published criterion) and split over devices, :class:`quantities.StructuralOptions`.

  Returns:
    :class:`LossOutput` of :func:`multi_similarity_loss`.

  References:
    Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting for
    Deep Metric Learning. CVPR 2019, Sec. 4 (the loss);
    Zhao, Rao, Wang, Lu, Zhou. Towards Interpretable Deep Metric Learning with Structural
    Matching. ICCV 2021, Sec. 3.4 (on DIML's quantity).
  """
  local_features, labels = quantities.check_batch(local_features, labels)
  s = quantities.structural_matrix(local_features, global_features, quantity="similarity",
                                   structural=structural)
  return multi_similarity_loss(
      s, labels, pos_weight=pos_weight, neg_weight=neg_weight, margin=margin,
      threshold=threshold, reduction=reduction,
  )
