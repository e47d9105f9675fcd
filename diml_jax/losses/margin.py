"""Margin loss with learnable per-class boundaries beta, and its DIML variant.

For a pair at distance ``d`` whose anchor has class ``y``: ``relu(d - beta_y + margin)``
for a positive, ``relu(beta_y - d + margin)`` for a negative; the batch loss is the sum over
the selected pairs divided by the number of nonzero terms (Wu et al. 2017; the DIML and
Roth et al. code). DIML trains it on the distance ``(sum T⊙D + ||g_a - g_b||) / 2`` of the
pairs that distance-weighted sampling picks on the global vectors (the published ``criteria/margin_diml.py``).

**beta has its own learning rate.** ``beta`` is an ordinary ``[n_classes]`` array; keep it
in its own branch of the parameter pytree and give that branch its own optimiser, e.g.::

  params = {"model": model_params, "margin": {"beta": losses.init_beta(n_classes)}}
  tx = optax.multi_transform(
      {"model": optax.adamw(1e-5, weight_decay=4e-4), "beta": optax.adam(5e-4)},
      {"model": "model", "margin": "beta"},  # a prefix of params: one label per branch
  )

(5e-4 is the papers' ``loss_margin_beta_lr``, with no weight decay on beta.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diml_jax import miners
from diml_jax.losses import quantities
from diml_jax.losses._reduce import LossOutput, average_nonzero

__all__ = ["init_beta", "margin_loss", "margin_global", "margin_diml"]


def init_beta(n_classes: int, value: float = 1.2) -> jax.Array:
  """The per-class boundaries ``beta``, ``[n_classes]``, all ``value`` (1.2 as published)."""
  if int(n_classes) < 1:
    raise ValueError(f"n_classes must be >= 1; got {n_classes!r}.")
  return jnp.full((int(n_classes),), value, jnp.float32)


def _anchor_beta(beta, labels: jax.Array) -> jax.Array:
  beta = jnp.asarray(beta)
  if beta.ndim == 0:
    return jnp.broadcast_to(beta, labels.shape)
  if beta.ndim != 1:
    raise ValueError(f"beta must be a scalar or per-class [n_classes]; got {beta.shape}.")
  # Labels outside [0, n_classes) would be clamped silently by the gather under jit.
  return beta[labels]


def margin_loss(
    distances: jax.Array,
    labels: jax.Array,
    beta: jax.Array | float,
    *,
    margin: float = 0.2,
    pairs: miners.PairMasks | None = None,
) -> LossOutput:
  """Margin loss on selected pairs ``(anchor i, partner j)``.

  Args:
    distances: ``[b, k]``, the distance of anchor ``i`` to its ``j``-th partner: the whole
      batch (``k = b``, e.g. :func:`quantities.euclidean_distance`) or picked partners
      (e.g. ``[b, 2]`` from :attr:`miners.Sampled.partners`).
    labels: class ids of the anchors, ``[b]``, in ``[0, n_classes)``.
    beta: per-class boundaries ``[n_classes]`` (:func:`init_beta`) or one scalar.
    margin: half-width of the band around beta (0.2).
    pairs: which entries are positive and negative pairs, :class:`miners.PairMasks` of
      ``[b, k]``; by default :func:`miners.all_pairs` (needs ``k = b``).

  Returns:
    :class:`LossOutput`: ``active_fraction`` is the share of selected pairs with a
    nonzero term, ``selected`` the number of selected pairs. No selected pair, or none
    with a nonzero term, gives loss 0 and zero gradient.

  References:
    Wu, Manmatha, Smola, Krähenbühl. Sampling Matters in Deep Embedding Learning.
    ICCV 2017, Sec. 5.
  """
  distances = jnp.asarray(distances)
  labels = miners.check_labels(labels)
  if distances.ndim != 2 or distances.shape[0] != labels.shape[0]:
    raise ValueError(
        f"distances must be [b, k] with b={labels.shape[0]} (the labels); got "
        f"{distances.shape}."
    )
  if pairs is None:
    pairs = miners.all_pairs(labels)
  if pairs.positive.shape != distances.shape or pairs.negative.shape != distances.shape:
    raise ValueError(
        f"pairs must be masks of the distances' shape {distances.shape}; got "
        f"{pairs.positive.shape} and {pairs.negative.shape}."
    )
  beta_a = _anchor_beta(beta, labels)[:, None]
  terms = jnp.where(
      pairs.positive,
      jax.nn.relu(distances - beta_a + margin),
      jax.nn.relu(beta_a - distances + margin),
  )
  return average_nonzero(terms, pairs.positive | pairs.negative)


def _sample(key, globals_, labels, cutoff, nonzero_loss_cutoff) -> miners.Sampled:
  return miners.distance_weighted(
      key, quantities.euclidean_distance(globals_), labels, dim=globals_.shape[-1],
      cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff,
  )


def margin_global(
    embeddings: jax.Array,
    labels: jax.Array,
    beta: jax.Array | float,
    key: jax.Array,
    *,
    margin: float = 0.2,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float | None = None,
) -> LossOutput:
  """The baseline margin loss: distance-weighted sampling and margin loss on embeddings.

  Each anchor gets one positive and one negative from :func:`miners.distance_weighted`
  (``key``) on the Euclidean distances of the L2-normalised ``embeddings [b, d]``, and
  :func:`margin_loss` runs on those ``2 b`` pairs. Under ``jit`` with the batch sharded,
  the sampling (a partitionable PRNG) and the loss are the same as on one device.

  Args:
    embeddings: ``[b, d]``.
    labels: class ids ``[b]``.
    beta: per-class boundaries ``[n_classes]`` or a scalar.
    key: PRNG key for the sampling.
    margin: see :func:`margin_loss`.
    cutoff: see :func:`miners.distance_weighted`.
    nonzero_loss_cutoff: see :func:`miners.distance_weighted`.

  Returns:
    :class:`LossOutput` of :func:`margin_loss`.
  """
  embeddings = quantities.check_embeddings("embeddings", embeddings)
  labels = miners.check_labels(labels, embeddings.shape[0])
  picked = _sample(key, embeddings, labels, cutoff, nonzero_loss_cutoff)
  distances = quantities.euclidean_distance(embeddings)
  d = jnp.take_along_axis(distances, picked.partners, axis=1)
  return margin_loss(d, labels, beta, margin=margin, pairs=picked.pairs)


def margin_diml(
    local_features: jax.Array,
    labels: jax.Array,
    beta: jax.Array | float,
    key: jax.Array,
    *,
    global_features: jax.Array | None = None,
    margin: float = 0.2,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float | None = None,
    structural: quantities.StructuralOptions = quantities.StructuralOptions(),
) -> LossOutput:
  """Margin loss with DIML: the papers' ``margin_diml`` criterion, batched.

  1. The miner, :func:`miners.distance_weighted` with ``key``, picks one positive and
     one negative per anchor on the Euclidean distances of the normalised global
     vectors (no gradient).
  2. The DIML distance ``(sum T⊙D + ||g_a - g_b||) / 2`` of those ``2 b`` pairs is one
     batched matching (:func:`quantities.structural_partners`); the published code
     matches one pair at a time in a Python loop.
  3. :func:`margin_loss` on the ``[b, 2]`` distances, beta indexed by the anchor's class.

  An anchor alone in its class has no positive pair (the published miner pairs it with
  itself, whose distance is below ``beta - margin``, so its term is 0 there too); a
  batch of one class has no negative pairs.

  Args:
    local_features: ``[b, r, c]``, e.g. the ``h*w`` cells of the embedded feature map.
    labels: class ids ``[b]``, in ``[0, n_classes)``.
    beta: per-class boundaries ``[n_classes]`` (:func:`init_beta`) or a scalar.
    key: PRNG key for the sampling.
    global_features: ``[b, c]``; by default the mean of the local features (as
      published).
    margin: see :func:`margin_loss`.
    cutoff: see :func:`miners.distance_weighted`.
    nonzero_loss_cutoff: see :func:`miners.distance_weighted`.
    structural: how the pairs are matched (``"uniform"`` marginals are the published
      ``use_uniform``, ``"cross_swapped"`` the published criterion's default) and split
      over devices, :class:`quantities.StructuralOptions`.

  Returns:
    :class:`LossOutput` of :func:`margin_loss`.

  References:
    Wu, Manmatha, Smola, Krähenbühl. Sampling Matters in Deep Embedding Learning.
    ICCV 2017, Sec. 4-5 (the sampling and the loss);
    Zhao, Rao, Wang, Lu, Zhou. Towards Interpretable Deep Metric Learning with Structural
    Matching. ICCV 2021, Sec. 3.4 (on DIML's quantity).
  """
  local_features, labels = quantities.check_batch(local_features, labels)
  g = quantities.global_vectors("global_features", global_features, local_features)
  picked = _sample(key, g, labels, cutoff, nonzero_loss_cutoff)
  d = quantities.structural_partners(local_features, picked.partners, g, quantity="distance",
                                     structural=structural)
  return margin_loss(d, labels, beta, margin=margin, pairs=picked.pairs)
