"""Metric losses on global or DIML structural similarities, fixed-shape and shardable.

Each loss is a pure function of a similarity or distance matrix (or, for the losses
defined on the vectors themselves, of the embeddings) and the labels, in
pytorch-metric-learning's decomposition (matrix -> miner masks from :mod:`diml_jax.miners`
-> per-element loss -> reduction), with masks instead of index lists so that everything
compiles under ``jit``. The matrix is either global (:func:`cosine_similarity`,
:func:`euclidean_distance`) or DIML's (:func:`structural_matrix`,
:func:`structural_partners`, matched and optionally split over a device mesh as one
:class:`StructuralOptions` says). Every loss returns a :class:`LossOutput` ``(loss,
active_fraction, selected)``.

Pair and tuple losses:

- :func:`margin_loss`, :func:`margin_global`, :func:`margin_diml` (learnable ``beta``:
  :func:`init_beta`);
- :func:`multi_similarity_loss`, :func:`multi_similarity_diml`;
- :func:`triplet_loss`, :func:`contrastive_loss`, :func:`quadruplet_loss`,
  :func:`histogram_loss`, :func:`snr_loss`;
- on unnormalised embeddings: :func:`npair_loss`, :func:`angular_loss`, :func:`lifted_loss`.

Proxy and classifier losses (their parameters have their own learning rate):

- :func:`proxy_anchor_loss` (:func:`init_proxies`), :func:`proxy_nca_loss`
  (:func:`init_proxy_nca`), :func:`softtriple_loss` (:func:`init_centroids`),
  :func:`arcface_loss` and :func:`normalized_softmax_loss` (:func:`init_class_weights`).

:mod:`diml_jax.losses.registry` builds any of them by name from a config.
"""
from diml_jax.losses._reduce import LossOutput
from diml_jax.losses.angular import angular_loss
from diml_jax.losses.arcface import arcface_loss
from diml_jax.losses.contrastive import contrastive_loss
from diml_jax.losses.histogram import histogram_loss
from diml_jax.losses.lifted import lifted_loss
from diml_jax.losses.margin import init_beta, margin_diml, margin_global, margin_loss
from diml_jax.losses.multi_similarity import multi_similarity_diml, multi_similarity_loss
from diml_jax.losses.npair import npair_loss
from diml_jax.losses.proxy_anchor import init_proxies, proxy_anchor_loss, proxy_similarity
from diml_jax.losses.proxy_nca import init_proxy_nca, proxy_nca_loss
from diml_jax.losses.quadruplet import quadruplet_loss
from diml_jax.losses.quantities import (
    StructuralOptions,
    cosine_similarity,
    euclidean_distance,
    inner_product,
    structural_matrix,
    structural_partners,
)
from diml_jax.losses.snr import snr_distance, snr_loss
from diml_jax.losses.softmax import cross_entropy, init_class_weights, normalized_softmax_loss
from diml_jax.losses.softtriple import centroid_similarity, init_centroids, softtriple_loss
from diml_jax.losses.triplet import triplet_loss

__all__ = [
    "LossOutput",
    "StructuralOptions",
    "angular_loss",
    "arcface_loss",
    "centroid_similarity",
    "contrastive_loss",
    "cosine_similarity",
    "cross_entropy",
    "euclidean_distance",
    "histogram_loss",
    "init_beta",
    "init_centroids",
    "init_class_weights",
    "init_proxies",
    "init_proxy_nca",
    "inner_product",
    "lifted_loss",
    "margin_diml",
    "margin_global",
    "margin_loss",
    "multi_similarity_diml",
    "multi_similarity_loss",
    "normalized_softmax_loss",
    "npair_loss",
    "proxy_anchor_loss",
    "proxy_nca_loss",
    "proxy_similarity",
    "quadruplet_loss",
    "snr_distance",
    "snr_loss",
    "softtriple_loss",
    "structural_matrix",
    "structural_partners",
    "triplet_loss",
]
