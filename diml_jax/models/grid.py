"""Pooling a feature map to DIML's grid of parts: the published resize-then-average maps.

The published DIML code (``architectures/resnet50_diml.py``, ``evaluation/eval_diml.py``)
resizes the last-stage map to 16x16 (bilinear, ``align_corners=True``) and average-pools it
to a ``g x g`` grid (PyTorch ``adaptive_avg_pool2d`` bins). Both are fixed linear maps, built
here as matrices; :mod:`diml_jax.models.head` pools the features with them and
:mod:`diml_jax.models.rollout` the attention relevance.
"""
import functools
import math

import jax.numpy as jnp
import numpy as np

# The reference resizes the last-stage map to 16x16 before pooling to the grid.
RESIZE_TO = 16


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """Weights ``[out_size, in_size]`` of 1-D linear interpolation with aligned corners.

  Output ``o`` samples input coordinate ``o * (in_size - 1) / (out_size - 1)``, as
  ``torch.nn.functional.interpolate(..., mode="bilinear", align_corners=True)``.
  """
  scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
  src = np.arange(out_size) * scale
  lo = np.minimum(np.floor(src).astype(int), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  weights = np.zeros((out_size, in_size))
  np.add.at(weights, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(out_size), hi), frac)
  return weights


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """Weights ``[out_size, in_size]`` of 1-D adaptive average pooling (PyTorch's bins).

  Bin ``o`` averages inputs ``floor(o * in / out)`` to ``ceil((o + 1) * in / out) - 1``.
  """
  weights = np.zeros((out_size, in_size))
  for o in range(out_size):
    start = (o * in_size) // out_size
    end = -((-(o + 1) * in_size) // out_size)
    weights[o, start:end] = 1.0 / (end - start)
  return weights


@functools.lru_cache(maxsize=None)
def grid_pool_matrix(in_size: int, grid_size: int, resize_to: int | None = RESIZE_TO
                     ) -> np.ndarray:
  """Weights ``[grid_size, in_size]`` of resize-then-pool along one axis.

  Args:
    in_size: length of the feature map axis.
    grid_size: number of grid cells along the axis.
    resize_to: bilinear (aligned-corners) resize before pooling. ``None`` follows the
      reference's test-time evaluation of baselines: no resize when ``grid_size`` divides
      ``in_size``, otherwise a resize to ``4 * grid_size``.

  Returns:
    a read-only float64 matrix whose rows sum to one.
  """
  if resize_to is None and in_size % grid_size == 0:
    weights = adaptive_pool_matrix(in_size, grid_size)
  else:
    resize_to = resize_to or 4 * grid_size
    weights = adaptive_pool_matrix(resize_to, grid_size) @ bilinear_matrix(in_size, resize_to)
  weights.setflags(write=False)  # shared by the cache
  return weights


def grid_pool(feature_map: jnp.ndarray, grid_size: int, *,
              resize_to: int | None = RESIZE_TO) -> jnp.ndarray:
  """Resizes a feature map bilinearly (aligned corners) and average-pools it to a grid.

  Equals ``adaptive_avg_pool2d(interpolate(x, resize_to, "bilinear", align_corners=True),
  grid_size)`` in PyTorch, computed as two small matrix products (the weights are
  separable and depend only on the static shapes).

  Args:
    feature_map: ``[b, h, w, c]``.
    grid_size: ``g``, cells per side, ``1 <= g <= resize_to``.
    resize_to: side of the intermediate resize; see :func:`grid_pool_matrix` for ``None``.

  Returns:
    the grid ``[b, g, g, c]``, in ``feature_map``'s dtype.
  """
  if feature_map.ndim != 4:
    raise ValueError(f"`feature_map` must be [b, h, w, c]; got shape {feature_map.shape}.")
  if resize_to is None:
    upper, expected = math.inf, "a positive integer"
  elif isinstance(resize_to, int) and resize_to >= 1:
    upper, expected = resize_to, f"an integer in 1..{resize_to} (the resized map's side)"
  else:
    raise ValueError(f"`resize_to` must be a positive integer or None; got {resize_to!r}.")
  if not isinstance(grid_size, int) or not 1 <= grid_size <= upper:
    raise ValueError(f"`grid_size` must be {expected}; got {grid_size!r}.")
  rows = grid_pool_matrix(feature_map.shape[1], grid_size, resize_to)
  cols = grid_pool_matrix(feature_map.shape[2], grid_size, resize_to)
  dtype = feature_map.dtype
  return jnp.einsum("gh,bhwc,kw->bgkc", rows.astype(dtype), feature_map, cols.astype(dtype))
