"""Figures of DIML's explanation: the matching flow between two images.

:func:`flow_figure` draws the figure of the papers' teaser (DIML, ICCV 2021, Fig. 1;
TPAMI 2023, Fig. 1) for one pair of images and their :class:`~diml_jax.matching.Matching`:

- top: both images side by side, each with its part grid, and the strongest entries of the
  flow ``T`` as lines between the centres of the matched cells (width and opacity ∝ flow);
- bottom, under each image: its part contributions, the row (first image) or column
  (second image) sums of ``T ⊙ S``, as a heat map over the image, with the values;
- the decomposition ``structural similarity = Σ part contributions`` (and the global
  cosine, if given) written above.

(:mod:`diml_jax.explain.relevance` draws other relevance maps over an image.)

Figures are :class:`matplotlib.figure.Figure` objects made without ``pyplot``, so nothing
touches a display and no global figure list grows; save them with
``figure.savefig("x.png")`` or ``"x.svg"``, or :func:`figure_bytes`.

Parts are numbered row-major: part ``p`` of a ``rows x cols`` grid is cell
``(p // cols, p % cols)``, as in ``EmbeddingModel``'s ``aux["local"]``. The grid is laid
over each image's full extent.
"""
from __future__ import annotations

import io
import math
from typing import NamedTuple, Sequence

import numpy as np
from matplotlib import colors, patheffects, ticker
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D

from diml_jax.matching import Matching

__all__ = [
    "Grid",
    "FlowFigure",
    "flow_figure",
    "grey",
    "figure_bytes",
    "strongest_flows",
    "cell_centres",
    "check_image",
    "grid_shape",
]

Grid = int | tuple[int, int]

# Looks: a warm line colour with a dark outline reads on any photo. An image's
# contributions are usually all positive and shown from 0 (white) to its largest (red); a
# part can also contribute negatively (S_ij < 0), and then the scale is centred on 0.
_LINE_COLOUR = "#ffd23f"
_HEAT_ALPHA = 0.62
_MAX_LINE_WIDTH = 5.0
# Layout, in inches.
_HEADER = 0.62
_HEAT_TITLE = 0.5
_COLOURBAR = 0.13
_FOOTER = 0.42
_MARGIN = 0.15
_GAP = 0.06  # between the two images, as a fraction of their common display height
_MIN_CELL_FOR_VALUES = 0.3
_ARC_POINTS = 32  # cells smaller than this (inches) get no printed value


class FlowFigure(NamedTuple):
  """A drawn flow figure and the artists that carry the explanation.

  Attributes:
    figure: the whole figure.
    lines: one :class:`~matplotlib.lines.Line2D` per drawn flow entry, strongest first:
      a curve from the centre of a cell of the first image to one of the second, in the
      top panel's data coordinates (both images at a common display height of 1).
    pairs: ``[n, 2]`` int, the ``(part of a, part of b)`` each line joins.
    heatmaps: the part-contribution heat maps of the two images, ``[rows, cols]`` arrays
      drawn over each image's own pixel extent.
    images: the two images as drawn in the top panel (their extents place the lines).
  """

  figure: Figure
  lines: list[Line2D]
  pairs: np.ndarray
  heatmaps: tuple[AxesImage, AxesImage]
  images: tuple[AxesImage, AxesImage]


