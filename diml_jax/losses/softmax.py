"""Normalised softmax loss (Zhai & Wu 2019): a cosine classifier with a temperature.

The class weights are parameters with their own learning rate (the published code: 1e-5,
2e-3 on SOP), kept in their own branch of the parameter pytree as ProxyAnchor's proxies.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diml_jax.losses import quantities
from diml_jax.losses._reduce import LossOutput

__all__ = ["init_class_weights", "normalized_softmax_loss", "cross_entropy"]


def init_class_weights(key: jax.Array, n_rows: int, dim: int, fan: int | None = None
                       ) -> jax.Array:
  """Weights ``[n_rows, dim]``, uniform in ``±1/sqrt(fan)`` (``fan`` default ``dim``), as
  the published classifier-style criteria (``torch.Tensor.uniform_(-stdv, stdv)``)."""
  if int(n_rows) < 1 or int(dim) < 1:
    raise ValueError(f"n_rows and dim must be >= 1; got {n_rows!r} and {dim!r}.")
  bound = 1.0 / math.sqrt(dim if fan is None else fan)
  return jax.random.uniform(key, (int(n_rows), int(dim)), minval=-bound, maxval=bound)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> LossOutput:
  """Mean softmax cross-entropy of ``logits [b, n_classes]``; ``active_fraction`` is the
  share of misclassified images, ``selected`` ``b``."""
  log_p = jax.nn.log_softmax(logits, axis=1)
  own = jnp.take_along_axis(log_p, labels[:, None], axis=1)[:, 0]
  return LossOutput(loss=-jnp.mean(own),
                    active_fraction=jnp.mean(jnp.argmax(logits, axis=1) != labels),
                    selected=jnp.asarray(labels.shape[0], jnp.int32))


def normalized_softmax_loss(similarity: jax.Array, labels: jax.Array, *,
                            temperature: float = 0.05) -> LossOutput:
  """Cross-entropy of the cosines to the class weights divided by ``temperature``.

  Args:
    similarity: cosines of the embeddings and the class weights, ``[b, n_classes]``
      (:func:`diml_jax.losses.proxy_similarity`).
    labels: class ids ``[b]`` in ``[0, n_classes)``.
    temperature: 0.05, as published (``criteria/softmax.py``).

  Returns:
    :class:`LossOutput` of :func:`cross_entropy`.

  References:
    Zhai, Wu. Classification is a Strong Baseline for Deep Metric Learning. BMVC 2019,
    Sec. 3.
  """
  similarity, labels = quantities.check_class_similarity(similarity, labels)
  return cross_entropy(similarity / temperature, labels)
