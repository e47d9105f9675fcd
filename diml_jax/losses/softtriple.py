"""SoftTriple loss (Qian et al. 2019): several learnable centroids per class.

The centroids are parameters with their own learning rate (the published code: the
backbone's times ``loss_softtriplet_lrmulti``), kept in their own parameter branch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diml_jax.losses import quantities
from diml_jax.losses._reduce import LossOutput
from diml_jax.losses.softmax import cross_entropy, init_class_weights

__all__ = ["init_centroids", "centroid_similarity", "softtriple_loss"]


def init_centroids(key: jax.Array, n_classes: int, dim: int, n_centroids: int = 2
                   ) -> jax.Array:
  """Centroids ``[n_classes, n_centroids, dim]``, uniform in ``±1/sqrt(n_classes *
  n_centroids)`` as published."""
  k = int(n_classes) * int(n_centroids)
  return init_class_weights(key, k, dim, fan=k).reshape(int(n_classes), int(n_centroids),
                                                        int(dim))


def centroid_similarity(embeddings: jax.Array, centroids: jax.Array) -> jax.Array:
  """Cosines ``[b, n_classes, k]`` of embeddings ``[b, d]`` and centroids ``[n_classes, k, d]``."""
  c, k, d = centroids.shape
  return quantities.cosine_similarity(embeddings, centroids.reshape(c * k, d)).reshape(-1, c, k)


def softtriple_loss(
    similarity: jax.Array,
    labels: jax.Array,
    *,
    centroids: jax.Array | None = None,
    gamma: float = 0.1,
    lam: float = 8.0,
    margin: float = 0.01,
    reg_weight: float = 0.2,
) -> LossOutput:
  """Cross-entropy of the relaxed class similarities, plus the centroid regulariser.

  Per class ``c``: ``S_c = sum_k softmax_k(gamma s_ck) s_ck`` over its centroids; the loss
  is the cross-entropy of ``lam (S - margin 1[c = y])``, plus ``reg_weight`` times
  ``sum_c sum_{k < k'} sqrt(2 + 1e-5 - 2 <w_ck, w_ck'>) / (n_classes k (k - 1))`` over
  the unit centroids. ``gamma`` multiplies the similarities in the softmax, as in the
  published ``criteria/softtriplet.py`` (the paper divides by its ``gamma``: the
  published SOP run's 10 is the paper's 0.1). That code also normalises the centroid
  matrix along the wrong axis and takes the softmax over classes rather than over a
  class's centroids; both follow the paper here.

  Args:
    similarity: ``[b, n_classes, k]`` cosines of the embeddings and the centroids
      (:func:`centroid_similarity`).
    labels: class ids ``[b]``.
    centroids: ``[n_classes, k, d]`` for the regulariser; ``None`` leaves it out.
    gamma: softmax scale over a class's centroids (0.1; 10 on SOP).
    lam: ``lambda``, the logits' scale (8; 20 on SOP).
    margin: ``delta`` on the own class (0.01).
    reg_weight: ``tau`` (0.2).

  Returns:
    :class:`LossOutput` of :func:`diml_jax.losses.cross_entropy` plus the regulariser.

  References:
    Qian, Shang, Sun, Hu, Li, Jin. SoftTriple Loss: Deep Metric Learning Without Triplet
    Sampling. ICCV 2019, Sec. 3.
  """
  similarity = jnp.asarray(similarity)
  if similarity.ndim != 3:
    raise ValueError(f"similarity must be [b, n_classes, k]; got {similarity.shape}.")
  b, n_classes, k = similarity.shape
  _, labels = quantities.check_class_similarity(similarity[:, :, 0], labels)
  weights = jax.nn.softmax(gamma * similarity, axis=2)
  relaxed = jnp.sum(weights * similarity, axis=2)
  own = labels[:, None] == jnp.arange(n_classes)[None, :]
  out = cross_entropy(lam * (relaxed - margin * own), labels)
  if centroids is None or k == 1:
    return out
  if centroids.shape[:2] != (n_classes, k):
    raise ValueError(f"centroids must be [{n_classes}, {k}, d]; got {centroids.shape}.")
  unit = centroids / jnp.linalg.norm(centroids, axis=-1, keepdims=True)
  cos = jnp.einsum("ckd,cld->ckl", unit, unit)
  upper = jnp.triu(jnp.ones((k, k), bool), 1)
  spread = jnp.sqrt(jnp.maximum(2.0 + 1e-5 - 2.0 * cos, 0.0))
  reg = jnp.sum(jnp.where(upper, spread, 0.0)) / (n_classes * k * (k - 1))
  return out._replace(loss=out.loss + reg_weight * reg)