def check_image(name: str, image) -> np.ndarray:
  """``image`` as a uint8 ``[h, w, 3]`` array, or ``ValueError`` naming ``name``."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
    hint = " (a grey image: np.repeat(x[..., None], 3, -1))" if image.ndim == 2 else ""
    raise ValueError(f"{name} must be an RGB image [h, w, 3]; got shape {image.shape}{hint}.")
  if image.dtype != np.uint8:
    raise ValueError(
        f"{name} must be uint8 (0..255); got dtype {image.dtype}. For floats in [0, 1]: "
        f"(np.clip(x, 0, 1) * 255).round().astype(np.uint8)."
    )
  return image


def grid_shape(name: str, grid: Grid | None, parts: int) -> tuple[int, int]:
  """``(rows, cols)`` of a part grid holding ``parts`` cells.

  Args:
    name: what the grid belongs to, for error messages.
    grid: ``g`` (a ``g x g`` grid), ``(rows, cols)``, or ``None`` for the square grid
      of ``parts`` cells.
    parts: the number of parts (a side of the flow matrix).

  Raises:
    ValueError: the grid is malformed or does not have ``parts`` cells.
  """
  if grid is None:
    side = math.isqrt(parts)
    if side * side != parts:
      raise ValueError(
          f"{name} has {parts} parts, not a square grid; pass its shape, "
          f"grids=((rows, cols), (rows, cols))."
      )
    return side, side
  shape = (grid, grid) if isinstance(grid, (int, np.integer)) else tuple(grid)
  if len(shape) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in shape):
    raise ValueError(f"the grid of {name} must be an int >= 1 or (rows, cols); got {grid!r}.")
  rows, cols = int(shape[0]), int(shape[1])
  if rows * cols != parts:
    raise ValueError(
        f"the matching has {parts} parts for {name}, but its grid {rows}x{cols} has "
        f"{rows * cols} cells."
    )
  return rows, cols


def _check_matching(matching: Matching) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Flow ``[r1, r2]`` and the two contribution vectors of one pair, as float64 NumPy."""
  flow = np.asarray(matching.flow, np.float64)
  if flow.ndim != 2:
    raise ValueError(
        f"matching must be of one pair, flow [r1, r2]; got flow of shape {flow.shape}. "
        f"Take one pair of a batch with jax.tree.map(lambda a: a[i], matching)."
    )
  similarity = np.shape(matching.part_similarity)
  if similarity != flow.shape:
    raise ValueError(
        f"matching.part_similarity must have the flow's shape {flow.shape}; got {similarity}."
    )
  rows = np.asarray(matching.row_contributions, np.float64)
  cols = np.asarray(matching.column_contributions, np.float64)
  return flow, rows, cols


def strongest_flows(flow, *, min_flow: float = 0.25, max_lines: int | None = 32) -> np.ndarray:
  """The flow entries worth drawing: ``T_ij >= min_flow * max(T)``, strongest first.

  Args:
    flow: ``[r1, r2]`` transport plan.
    min_flow: the fraction of the largest entry below which an entry is not drawn, in
      ``(0, 1]``.
    max_lines: keep at most this many (``None``: all above the threshold).

  Returns:
    ``[n, 2]`` int ``(i, j)`` pairs, by decreasing ``T_ij`` (ties in row-major order).
  """
  flow = np.asarray(flow)
  if not 0 < min_flow <= 1:
    raise ValueError(f"min_flow must be a fraction in (0, 1]; got {min_flow!r}.")
  if max_lines is not None and max_lines < 0:
    raise ValueError(f"max_lines must be >= 0 or None; got {max_lines!r}.")
  peak = flow.max(initial=0.0)
  if peak <= 0:
    return np.zeros((0, 2), int)
  order = np.argsort(-flow, axis=None, kind="stable")
  order = order[flow.ravel()[order] >= min_flow * peak][:max_lines]
  return np.stack(np.unravel_index(order, flow.shape), axis=1)


def cell_centres(extent: Sequence[float], grid: tuple[int, int]) -> np.ndarray:
  """Centres ``[rows * cols, 2]`` (x, y) of a grid laid over ``extent``, row-major.

  Args:
    extent: ``(left, right, bottom, top)`` of the image, as ``imshow`` takes it (for an
      image drawn the usual way, ``top < bottom``: y grows downwards).
    grid: ``(rows, cols)``.
  """
  left, right, bottom, top = extent
  rows, cols = grid
  x = left + (np.arange(cols) + 0.5) * (right - left) / cols
  y = top + (np.arange(rows) + 0.5) * (bottom - top) / rows
  return np.stack(np.broadcast_arrays(x[None, :], y[:, None]), -1).reshape(-1, 2)


def _draw_grid(ax, extent, grid, **style) -> None:
  left, right, bottom, top = extent
  rows, cols = grid
  xs = left + np.arange(1, cols) * (right - left) / cols
  ys = top + np.arange(1, rows) * (bottom - top) / rows
  ax.vlines(xs, top, bottom, **style)
  ax.hlines(ys, left, right, **style)


