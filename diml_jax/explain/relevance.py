"""Relevance maps over an image: DGML's group attention, a ViT's attention rollout.

Like :mod:`diml_jax.explain.figures`, figures are made without ``pyplot``; save them with
``figure.savefig`` or :func:`~diml_jax.explain.figures.figure_bytes`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure

from diml_jax.explain.figures import check_image, grey

__all__ = ["relevance_figure"]


def relevance_figure(
    image,
    maps,
    *,
    titles: Sequence[str] | None = None,
    cmap: str = "inferno",
    alpha: float = 0.6,
    shared_scale: bool = False,
    panel_height: float = 2.6,
) -> Figure:
  """Relevance maps over an image: the image, then one panel per map.

  For DGML's group attention maps ``[k, h, w]`` or a ViT's attention rollout ``[h, w]``
  (any resolution: each map is stretched over the whole image with bilinear smoothing).

  Args:
    image: uint8 ``[H, W, 3]``.
    maps: ``[h, w]`` or ``[k, h, w]`` finite floats.
    titles: one per map (default ``"map 0"``, ...).
    cmap: matplotlib colour map of the overlays.
    alpha: opacity of the overlays.
    shared_scale: one colour scale for all maps (e.g. to compare groups' attention);
      default: each map from its own minimum to its maximum.
    panel_height: height of each panel in inches.

  Returns:
    the figure; panel ``1 + m`` (``figure.axes[1 + m]``) holds map ``m`` as its second
    image, drawn over the image's extent.

  Raises:
    ValueError: the image is not uint8 ``[H, W, 3]``, the maps are not ``[h, w]`` or
      ``[k, h, w]`` finite numbers, or ``titles`` has the wrong length.
  """
  image = check_image("image", image)
  maps = np.asarray(maps)
  if maps.ndim not in (2, 3) or 0 in maps.shape:
    raise ValueError(f"maps must be [h, w] or [k, h, w]; got shape {maps.shape}.")
  if not np.issubdtype(maps.dtype, np.number) or not np.isfinite(maps).all():
    raise ValueError(f"maps must hold finite numbers; got dtype {maps.dtype} with "
                     f"non-finite values or non-numbers.")
  maps = maps.reshape((-1,) + maps.shape[-2:]).astype(np.float64)
  titles = [f"map {m}" for m in range(len(maps))] if titles is None else list(titles)
  if len(titles) != len(maps):
    raise ValueError(f"titles must have one entry per map ({len(maps)}); got {len(titles)}.")
  h, w = image.shape[:2]
  panel_w = panel_height * w / h
  fig = Figure(figsize=((1 + len(maps)) * (panel_w + 0.1) + 0.1, panel_height + 0.45))
  axes = fig.subplots(1, 1 + len(maps), squeeze=False)[0]
  fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 0.35 / (panel_height + 0.45),
                      wspace=0.04)
  extent = (0, w, h, 0)
  axes[0].imshow(image, extent=extent)
  axes[0].set_title("image", fontsize=9)
  low, high = maps.min(), maps.max()
  for ax, relevance, title in zip(axes[1:], maps, titles):
    if not shared_scale:
      low, high = relevance.min(), relevance.max()
    ax.imshow(grey(image), cmap="gray", vmin=0, vmax=255, extent=extent)
    ax.imshow(relevance, cmap=cmap, alpha=alpha, extent=extent, interpolation="bilinear",
              norm=colors.Normalize(low, high if high > low else low + 1e-12))
    ax.set_title(title, fontsize=9)
  for ax in axes:
    ax.set_axis_off()
  return fig
