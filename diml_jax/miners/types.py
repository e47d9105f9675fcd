"""What miners return: pair masks over a batch, or one sampled partner of each kind per
anchor."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["PairMasks", "Sampled"]


class PairMasks(NamedTuple):
  """Selected pairs ``(anchor i, partner j)``.

  Attributes:
    positive: ``[b, k]`` bool, pairs of the same class.
    negative: ``[b, k]`` bool, pairs of different classes.
  """

  positive: jax.Array
  negative: jax.Array


class Sampled(NamedTuple):
  """One positive and one negative partner per anchor (:func:`distance_weighted`).

  Attributes:
    positive: index of each anchor's positive, ``[b]`` int32; the anchor itself where
      ``has_positive`` is false.
    negative: index of each anchor's negative, ``[b]`` int32; the anchor itself where
      ``has_negative`` is false.
    has_positive: ``[b]`` bool, the anchor has another image of its class in the batch.
    has_negative: ``[b]`` bool, the anchor has an image of another class in the batch.
  """

  positive: jax.Array
  negative: jax.Array
  has_positive: jax.Array
  has_negative: jax.Array

  @property
  def partners(self) -> jax.Array:
    """``[b, 2]`` indices: column 0 the positive, column 1 the negative."""
    return jnp.stack([self.positive, self.negative], axis=1)

  @property
  def triplets(self) -> jax.Array:
    """The triplet ``(a, positive, negative)`` of each anchor that has both, as a
    ``[b, b, b]`` mask indexed ``[a, p, n]`` (for :func:`diml_jax.losses.triplet_loss`)."""
    b = self.positive.shape[0]
    valid = self.has_positive & self.has_negative
    p = jax.nn.one_hot(self.positive, b, dtype=bool)
    n = jax.nn.one_hot(self.negative, b, dtype=bool)
    return p[:, :, None] & n[:, None, :] & valid[:, None, None]

  @property
  def pairs(self) -> PairMasks:
    """The two pairs of each anchor as masks over :attr:`partners`, ``[b, 2]``."""
    false = jnp.zeros_like(self.has_positive)
    return PairMasks(
        positive=jnp.stack([self.has_positive, false], axis=1),
        negative=jnp.stack([false, self.has_negative], axis=1),
    )
