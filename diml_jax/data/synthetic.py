"""A synthetic set made at run time: each class is a fixed spatial arrangement of parts.

A class is three coloured shapes (disc, square, triangle, ring, cross) in three distinct
cells of a 3x3 grid. Every image of the class draws the same parts in the same cells, with
the whole arrangement shifted, each part jittered in position, size and brightness, on a
noisy background, plus (half the time) one distractor shape in a free cell. Two classes can
share parts and differ only in where they are, so a model has to look at the structure,
which is what structural matching can explain.

Deterministic from ``seed``; classes ``1 .. num_classes // 2`` train, the rest test.
"""
import io
from typing import NamedTuple

import numpy as np
from PIL import Image

from diml_jax.data import dataset as dataset_lib

NAME = "synthetic"
SHAPES = ("disc", "square", "triangle", "ring", "cross")
COLOURS = np.array([[220, 40, 40], [40, 160, 60], [40, 80, 220], [240, 200, 30],
                    [160, 60, 200], [30, 190, 200]], np.float32)
COLOUR_NAMES = ("red", "green", "blue", "yellow", "purple", "cyan")
_GRID = 3
_PARTS = 3


class Part(NamedTuple):
  shape: int   # index into SHAPES
  colour: int  # index into COLOURS
  cell: int    # 0 .. 8, row-major in the 3x3 grid


def arrangements(num_classes: int, seed: int) -> list[tuple[Part, ...]]:
  """Draws ``num_classes`` distinct arrangements of ``_PARTS`` parts in distinct cells."""
  rng = np.random.default_rng(seed)
  seen, out = set(), []
  while len(out) < num_classes:
    cells = rng.choice(_GRID * _GRID, _PARTS, replace=False)
    parts = tuple(sorted(Part(int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS))),
                              int(c)) for c in cells))
    if parts not in seen:
      seen.add(parts)
      out.append(parts)
  return out


def _shape_mask(shape: int, dy: np.ndarray, dx: np.ndarray, radius: float) -> np.ndarray:
  """Boolean ``[s, s]`` mask of a shape centred at the origin of ``(dy, dx)``."""
  name = SHAPES[shape]
  if name == "disc":
    return dy**2 + dx**2 <= radius**2
  if name == "square":
    return (np.abs(dy) <= 0.8 * radius) & (np.abs(dx) <= 0.8 * radius)
  if name == "triangle":
    return (dy <= 0.7 * radius) & (dy >= -radius + 2 * np.abs(dx))
  if name == "ring":
    r2 = dy**2 + dx**2
    return (r2 <= radius**2) & (r2 >= (0.55 * radius)**2)
  return ((np.abs(dy) <= 0.3 * radius) | (np.abs(dx) <= 0.3 * radius)) & (
      np.maximum(np.abs(dy), np.abs(dx)) <= radius)


def render(parts: tuple[Part, ...], rng: np.random.Generator, size: int) -> np.ndarray:
  """Draws one jittered image of an arrangement: ``uint8 [size, size, 3]``."""
  cell = size / _GRID
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  background = rng.uniform(200, 245) + rng.normal(0, 8, (size, size, 1))
  image = np.broadcast_to(background, (size, size, 3)).astype(np.float32).copy()
  shift = rng.uniform(-0.12, 0.12, 2) * cell
  free = sorted(set(range(_GRID * _GRID)) - {p.cell for p in parts})
  drawn = list(parts)
  if rng.random() < 0.5:
    drawn.append(Part(int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS))),
                      int(rng.choice(free))))
  for part in drawn:
    row, col = divmod(part.cell, _GRID)
    cy, cx = (np.array([row, col]) + 0.5) * cell + shift + rng.uniform(-0.08, 0.08, 2) * cell
    mask = _shape_mask(part.shape, yy - cy, xx - cx, cell * rng.uniform(0.32, 0.44))
    image[mask] = COLOURS[part.colour] * rng.uniform(0.8, 1.1)
  return np.clip(image, 0, 255).astype(np.uint8)


def load(split: str, *, num_classes: int = 16, images_per_class: int = 12,
         image_size: int = 64, seed: int = 0) -> dataset_lib.Dataset:
  """Makes one split of the synthetic set (PNG bytes in memory).

  Args:
    split: ``"train"`` (classes ``1 .. num_classes // 2``) or ``"test"`` (the rest).
    num_classes: classes over both splits (>= 2).
    images_per_class: images of each class.
    image_size: side of the generated images.
    seed: everything is a function of it.

  Returns:
    The split's :class:`~diml_jax.data.dataset.Dataset`.
  """
  dataset_lib.check_split(split)
  if num_classes < 2:
    raise ValueError(f"num_classes={num_classes} must be >= 2 for a class-disjoint split.")
  classes = arrangements(num_classes, seed)
  first, stop = (0, num_classes // 2) if split == "train" else (num_classes // 2, num_classes)
  blobs, names, class_ids = [], [], []
  for class_id in range(first + 1, stop + 1):
    for i in range(images_per_class):
      rng = np.random.default_rng((seed, class_id, i))
      buffer = io.BytesIO()
      # Fast zlib: the noisy background hardly compresses at any level.
      Image.fromarray(render(classes[class_id - 1], rng, image_size)).save(
          buffer, "PNG", compress_level=1)
      blobs.append(buffer.getvalue())
      names.append(f"synthetic/class_{class_id:03d}/{i:04d}.png")
      class_ids.append(class_id)
  describe = {c: " ".join(f"{COLOUR_NAMES[p.colour]}-{SHAPES[p.shape]}@{p.cell}"
                          for p in classes[c - 1]) for c in set(class_ids)}
  return dataset_lib.from_class_ids(
      NAME, split, images=dataset_lib.InMemory(tuple(blobs), tuple(names)),
      class_ids=class_ids, names_by_id=describe)

