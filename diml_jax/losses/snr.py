"""Signal-to-noise-ratio triplet loss (Yuan et al. 2019)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diml_jax import miners
from diml_jax.losses import quantities
from diml_jax.losses._reduce import LossOutput
from diml_jax.losses.triplet import triplet_loss

__all__ = ["snr_distance", "snr_loss"]


def snr_distance(embeddings: jax.Array) -> jax.Array:
  """``var(x_j - x_i) / var(x_i)`` over the features, ``[b, b]`` (anchor ``i`` by row).

  The noise-to-signal ratio of ``x_j`` seen as ``x_i`` plus noise: the SNR loss's
  distance (not symmetric).
  """
  x = quantities.check_embeddings("embeddings", embeddings)
  d = x.shape[1]
  if d < 2:
    raise ValueError(f"embeddings need d >= 2 features for a variance; got {x.shape}.")
  centred = x - jnp.mean(x, axis=1, keepdims=True)
  norms = jnp.sum(centred * centred, axis=1)
  # sum over features of (c_i - c_j)^2 (the centred difference): its variance times d - 1.
  noise = (norms[:, None] + quantities.replicated(norms)[None, :]
           - 2.0 * quantities.inner_product(centred))
  return jnp.maximum(noise, 0.0) / jnp.maximum(norms, 1e-12)[:, None]


def snr_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    triplets: jax.Array,
    margin: float = 0.2,
    reg_weight: float = 0.0,
) -> LossOutput:
  """Triplet loss on :func:`snr_distance`, averaged over the nonzero terms.

  ``relu(SNR(a, p) - SNR(a, n) + margin)``, plus ``reg_weight`` times the mean over the
  triplets' anchors of ``|sum_k x_ak|`` (the published ``criteria/snr.py``, which sets
  that weight to 0 with the distance miner, as in its runs).

  Args:
    embeddings: ``[b, d]`` (L2-normalised in the published runs).
    labels: class ids ``[b]``.
    triplets: ``[b, b, b]`` mask indexed ``[a, p, n]`` from a miner.
    margin: 0.2.
    reg_weight: 0 (the published 0.005 applies to miners other than ``distance``).

  Returns:
    :class:`LossOutput` of :func:`diml_jax.losses.triplet_loss`.

  References:
    Yuan, Chen, Wang, Yu, Shi, Jie, Gao. Signal-to-Noise Ratio: A Robust Distance Metric
    for Deep Metric Learning. CVPR 2019, Sec. 3.
  """
  embeddings = quantities.check_embeddings("embeddings", embeddings)
  labels = miners.check_labels(labels, embeddings.shape[0])
  out = triplet_loss(snr_distance(embeddings), labels, margin=margin, triplets=triplets)
  if not reg_weight:
    return out
  anchors = jnp.any(triplets, axis=(1, 2))
  reg = (jnp.sum(jnp.where(anchors, jnp.abs(jnp.sum(embeddings, axis=1)), 0.0))
         / jnp.maximum(jnp.sum(anchors), 1))
  return out._replace(loss=out.loss + reg_weight * reg)