def _arc(start: np.ndarray, end: np.ndarray) -> np.ndarray:
  """``[_ARC_POINTS, 2]`` points of a quadratic curve from ``start`` to ``end``.

  A straight line between two cells of the same row would run through the centres of the
  cells between them and look like it ended there; the curve bows towards the nearer
  edge of the images (up in their top half, whose height is 1), by a tenth of its length
  but never out of the images.
  """
  middle = (start + end) / 2
  room = min(middle[1], 1 - middle[1])
  height = min(0.1 * abs(end[0] - start[0]), 0.8 * room)
  # The curve's peak lies halfway between the chord and the control point.
  control = middle + np.array([0.0, 2 * height * (-1 if middle[1] < 0.5 else 1)])
  t = np.linspace(0, 1, _ARC_POINTS)[:, None]
  return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end


def _outlined(width: float, alpha: float = 1.0):
  return [patheffects.withStroke(linewidth=width, foreground="black", alpha=alpha)]


def _cell(p: int, grid: tuple[int, int]) -> str:
  return f"({p // grid[1]},{p % grid[1]})"


def _top_parts(values: np.ndarray, grid: tuple[int, int], n: int) -> str:
  top = np.argsort(-values, kind="stable")[:n]
  return " · ".join(f"{_cell(p, grid)} {values[p]:.3f}" for p in top)


def _contribution_scale(values: np.ndarray) -> tuple[colors.Normalize, str]:
  """The colour scale of one image's contributions: from 0 up, or centred on 0."""
  scale = max(np.abs(values).max(), 1e-12)
  if values.min() >= 0:
    return colors.Normalize(0.0, scale), "Reds"
  return colors.Normalize(-scale, scale), "RdBu_r"


