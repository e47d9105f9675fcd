"""Decoding and augmenting one image: encoded bytes in, ``uint8 [s, s, 3]`` out.

Everything here runs inside the input pipeline's worker processes and works on one image
at a time with PIL (which releases the GIL while it decodes and resamples). Randomness
comes in as an explicit ``numpy.random.Generator``, so an image's augmentation is a pure
function of its bytes and of the generator's seed.

The recipes are those of the DIML papers (and torchvision's ImageNet recipe they use):
train: random resized crop (scale ``(0.08, 1)``, ratio ``(3/4, 4/3)``) + horizontal flip;
eval: resize the shorter side to 256, centre crop 224.
"""
import io
import math
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image

_WHITE = (255, 255, 255)
# Images above this many pixels are refused (PIL's own bound against decompression bombs,
# 89.5 MP, e.g. 9,459 x 9,459): decoding one would take seconds and gigabytes, and the
# largest photos of the benchmarks have a few megapixels.
MAX_PIXELS = 89_478_485


class CorruptImageError(ValueError):
  """An image's bytes could not be decoded (truncated, corrupt or not an image)."""


class Normalization(NamedTuple):
  """Per-channel ``(x - mean) / std``, with ``x`` in pixel units ``[0, 255]``."""
  mean: tuple[float, float, float]
  std: tuple[float, float, float]


# ImageNet statistics as torchvision writes them, scaled to [0, 255].
IMAGENET = Normalization(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
# EfficientNet-Lite's own preprocessing: (x - 127) / 128.
EFFICIENTNET_LITE = Normalization(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))
NORMALIZATIONS = {"imagenet": IMAGENET, "efficientnet_lite": EFFICIENTNET_LITE}


def get_normalization(normalization: str | Normalization) -> Normalization:
  """Returns a :class:`Normalization` given itself or one of the names in ``NORMALIZATIONS``."""
  if isinstance(normalization, Normalization):
    return normalization
  if normalization not in NORMALIZATIONS:
    raise ValueError(
        f"normalization={normalization!r} is unknown: pass one of {sorted(NORMALIZATIONS)} "
        "or a Normalization(mean=..., std=...) in pixel units [0, 255].")
  return NORMALIZATIONS[normalization]


def normalize(images: np.ndarray, normalization: Normalization) -> np.ndarray:
  """Maps ``uint8 [..., w, 3]`` pixels to ``float32 (x - mean) / std``, same shape."""
  if images.ndim < 2 or images.shape[-1] != 3:
    raise ValueError(f"images must be [..., w, 3], got shape {images.shape}.")
  width = images.shape[-2]
  # Rows of w * 3 values against a tiled mean and scale: numpy vectorises the long inner
  # loop, 8x faster than broadcasting over a last axis of 3.
  mean = np.tile(np.asarray(normalization.mean, np.float32), width)
  scale = np.tile(1.0 / np.asarray(normalization.std, np.float32), width)
  rows = np.ascontiguousarray(images).reshape(-1, width * 3)
  out = np.subtract(rows, mean, dtype=np.float32)
  np.multiply(out, scale, out=out)
  return out.reshape(images.shape)


def open_image(data: bytes) -> Image.Image:
  """Opens encoded image bytes lazily (header only); raises :class:`CorruptImageError`,
  also for an image of more than :data:`MAX_PIXELS` pixels."""
  try:
    with warnings.catch_warnings():
      # PIL warns above its bound (and raises above twice it); such images are refused
      # below with one error each instead.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(data))
  except Image.DecompressionBombError as e:
    raise CorruptImageError(f"more than {MAX_PIXELS:,} pixels, refused: {e}") from e
  except (OSError, SyntaxError, ValueError) as e:
    raise CorruptImageError(f"cannot identify image: {e}") from e
  width, height = image.size
  if width * height > MAX_PIXELS:
    raise CorruptImageError(
        f"{width} x {height} pixels is more than {MAX_PIXELS:,}, refused (a decompression "
        f"bomb, or a poster to shrink first)")
  return image


def decode(image: Image.Image) -> Image.Image:
  """Decodes the pixel data of an opened image; raises :class:`CorruptImageError`."""
  try:
    image.load()
  except (OSError, SyntaxError, ValueError) as e:
    raise CorruptImageError(f"cannot decode image: {e}") from e
  return image


def to_rgb(image: Image.Image) -> Image.Image:
  """Decodes ``image`` and converts any PIL mode to RGB.

  Transparent images (RGBA, LA, palette with a transparent colour) are composited on
  white, so clip art keeps its look; grayscale, CMYK and the others go through PIL's
  conversion. Raises :class:`CorruptImageError` when the pixel data cannot be decoded.
  """
  decode(image)
  try:
    if image.mode == "RGB":
      return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
      rgba = image.convert("RGBA")
      canvas = Image.new("RGB", rgba.size, _WHITE)
      canvas.paste(rgba, mask=rgba.getchannel("A"))
      return canvas
    return image.convert("RGB")
  except (OSError, SyntaxError, ValueError) as e:
    raise CorruptImageError(f"cannot convert image to RGB: {e}") from e


