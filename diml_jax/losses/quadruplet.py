"""Quadruplet loss (Chen et al. 2017) on a distance matrix (global or DIML's)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diml_jax import miners
from diml_jax.losses import quantities
from diml_jax.losses._reduce import LossOutput, average

__all__ = ["quadruplet_loss"]


def quadruplet_loss(
    distances: jax.Array,
    labels: jax.Array,
    *,
    sampled: miners.Sampled,
    second_negative: tuple[jax.Array, jax.Array],
    margin_1: float = 0.2,
    margin_2: float = 0.2,
) -> LossOutput:
  """``mean relu(d_ap - d_an + margin_1) + mean relu(d_ap - d_nn' + margin_2)``.

  One triplet ``(a, p, n)`` per anchor from a miner and a second negative ``n'`` of a
  third class (:func:`miners.quadruplet_negatives`); both means are over the anchors
  whose tuple is complete, as the published ``criteria/quadruplet.py`` (whose fourth
  image is any image whose own mined negative differs from ``n``, rather than one of a
  third class as in the paper; the paper's is used here).

  Args:
    distances: ``[b, b]`` (Euclidean between normalised embeddings, or DIML's).
    labels: class ids ``[b]``.
    sampled: each anchor's positive and negative, :class:`miners.Sampled`.
    second_negative: ``(index [b], found [b])`` of :func:`miners.quadruplet_negatives`.
    margin_1: the triplet term's margin (0.2).
    margin_2: the second term's margin (0.2).

  Returns:
    :class:`LossOutput`: ``selected`` counts the triplet and the quadruplet terms,
    ``active_fraction`` the share of them that is nonzero.

  References:
    Chen, Chen, Zhang, Huang. Beyond Triplet Loss: a Deep Quadruplet Network for Person
    Re-identification. CVPR 2017, Sec. 3.
  """
  distances, labels = miners.check_square("distances", distances, labels)
  index, found = second_negative
  triplet = sampled.has_positive & sampled.has_negative
  d_ap = jnp.take_along_axis(distances, sampled.positive[:, None], axis=1)[:, 0]
  d_an = jnp.take_along_axis(distances, sampled.negative[:, None], axis=1)[:, 0]
  # Row n of the whole matrix for each anchor's negative n, as a one-hot product: a gather
  # by batch-sharded indices does not lower under an explicit-sharding mesh.
  rows = jax.nn.one_hot(sampled.negative, labels.shape[0]) @ quantities.replicated(distances)
  d_nn = jnp.take_along_axis(rows, index[:, None], axis=1)[:, 0]
  first = average(jax.nn.relu(d_ap - d_an + margin_1), triplet)
  second = average(jax.nn.relu(d_ap - d_nn + margin_2), triplet & found)
  selected = first.selected + second.selected
  active = first.active_fraction * first.selected + second.active_fraction * second.selected
  return LossOutput(loss=first.loss + second.loss,
                    active_fraction=active / jnp.maximum(selected, 1), selected=selected)
