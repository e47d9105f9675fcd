"""Pair miners: masks ``[b, b]`` over every ``(anchor, partner)`` pair of a batch."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diml_jax.miners.checks import check_labels, check_square
from diml_jax.miners.types import PairMasks

__all__ = ["all_pairs", "multi_similarity"]


def all_pairs(labels: jax.Array) -> PairMasks:
  """Every pair of the batch: positives (same class, not self) and negatives.

  Args:
    labels: class ids ``[b]``.

  Returns:
    :class:`PairMasks` with ``[b, b]`` masks.
  """
  labels = check_labels(labels)
  same = labels[:, None] == labels[None, :]
  return PairMasks(positive=same & ~jnp.eye(labels.shape[0], dtype=bool), negative=~same)


def multi_similarity(
    similarity: jax.Array, labels: jax.Array, *, epsilon: float = 0.1
) -> PairMasks:
  """Pair mining of the multi-similarity loss.

  A negative ``(i, j)`` is kept if ``s_ij + epsilon > min_p s_ip`` over the anchor's
  positives; a positive ``(i, p)`` if ``s_ip - epsilon < max_n s_in`` over its negatives
  (strict inequalities, as pytorch-metric-learning's ``MultiSimilarityMiner`` and the
  DIML / Roth et al. criteria). An anchor without positives keeps no negatives and one
  without negatives keeps no positives.

  Args:
    similarity: ``[b, b]`` similarities (cosine or DIML's), larger is more similar.
    labels: class ids ``[b]``.
    epsilon: mining margin (0.1 in the papers).

  Returns:
    :class:`PairMasks` with ``[b, b]`` masks.

  References:
    Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting for
    Deep Metric Learning. CVPR 2019, Sec. 4.2.
  """
  similarity, labels = check_square("similarity", similarity, labels)
  s = jax.lax.stop_gradient(similarity)
  pairs = all_pairs(labels)
  hardest_positive = jnp.min(jnp.where(pairs.positive, s, jnp.inf), axis=1, keepdims=True)
  hardest_negative = jnp.max(jnp.where(pairs.negative, s, -jnp.inf), axis=1, keepdims=True)
  return PairMasks(
      positive=pairs.positive & (s - epsilon < hardest_negative),
      negative=pairs.negative & (s + epsilon > hardest_positive),
  )
