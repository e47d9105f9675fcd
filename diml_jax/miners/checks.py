"""Checks of the labels and per-image matrices that miners and losses take, each a
``ValueError`` naming the argument, the expected and the received shape."""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["check_labels", "check_square", "check_rows"]


def check_labels(labels, b: int | None = None, name: str = "labels") -> jax.Array:
  """``labels`` as integer class ids ``[b]``; a ``ValueError`` naming the shape otherwise."""
  labels = jnp.asarray(labels)
  if labels.ndim != 1 or (b is not None and labels.shape[0] != b):
    want = "[b]" if b is None else f"[{b}]"
    raise ValueError(f"{name} must have shape {want}; got {labels.shape}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{name} must be integer class ids; got dtype {labels.dtype}.")
  return labels


def check_square(name: str, matrix, labels) -> tuple[jax.Array, jax.Array]:
  """``(matrix [b, b], labels [b])`` checked against each other; ``name`` is the matrix's."""
  matrix = jnp.asarray(matrix)
  labels = check_labels(labels)
  b = labels.shape[0]
  if matrix.shape != (b, b):
    raise ValueError(
        f"{name} must be a [b, b] matrix over the batch (b={b} labels); got {matrix.shape}."
    )
  return matrix, labels


def check_rows(name: str, matrix, labels, layout: str) -> tuple[jax.Array, jax.Array]:
  """``(matrix [b, ...], labels [b])``: a 2-D matrix with one row per labelled image;
  ``layout`` (e.g. ``"[b, k]"``) names its columns in the error."""
  matrix = jnp.asarray(matrix)
  labels = check_labels(labels)
  if matrix.ndim != 2 or matrix.shape[0] != labels.shape[0]:
    raise ValueError(
        f"{name} must be {layout} with b={labels.shape[0]} (the labels); got "
        f"{matrix.shape}.")
  return matrix, labels
