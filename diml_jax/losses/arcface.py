"""ArcFace loss (Deng et al. 2019): an additive angular margin on a cosine classifier.

The class weights are parameters with their own learning rate (the published code: 5e-4).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diml_jax.losses import quantities
from diml_jax.losses._reduce import LossOutput
from diml_jax.losses.softmax import cross_entropy

__all__ = ["arcface_loss"]


def arcface_loss(similarity: jax.Array, labels: jax.Array, *, margin: float = 0.5,
                 scale: float = 16.0) -> LossOutput:
  """Cross-entropy of ``scale * cos``, the own class's cosine replaced by ``cos(θ + m)``.

  ``cos(θ + m) = cos θ cos m - sin θ sin m`` with ``sin θ = sqrt(1 - cos²θ)``, which is
  the paper's formula without ``arccos`` (whose gradient is infinite at ``cos = ±1``).
  The published ``criteria/arcface.py`` clamps every cosine to ``[1e-10, 1 - 1e-10]``
  first, so the cosines to other classes get no gradient below 0; here they are used as
  they are, as in the paper. ``scale`` 16 and ``margin`` 0.5 as published (the paper:
  64 and 0.5).

  Args:
    similarity: cosines of the embeddings and the class weights, ``[b, n_classes]``.
    labels: class ids ``[b]`` in ``[0, n_classes)``.
    margin: the angular margin ``m`` in radians (0.5).
    scale: ``s``, the inverse temperature (16).

  Returns:
    :class:`LossOutput` of :func:`diml_jax.losses.cross_entropy`.

  References:
    Deng, Guo, Xue, Zafeiriou. ArcFace: Additive Angular Margin Loss for Deep Face
    Recognition. CVPR 2019, Sec. 2.1.
  """
  similarity, labels = quantities.check_class_similarity(similarity, labels)
  own = labels[:, None] == jnp.arange(similarity.shape[1])[None, :]
  cos = jnp.clip(similarity, -1.0, 1.0)
  sin = jnp.sqrt(jnp.maximum(1.0 - cos * cos, 1e-12))
  shifted = cos * math.cos(margin) - sin * math.sin(margin)
  return cross_entropy(scale * jnp.where(own, shifted, similarity), labels)