def grey(image: np.ndarray) -> np.ndarray:
  """The luminance ``[H, W]`` of an RGB image ``[H, W, 3]`` (ITU-R BT.601 weights), the
  background of the heat maps."""
  return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def flow_figure(
    image_a,
    image_b,
    matching: Matching,
    *,
    grids: tuple[Grid | None, Grid | None] | None = None,
    global_similarity: float | None = None,
    min_flow: float = 0.25,
    max_lines: int | None = 32,
    names: tuple[str, str] = ("A", "B"),
    width: float = 10.0,
    max_panel_height: float = 4.5,
) -> FlowFigure:
  """The flow figure of one image pair: matched parts, part contributions, decomposition.

  Args:
    image_a: the first image, uint8 ``[h1, w1, 3]``.
    image_b: the second image, uint8 ``[h2, w2, 3]`` (any size; both are shown at a
      common height).
    matching: :func:`diml_jax.matching.match` of this one pair: ``flow`` and
      ``part_similarity`` ``[r1, r2]`` (index a batched result first).
    grids: the part grids of the two images, each ``g``, ``(rows, cols)`` or ``None``
      (square); default: both square. ``r1 = rows_a * cols_a``, ``r2 = rows_b * cols_b``.
    global_similarity: the global cosine ``<g_a, g_b>``, written next to the structural
      similarity when given.
    min_flow: draw flow entries of at least this fraction of the largest, in ``(0, 1]``.
    max_lines: draw at most this many lines (the strongest).
    names: what to call the two images in the text.
    width: figure width in inches.
    max_panel_height: the image panels' height is capped at this (inches); tall images
      make the figure narrower instead.

  Returns:
    a :class:`FlowFigure`.

  Raises:
    ValueError: an image is not uint8 ``[h, w, 3]``, the matching is not of one pair, or
      a grid does not have the matching's number of parts.
  """
  image_a, image_b = check_image("image_a", image_a), check_image("image_b", image_b)
  flow, row_contrib, col_contrib = _check_matching(matching)
  grids = (None, None) if grids is None else grids
  if len(grids) != 2:
    raise ValueError(f"grids must be a pair (grid of image_a, grid of image_b); got {grids!r}.")
  grid_a = grid_shape(f"image_a ({names[0]})", grids[0], flow.shape[0])
  grid_b = grid_shape(f"image_b ({names[1]})", grids[1], flow.shape[1])
  pairs = strongest_flows(flow, min_flow=min_flow, max_lines=max_lines)

  # Both images at a common display height of 1: the top panel's data units.
  wa = image_a.shape[1] / image_a.shape[0]
  wb = image_b.shape[1] / image_b.shape[0]
  extent_a, extent_b = (0.0, wa, 1.0, 0.0), (wa + _GAP, wa + _GAP + wb, 1.0, 0.0)
  span = wa + _GAP + wb
  panel_h = min((width - 2 * _MARGIN) / span, max_panel_height)  # inches per data unit
  height = _HEADER + panel_h + _HEAT_TITLE + panel_h + _COLOURBAR + _FOOTER
  fig = Figure(figsize=(width, height))
  x0 = (width - panel_h * span) / 2

  def box(left, bottom, w, h):  # inches -> figure fraction
    return [left / width, bottom / height, w / width, h / height]

  ax = fig.add_axes(box(x0, height - _HEADER - panel_h, panel_h * span, panel_h))
  shown = (_draw_image(ax, image_a, extent_a, grid_a, names[0]),
           _draw_image(ax, image_b, extent_b, grid_b, names[1]))
  ax.set_xlim(0, span)
  ax.set_ylim(1, 0)
  lines = _draw_flow(ax, flow, pairs, cell_centres(extent_a, grid_a),
                     cell_centres(extent_b, grid_b))

  # Under each image, its part contributions, each on its own colour scale: with
  # r1 != r2 the two images' parts carry different shares of the same total.
  heatmaps = []
  for image, extent, grid, values, name, kind in (
      (image_a, extent_a, grid_a, row_contrib, names[0], "row"),
      (image_b, extent_b, grid_b, col_contrib, names[1], "column"),
  ):
    left, w = x0 + extent[0] * panel_h, (extent[1] - extent[0]) * panel_h
    heat = _draw_contributions(fig.add_axes(box(left, _FOOTER + _COLOURBAR, w, panel_h)),
                               image, grid, values, name, panel_h)
    bar = fig.colorbar(ScalarMappable(heat.norm, heat.cmap), orientation="horizontal",
                       cax=fig.add_axes(box(left + 0.2 * w, _FOOTER, 0.6 * w, _COLOURBAR)))
    bar.ax.tick_params(labelsize=7)
    bar.ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
    bar.set_label(f"{kind} sums of T⊙S", fontsize=8)
    heatmaps.append(heat)

  # The decomposition.
  headline = f"structural similarity {float(matching.similarity):.3f} = Σ part contributions"
  if global_similarity is not None:
    headline += f"   |   global cosine {float(global_similarity):.3f}"
  shown_mass = flow[pairs[:, 0], pairs[:, 1]].sum() / max(flow.sum(), 1e-12)
  detail = (
      f"lines: the {len(pairs)} largest of the {flow.size} flow entries T_ij "
      f"(≥ {min_flow:.0%} of the largest), {shown_mass:.0%} of the flow; "
      f"width and opacity ∝ T_ij; cells are (row, col)"
  )
  fig.text(0.5, 1 - 0.2 / height, headline, ha="center", va="top", fontsize=11,
           weight="bold")
  fig.text(0.5, 1 - 0.42 / height, detail, ha="center", va="top", fontsize=8.5,
           color="#333333")
  return FlowFigure(fig, lines, pairs, (heatmaps[0], heatmaps[1]), shown)


def _draw_image(ax, image: np.ndarray, extent, grid: tuple[int, int], name: str) -> AxesImage:
  """An image at ``extent`` of the top panel, with its part grid and its name."""
  ax.set_axis_off()
  shown = ax.imshow(image, extent=extent, interpolation="antialiased")
  _draw_grid(ax, extent, grid, colors="white", linewidths=0.8, alpha=0.75)
  ax.text(extent[0] + 0.012, 0.012, name, ha="left", va="top", fontsize=8.5,
          bbox=dict(boxstyle="round,pad=0.25", facecolor="white", alpha=0.8, linewidth=0))
  return shown


