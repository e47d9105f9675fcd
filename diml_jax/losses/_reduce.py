"""Masked reductions shared by the losses: fixed shapes, finite gradients on empty masks."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossOutput(NamedTuple):
  """A loss value and two cheap measurements for the training loop's log.

  Attributes:
    loss: the scalar loss.
    active_fraction: share of the selected elements that contribute to the loss (each
      loss's docstring says which elements); 0 when nothing was selected.
    selected: how many elements (pairs, triplets, anchors, proxies) the miner selected.
  """

  loss: jax.Array
  active_fraction: jax.Array
  selected: jax.Array


def average_nonzero(losses: jax.Array, mask: jax.Array) -> LossOutput:
  """Sum of the selected losses over the number of nonzero ones; 0 if there are none.

  pytorch-metric-learning's ``AvgNonZeroReducer`` and the margin loss of Wu et al. /
  Roth et al. (``sum / pair_count``). An empty or all-zero selection gives loss 0 with
  zero gradient: every term is a ``relu`` at or below 0 there.
  """
  losses = jnp.where(mask, losses, 0.0)
  active = jnp.sum(losses > 0)
  selected = jnp.sum(mask)
  return LossOutput(
      loss=jnp.sum(losses) / jnp.maximum(active, 1).astype(losses.dtype),
      active_fraction=active / jnp.maximum(selected, 1),
      selected=selected,
  )


def log1p_sum_exp(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
  """``log(1 + sum_{mask} exp(x))`` along ``axis``: 0 where nothing is selected.

  Shifted by ``max(0, max x)`` so it neither overflows (the multi-similarity loss's
  negative weight 40 and ProxyAnchor's alpha 32 scale ``x``) nor lets unselected
  entries reach the gradient.
  """
  x = jnp.where(mask, x, -jnp.inf)
  shift = jax.lax.stop_gradient(jnp.maximum(jnp.max(x, axis=axis, keepdims=True), 0.0))
  total = jnp.exp(-shift) + jnp.sum(jnp.exp(x - shift), axis=axis, keepdims=True)
  return jnp.squeeze(shift + jnp.log(total), axis)


def average(losses: jax.Array, mask: jax.Array) -> LossOutput:
  """Mean of the selected losses (``sum / #selected``); 0 if nothing is selected.

  The published Roth et al. / DIML criteria's ``torch.mean`` over the mined tuples
  (triplet, contrastive, quadruplet), where :func:`average_nonzero` divides by the
  nonzero terms only.
  """
  losses = jnp.where(mask, losses, 0.0)
  selected = jnp.sum(mask)
  return LossOutput(
      loss=jnp.sum(losses) / jnp.maximum(selected, 1).astype(losses.dtype),
      active_fraction=jnp.sum(losses > 0) / jnp.maximum(selected, 1),
      selected=selected,
  )


def reduce(losses: jax.Array, mask: jax.Array, reduction: str) -> LossOutput:
  """:func:`average_nonzero` (``"nonzero"``) or :func:`average` (``"mean"``)."""
  if reduction == "nonzero":
    return average_nonzero(losses, mask)
  if reduction == "mean":
    return average(losses, mask)
  raise ValueError(f"reduction must be 'nonzero' or 'mean'; got {reduction!r}.")


def masked_logsumexp(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
  """``log sum_{mask} exp(x)`` along ``axis``; ``-inf`` (with zero gradient) where
  nothing is selected."""
  found = jnp.any(mask, axis=axis)
  x = jnp.where(mask, x, -jnp.inf)
  shift = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
  shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
  total = jnp.sum(jnp.exp(x - shift), axis=axis)
  # The double where keeps the gradient of an empty row 0 rather than 0 * inf.
  value = jnp.squeeze(shift, axis) + jnp.log(jnp.where(found, total, 1.0))
  return jnp.where(found, value, -jnp.inf)


def embedding_norm(embeddings: jax.Array) -> jax.Array:
  """Mean L2 norm of the rows of ``embeddings [b, d]``: the published N-pair, angular and
  lifted criteria's penalty on unnormalised embeddings (``torch.mean(torch.norm(batch))``)."""
  return jnp.mean(jnp.sqrt(jnp.sum(embeddings * embeddings, axis=-1) + 1e-12))