def letterbox(image: Image.Image) -> Image.Image:
  """Pads an RGB image with white to a square, the image centred: ``[h, w] -> [m, m]``."""
  width, height = image.size
  side = max(width, height)
  if width == height:
    return image
  canvas = Image.new("RGB", (side, side), _WHITE)
  canvas.paste(image, ((side - width) // 2, (side - height) // 2))
  return canvas


def _letterboxed_crop(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
  """``box`` of ``letterbox(to_rgb(image))``, converting only the part of the image inside it.

  Args:
    image: an opened image of any mode, ``[h, w]``.
    box: ``(left, top, width, height)`` on the square canvas of side ``max(h, w)``.

  Returns:
    RGB ``[height, width]``; compositing and padding cost the crop's area, not the canvas's.
  """
  left, top, width, height = box
  image_w, image_h = image.size
  side = max(image_w, image_h)
  offset_x, offset_y = (side - image_w) // 2, (side - image_h) // 2
  x0, y0 = max(left - offset_x, 0), max(top - offset_y, 0)
  x1, y1 = min(left + width - offset_x, image_w), min(top + height - offset_y, image_h)
  decode(image)  # even when the crop holds only padding: a corrupt file must not pass
  canvas = Image.new("RGB", (width, height), _WHITE)
  if x1 > x0 and y1 > y0:
    canvas.paste(to_rgb(image.crop((x0, y0, x1, y1))), (x0 + offset_x - left, y0 + offset_y - top))
  return canvas


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
  """Draws a crop ``(left, top, crop_width, crop_height)`` as torchvision's RandomResizedCrop.

  Ten tries at an area fraction uniform in ``scale`` and a log-uniform aspect ratio in
  ``ratio``; if none fits, the largest central crop with its ratio clipped to ``ratio``.
  """
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def _draft_jpeg(image: Image.Image, shrink: float) -> float:
  """Lets libjpeg decode at 1/2, 1/4 or 1/8 size when ``shrink`` allows; returns the factor.

  ``shrink`` is how much smaller than the file the result may be (>= 1). Only JPEGs
  support this; for any other format nothing happens and the factor is 1.
  """
  if image.format != "JPEG" or shrink < 2:
    return 1.0
  width, height = image.size
  image.draft("RGB", (math.ceil(width / shrink), math.ceil(height / shrink)))
  return width / image.size[0]


def train_image(
    data: bytes,
    rng: np.random.Generator,
    *,
    image_size: int,
    letterbox_to_square: bool = False,
) -> np.ndarray:
  """Decodes and augments one training image.

  Random resized crop to ``image_size`` (bilinear, antialiased like torchvision's PIL
  path), then a horizontal flip with probability 1/2.

  Args:
    data: encoded image bytes (JPEG, PNG, ... in any PIL mode).
    rng: generator for the crop and the flip.
    image_size: side ``s`` of the output.
    letterbox_to_square: pad to a square with white before cropping (clip art).

  Returns:
    ``uint8 [s, s, 3]``.

  Raises:
    CorruptImageError: if ``data`` cannot be decoded.
  """
  image = open_image(data)
  size = (image_size, image_size)
  if letterbox_to_square:
    side = max(image.size)
    crop = _letterboxed_crop(image, random_resized_crop_box(side, side, rng))
    out = crop.resize(size, Image.BILINEAR, reducing_gap=3.0)
  else:
    left, top, w, h = random_resized_crop_box(*image.size, rng)
    # Decoding a JPEG at reduced size is the largest single saving; the crop keeps at
    # least `image_size` pixels on its shorter side so the result is unchanged in kind.
    factor = _draft_jpeg(image, min(w, h) / image_size)
    image = to_rgb(image)
    box = (left / factor, top / factor, (left + w) / factor, (top + h) / factor)
    out = image.resize(size, Image.BILINEAR, box=box, reducing_gap=3.0)
  if rng.random() < 0.5:
    out = out.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(out, dtype=np.uint8)


def eval_image(
    data: bytes,
    *,
    image_size: int,
    resize_size: int | None = None,
    letterbox_to_square: bool = False,
) -> np.ndarray:
  """Decodes one evaluation image: resize the shorter side, then centre crop.

  Args:
    data: encoded image bytes.
    image_size: side ``s`` of the output (224 in the papers).
    resize_size: shorter side after the resize; ``round(s * 256 / 224)`` when None.
    letterbox_to_square: pad to a square with white first (clip art).

  Returns:
    ``uint8 [s, s, 3]``.

  Raises:
    CorruptImageError: if ``data`` cannot be decoded.
  """
  resize_size = resize_size or int(round(image_size * 256 / 224))
  if resize_size < image_size:
    raise ValueError(f"resize_size={resize_size} must be >= image_size={image_size}.")
  image = open_image(data)
  if letterbox_to_square:
    image = letterbox(to_rgb(image))
  width, height = image.size
  shorter = min(width, height)
  # The crop of side `image_size` in resized pixels is `side` file pixels (computed
  # without a round trip through the scale: when resize_size == image_size it is
  # exactly the shorter side, never a hair more, which PIL would reject).
  side = shorter * image_size / resize_size
  left, top = max(0.0, (width - side) / 2), max(0.0, (height - side) / 2)
  factor = _draft_jpeg(image, shorter / resize_size)
  image = to_rgb(image)
  box = (left / factor, top / factor, (left + side) / factor, (top + side) / factor)
  out = image.resize((image_size, image_size), Image.BILINEAR, box=box, reducing_gap=3.0)
  return np.asarray(out, dtype=np.uint8)
