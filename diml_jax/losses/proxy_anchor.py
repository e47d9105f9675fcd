"""ProxyAnchor loss (Kim et al. 2020): one learnable proxy per class.

The proxies are parameters: keep them in their own branch of the parameter pytree and, as
the paper (proxies learn 100x faster than the backbone), give that branch its own
optimiser with ``optax.multi_transform`` (see :mod:`diml_jax.losses.margin` for the
pattern).

Similarity to the proxies: the cosine of the global embedding
(:func:`proxy_similarity`), or, with proxies that are part sets ``[n_classes, r_p, c]``,
DIML's structural one: ``quantities.structural_matrix(x, g, proxies, quantity="similarity")``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diml_jax import miners
from diml_jax.losses import quantities
from diml_jax.losses._reduce import LossOutput, log1p_sum_exp

__all__ = ["init_proxies", "proxy_similarity", "proxy_anchor_loss"]


def init_proxies(key: jax.Array, n_classes: int, dim: int) -> jax.Array:
  """Proxies ``[n_classes, dim]``, Kaiming-normal (fan-out, as the paper's code)."""
  if int(n_classes) < 1 or int(dim) < 1:
    raise ValueError(f"n_classes and dim must be >= 1; got {n_classes!r} and {dim!r}.")
  return jax.random.normal(key, (int(n_classes), int(dim))) * jnp.sqrt(2.0 / n_classes)


def proxy_similarity(embeddings: jax.Array, proxies: jax.Array) -> jax.Array:
  """Cosines of embeddings ``[b, d]`` and proxies ``[n_classes, d]`` -> ``[b, n_classes]``."""
  return quantities.cosine_similarity(embeddings, proxies)


def proxy_anchor_loss(
    similarity: jax.Array,
    labels: jax.Array,
    *,
    alpha: float = 32.0,
    margin: float = 0.1,
) -> LossOutput:
  """ProxyAnchor loss on sample-to-proxy similarities.

  .. math::

    \\frac{1}{|P^+|} \\sum_{p \\in P^+} \\log\\Big(1 + \\sum_{x \\in X_p^+}
        e^{-\\alpha (s(x, p) - \\delta)}\\Big)
    + \\frac{1}{|P|} \\sum_{p \\in P} \\log\\Big(1 + \\sum_{x \\in X_p^-}
        e^{\\alpha (s(x, p) + \\delta)}\\Big)

  with ``P+`` the proxies with a positive in the batch (pytorch-metric-learning's
  ``ProxyAnchorLoss``). It sums over the whole batch for each proxy, so with the batch
  sharded the sums run across devices; under ``jit`` that is one all-reduce.

  Args:
    similarity: ``[b, n_classes]`` (:func:`proxy_similarity`, or structural).
    labels: class ids ``[b]`` in ``[0, n_classes)``.
    alpha: scale (32).
    margin: ``delta`` (0.1).

  Returns:
    :class:`LossOutput`: ``selected`` is ``|P+|``, ``active_fraction`` ``|P+| / n_classes``.

  References:
    Kim, Kim, Cho, Kwak. Proxy Anchor Loss for Deep Metric Learning. CVPR 2020, Sec. 3.
  """
  similarity = jnp.asarray(similarity)
  labels = miners.check_labels(labels)
  if similarity.ndim != 2 or similarity.shape[0] != labels.shape[0]:
    raise ValueError(
        f"similarity must be [b, n_classes] with b={labels.shape[0]} (the labels); got "
        f"{similarity.shape}."
    )
  n_classes = similarity.shape[1]
  positive = labels[:, None] == jnp.arange(n_classes)[None, :]
  pos = log1p_sum_exp(-alpha * (similarity - margin), positive, axis=0)
  neg = log1p_sum_exp(alpha * (similarity + margin), ~positive, axis=0)
  with_positive = jnp.any(positive, axis=0)
  count = jnp.sum(with_positive)
  return LossOutput(
      loss=jnp.sum(pos) / jnp.maximum(count, 1) + jnp.sum(neg) / n_classes,
      active_fraction=count / n_classes,
      selected=count,
  )
