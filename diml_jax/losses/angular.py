"""Angular loss (Wang et al. 2017) with its N-pair term, as the published DIML baseline."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diml_jax import miners
from diml_jax.losses import quantities
from diml_jax.losses._reduce import LossOutput, embedding_norm, log1p_sum_exp
from diml_jax.losses.npair import npair_terms

__all__ = ["angular_loss"]


def angular_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    pairs: miners.PairMasks,
    alpha: float = 45.0,
    angular_weight: float = 2.0,
    l2_weight: float = 0.005,
) -> LossOutput:
  """N-pair loss plus ``angular_weight`` times the angular loss, plus the norm penalty.

  With ``t = tan(alpha)`` and unit vectors ``x̂``, each anchor ``a`` with positive ``p``:

  .. math::

    \\log\\Big(1 + \\sum_n \\exp\\big(4 t^2 (\\hat x_a + \\hat x_p)^\\top \\hat x_n
        - 2 (1 + t^2) \\hat x_a^\\top \\hat x_p\\big)\\Big)

  averaged over the anchors, added to the N-pair term on the unnormalised embeddings
  (:func:`diml_jax.losses.npair_loss`) and ``l2_weight`` times the mean embedding norm:
  the published ``criteria/angular.py`` (its N-pair exponents are clipped to ±50, which a
  stable log-sum-exp makes unnecessary here).

  Args:
    embeddings: ``[b, d]``, not normalised.
    labels: class ids ``[b]``.
    pairs: :func:`miners.npair`'s masks ``[b, b]``.
    alpha: the angle bound in degrees (45).
    angular_weight: weight of the angular term (2).
    l2_weight: weight of the norm penalty (0.005).

  Returns:
    :class:`LossOutput` as :func:`diml_jax.losses.npair_loss`.

  References:
    Wang, Zhou, Wen, Liu, Lin. Deep Metric Learning with Angular Loss. ICCV 2017, Sec. 3.4.
  """
  embeddings = quantities.check_embeddings("embeddings", embeddings)
  labels = miners.check_labels(labels, embeddings.shape[0])
  anchors = jnp.any(pairs.positive, axis=1)
  tan2 = math.tan(math.radians(alpha)) ** 2
  cos = quantities.cosine_similarity(embeddings)
  positive = pairs.positive.astype(cos.dtype)
  cos_pn = positive @ cos  # row a: the cosines of a's positive with every image
  cos_ap = jnp.sum(positive * cos, axis=1, keepdims=True)
  angular = log1p_sum_exp(4.0 * tan2 * (cos + cos_pn) - 2.0 * (1.0 + tan2) * cos_ap,
                          pairs.negative, axis=1)
  npair = npair_terms(quantities.inner_product(embeddings), pairs)
  count = jnp.sum(anchors)
  per_anchor = jnp.where(anchors, npair + angular_weight * angular, 0.0)
  return LossOutput(
      loss=jnp.sum(per_anchor) / jnp.maximum(count, 1) + l2_weight * embedding_norm(embeddings),
      active_fraction=count / anchors.shape[0],
      selected=count,
  )