def _draw_flow(ax, flow: np.ndarray, pairs: np.ndarray, centres_a: np.ndarray,
               centres_b: np.ndarray) -> list[Line2D]:
  """One curve per ``(i, j)`` of ``pairs``, width and opacity ∝ ``flow[i, j]``; in order."""
  peak = flow.max(initial=0.0)
  lines = []
  for i, j in pairs[::-1]:  # weakest first, so the strongest are drawn on top
    strength = flow[i, j] / peak
    lw = 0.6 + (_MAX_LINE_WIDTH - 0.6) * strength
    (line,) = ax.plot(
        *_arc(centres_a[i], centres_b[j]).T,
        color=_LINE_COLOUR, linewidth=lw, alpha=0.35 + 0.65 * strength,
        marker="o", markevery=[0, _ARC_POINTS - 1], markersize=1.2 * lw + 2,
        solid_capstyle="round", path_effects=_outlined(lw + 1.6, 0.8),
    )
    lines.append(line)
  return lines[::-1]


def _draw_contributions(ax, image: np.ndarray, grid: tuple[int, int], values: np.ndarray,
                        name: str, inches_per_height: float) -> AxesImage:
  """``values [rows * cols]`` as a heat map over ``image`` (in grey), with their numbers."""
  h, w = image.shape[:2]
  extent = (0, w, h, 0)
  ax.set_axis_off()
  # A darkened grey image, so that the colours carry the information.
  ax.imshow(grey(image), cmap="gray", vmin=0, vmax=255 * 1.25, extent=extent,
            interpolation="antialiased")
  norm, cmap = _contribution_scale(values)
  heat = ax.imshow(values.reshape(grid), cmap=cmap, norm=norm, alpha=_HEAT_ALPHA,
                   extent=extent, interpolation="nearest")
  _draw_grid(ax, extent, grid, colors="black", linewidths=0.5, alpha=0.5)
  scale = inches_per_height / h  # inches per pixel
  cell = min(w / grid[1], h / grid[0]) * scale
  if cell >= _MIN_CELL_FOR_VALUES:
    for p, (cx, cy) in enumerate(cell_centres(extent, grid)):
      ax.text(cx, cy, f"{values[p]:.3f}", ha="center", va="center", fontsize=min(9, 14 * cell),
              color="white", path_effects=_outlined(2.0))
  title, size = _panel_title(name, values, grid, w * scale)
  # y=1.0: where matplotlib's automatic placement puts it above an axes without tick
  # labels, but without measuring the hidden axes' ticks at each draw (a fifth of the
  # time of drawing a report's figure; the same pixels).
  ax.set_title(title, fontsize=size, loc="left", pad=4, y=1.0)
  return heat


def _panel_title(name: str, values: np.ndarray, grid: tuple[int, int],
                 width_in: float) -> tuple[str, float]:
  """The title of a contribution panel ``width_in`` inches wide, and its font size.

  At about 0.06 inch per character at 8.5 pt, narrow panels get smaller type, down to
  6 pt, and then fewer top parts.
  """
  for top in (3, 2, 1):
    lines = [f"{name}: Σ of {values.size} parts = {values.sum():.3f}",
             f"top {_top_parts(values, grid, top)}"]
    size = min(8.5, 8.5 * width_in / (0.06 * max(map(len, lines))))
    if size >= 6:
      break
  return "\n".join(lines), size


def figure_bytes(figure: Figure, format: str = "png", *, dpi: float | None = None,
                 **savefig_options) -> bytes:
  """The figure encoded as ``format`` (``"png"``, ``"svg"``, ``"pdf"``, ``"jpg"``...).

  ``savefig_options`` go to :meth:`~matplotlib.figure.Figure.savefig` (e.g.
  ``pil_kwargs={"quality": 90}`` for JPEG).
  """
  buffer = io.BytesIO()
  figure.savefig(buffer, format=format, dpi=dpi, **savefig_options)
  return buffer.getvalue()
