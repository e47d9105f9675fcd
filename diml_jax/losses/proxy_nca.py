"""ProxyNCA loss (Movshovitz-Attias et al. 2017): one learnable proxy per class.

The proxies are parameters with their own learning rate (the published code: 50 times the
backbone's), as :mod:`diml_jax.losses.proxy_anchor`'s.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diml_jax.losses import quantities
from diml_jax.losses._reduce import LossOutput

__all__ = ["init_proxy_nca", "proxy_nca_loss"]


def init_proxy_nca(key: jax.Array, n_classes: int, dim: int) -> jax.Array:
  """Proxies ``[n_classes, dim]``, normal with standard deviation 1/8 (as published)."""
  if int(n_classes) < 1 or int(dim) < 1:
    raise ValueError(f"n_classes and dim must be >= 1; got {n_classes!r} and {dim!r}.")
  return jax.random.normal(key, (int(n_classes), int(dim))) / 8.0


def proxy_nca_loss(similarity: jax.Array, labels: jax.Array, *, scale: float = 3.0
                   ) -> LossOutput:
  """``mean_i [ d(x_i, p_y) + log sum_{c != y} exp(-d(x_i, p_c)) ]``, ``d`` the squared
  distance of ``scale`` times the unit embedding and proxies.

  ``d = scale² (2 - 2 cos)``; ``scale`` 3 acts as a temperature (the published
  ``criteria/proxynca.py``: ``3 * normalize(...)`` on both sides).

  Args:
    similarity: cosines of the embeddings and the proxies, ``[b, n_classes]``
      (:func:`diml_jax.losses.proxy_similarity`).
    labels: class ids ``[b]`` in ``[0, n_classes)``.
    scale: the norm both sides are scaled to (3).

  Returns:
    :class:`LossOutput`: ``selected`` is ``b``; ``active_fraction`` the share of images
    nearer their own proxy than any other.

  References:
    Movshovitz-Attias, Toshev, Leung, Ioffe, Singh. No Fuss Distance Metric Learning using
    Proxies. ICCV 2017, Sec. 3.
  """
  similarity, labels = quantities.check_class_similarity(similarity, labels)
  d = scale * scale * (2.0 - 2.0 * similarity)
  own = labels[:, None] == jnp.arange(similarity.shape[1])[None, :]
  d_own = jnp.sum(jnp.where(own, d, 0.0), axis=1)
  others = jax.nn.logsumexp(jnp.where(own, -jnp.inf, -d), axis=1)
  nearest_other = jnp.min(jnp.where(own, jnp.inf, d), axis=1)
  return LossOutput(loss=jnp.mean(d_own + others),
                    active_fraction=jnp.mean(d_own < nearest_other),
                    selected=jnp.asarray(labels.shape[0], jnp.int32))

