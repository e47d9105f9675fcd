"""Metric losses on global or DIML structural similarities, fixed-shape and shardable.

Each loss is a pure function of a similarity or distance matrix and the labels, in
pytorch-metric-learning's decomposition (matrix -> miner masks from :mod:`diml_jax.miners`
-> per-element loss -> reduction), with masks instead of index lists so that everything
compiles under ``jit``. The matrix is either global (:func:`cosine_similarity`,
:func:`euclidean_distance`) or DIML's (:func:`structural_matrix`,
:func:`structural_partners`, optionally split over a device mesh). Every loss returns a
:class:`LossOutput` ``(loss, active_fraction, selected)``.

- :func:`margin_loss`, :func:`margin_global`, :func:`margin_diml` (learnable ``beta``:
  :func:`init_beta`);
- :func:`multi_similarity_loss`, :func:`multi_similarity_diml`;
- :func:`triplet_loss`, :func:`contrastive_loss`;
- :func:`proxy_anchor_loss` (learnable proxies: :func:`init_proxies`).
"""
from diml_jax.losses._reduce import LossOutput
from diml_jax.losses.contrastive import contrastive_loss
from diml_jax.losses.margin import init_beta, margin_diml, margin_global, margin_loss
from diml_jax.losses.multi_similarity import multi_similarity_diml, multi_similarity_loss
from diml_jax.losses.proxy_anchor import init_proxies, proxy_anchor_loss, proxy_similarity
from diml_jax.losses.quantities import (
    cosine_similarity,
    euclidean_distance,
    structural_matrix,
    structural_partners,
)
from diml_jax.losses.triplet import triplet_loss

__all__ = [
    "LossOutput",
    "contrastive_loss",
    "cosine_similarity",
    "euclidean_distance",
    "init_beta",
    "init_proxies",
    "margin_diml",
    "margin_global",
    "margin_loss",
    "multi_similarity_diml",
    "multi_similarity_loss",
    "proxy_anchor_loss",
    "proxy_similarity",
    "structural_matrix",
    "structural_partners",
    "triplet_loss",
]
