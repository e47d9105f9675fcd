"""Decoding, colour modes, the crop recipes and normalisation of one image."""
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from diml_jax.data import images
from tests.data import fakes


def _encode(image: Image.Image, fmt: str) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, fmt)
  return buffer.getvalue()


def test_to_rgb_composites_transparency_on_white():
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[:2] = [255, 0, 0, 255]    # opaque red top half
  rgba[2:] = [0, 0, 255, 0]      # fully transparent (blue) bottom half
  decoded = images.to_rgb(Image.open(io.BytesIO(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))))
  out = np.asarray(decoded)
  assert decoded.mode == "RGB"
  np.testing.assert_array_equal(out[:2], np.broadcast_to([255, 0, 0], (2, 4, 3)))
  np.testing.assert_array_equal(out[2:], np.full((2, 4, 3), 255))


def test_to_rgb_palette_with_transparency_and_la():
  palette = Image.new("P", (3, 3), 0)
  palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
  palette.putpixel((1, 1), 1)
  palette.info["transparency"] = 0
  out = np.asarray(images.to_rgb(Image.open(io.BytesIO(_encode(palette, "PNG")))))
  np.testing.assert_array_equal(out[1, 1], [10, 200, 30])
  np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # the transparent index
  la = Image.fromarray(np.array([[[50, 255], [50, 0]]], np.uint8), "LA")
  out = np.asarray(images.to_rgb(la))
  np.testing.assert_array_equal(out[0], [[50, 50, 50], [255, 255, 255]])


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGB"])
def test_jpeg_modes_decode_to_rgb(mode):
  data = fakes.jpeg(np.random.default_rng(0), mode)
  assert Image.open(io.BytesIO(data)).mode == mode
  out = images.train_image(data, np.random.default_rng(1), image_size=16)
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  if mode == "L":  # gray stays gray
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("blob", [b"not an image at all",
                                  fakes.jpeg(np.random.default_rng(0))[:200]])
def test_corrupt_bytes_raise(blob):
  with pytest.raises(images.CorruptImageError):
    images.train_image(blob, np.random.default_rng(0), image_size=8)
  with pytest.raises(images.CorruptImageError):
    images.eval_image(blob, image_size=8)


def test_letterbox_centres_on_white():
  image = Image.new("RGB", (6, 2), (0, 0, 0))
  out = np.asarray(images.letterbox(image))
  assert out.shape == (6, 6, 3)
  np.testing.assert_array_equal(out[2:4], 0)
  np.testing.assert_array_equal(out[:2], 255)
  np.testing.assert_array_equal(out[4:], 255)


def test_random_resized_crop_box_follows_torchvision_ranges():
  rng = np.random.default_rng(0)
  width, height = 300, 200
  boxes = np.array([images.random_resized_crop_box(width, height, rng) for _ in range(2000)])
  left, top, w, h = boxes.T
  assert (left >= 0).all() and (top >= 0).all()
  assert (left + w <= width).all() and (top + h <= height).all()
  area = w * h / (width * height)
  # Rounding to whole pixels moves area and ratio slightly outside the sampled ranges.
  assert area.min() >= 0.075 and area.max() <= 1.0
  ratio = w / h
  assert ratio.min() >= 0.74 and ratio.max() <= 1.35
  # log-ratio uniform: about half the crops are wider than tall.
  assert 0.4 < (ratio > 1).mean() < 0.6


def test_random_resized_crop_box_fallback_is_central():
  # A 1000 x 10 strip: no crop with ratio in [3/4, 4/3] fits, so the central fallback.
  rng = np.random.default_rng(0)
  left, top, w, h = images.random_resized_crop_box(1000, 10, rng)
  assert (h, w) == (10, round(10 * 4 / 3))
  assert left == (1000 - w) // 2 and top == 0


def test_eval_image_is_resize_then_centre_crop():
  # Reference: torchvision's order, resize the whole image then crop its centre.
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
  data = _encode(Image.fromarray(pixels), "PNG")
  out = images.eval_image(data, image_size=28, resize_size=32)
  resized = np.asarray(Image.fromarray(pixels).resize((48, 32), Image.BILINEAR)).astype(float)
  reference = resized[2:30, 10:38]
  assert out.shape == (28, 28, 3)
  assert np.abs(out - reference).mean() < 3.0


def test_eval_image_default_resize_is_256_over_224():
  data = _encode(Image.new("RGB", (50, 40), (10, 20, 30)), "PNG")
  out = images.eval_image(data, image_size=14)
  np.testing.assert_array_equal(out, np.broadcast_to([10, 20, 30], (14, 14, 3)))
  with pytest.raises(ValueError, match="resize_size=10 must be >= image_size=14"):
    images.eval_image(data, image_size=14, resize_size=10)


def test_letterboxed_eval_image_without_crop_margin_is_the_whole_picture():
  # The demo's setting (resize_size == image_size on letterboxed clip art): the crop is
  # the whole square. Sizes whose round trip through the scale is inexact once crashed
  # PIL ("box offset can't be negative").
  for width, height in [(211, 120), (97, 308), (616, 616), (333, 301)]:
    pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(pixels), "PNG")
    out = images.eval_image(data, image_size=160, resize_size=160, letterbox_to_square=True)
    square = images.letterbox(Image.fromarray(pixels))
    reference = np.asarray(square.resize((160, 160), Image.BILINEAR)).astype(float)
    assert np.abs(out - reference).mean() < 2.0, (width, height)


def test_jpeg_draft_keeps_the_picture():
  # A large smooth JPEG decoded at reduced size must look like the full-size decode.
  yy, xx = np.mgrid[0:800, 0:1200]
  pixels = np.stack([xx / 1200 * 255, yy / 800 * 255, np.full_like(xx, 128)], -1).astype(np.uint8)
  data = _encode(Image.fromarray(pixels), "JPEG")
  out = images.eval_image(data, image_size=56, resize_size=64)
  full = Image.open(io.BytesIO(data)).convert("RGB")
  scale = 64 / 800
  side = 56 / scale
  box = ((1200 - side) / 2, (800 - side) / 2, (1200 + side) / 2, (800 + side) / 2)
  reference = np.asarray(full.resize((56, 56), Image.BILINEAR, box=box)).astype(float)
  assert np.abs(out - reference).max() < 6


def test_train_image_flip_and_determinism():
  data = _encode(Image.fromarray(np.random.default_rng(0).integers(
      0, 256, (40, 40, 3), dtype=np.uint8)), "PNG")
  a = images.train_image(data, np.random.default_rng(5), image_size=20)
  b = images.train_image(data, np.random.default_rng(5), image_size=20)
  np.testing.assert_array_equal(a, b)
  outs = [images.train_image(data, np.random.default_rng(s), image_size=20) for s in range(8)]
  assert len({o.tobytes() for o in outs}) == 8


def test_normalize_matches_float64_reference():
  x = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
  out = images.normalize(x, images.IMAGENET)
  mean = np.array([0.485, 0.456, 0.406]) * 255
  std = np.array([0.229, 0.224, 0.225]) * 255
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, (x - mean) / std, rtol=1e-5, atol=1e-5)
  lite = images.normalize(x, images.get_normalization("efficientnet_lite"))
  np.testing.assert_allclose(lite, (x - 127.0) / 128.0, rtol=1e-6)
  with pytest.raises(ValueError, match="normalization='vgg'"):
    images.get_normalization("vgg")



@pytest.mark.parametrize("mode", ["RGBA", "P", "LA"])
def test_letterboxed_train_crop_matches_letterbox_then_crop(mode):
  # Reference: composite and pad the whole image, then crop and resize it (the plain way).
  rng = np.random.default_rng(0)
  rgba = rng.integers(0, 256, (30, 70, 4), dtype=np.uint8)
  rgba[..., 3] = np.where(rng.random((30, 70)) < 0.3, 0, 255)
  image = Image.fromarray(rgba, "RGBA")
  if mode == "P":
    image = image.convert("RGB").quantize(16)
    image.info["transparency"] = 0
  elif mode == "LA":
    image = image.convert("LA")
  data = _encode(image, "PNG")
  for seed in range(20):
    out = images.train_image(data, np.random.default_rng(seed), image_size=24,
                             letterbox_to_square=True)
    crop_rng = np.random.default_rng(seed)
    canvas = images.letterbox(images.to_rgb(Image.open(io.BytesIO(data))))
    left, top, w, h = images.random_resized_crop_box(70, 70, crop_rng)
    reference = canvas.crop((left, top, left + w, top + h)).resize((24, 24), Image.BILINEAR)
    if crop_rng.random() < 0.5:
      reference = reference.transpose(Image.FLIP_LEFT_RIGHT)
    np.testing.assert_allclose(out, np.asarray(reference), atol=1)


def test_letterboxed_corrupt_image_raises_even_if_the_crop_is_padding():
  # A 200 x 4 strip on a 200 x 200 canvas: most crops see padding only.
  pixels = np.random.default_rng(0).integers(0, 256, (4, 200, 4), dtype=np.uint8)
  data = _encode(Image.fromarray(pixels, "RGBA"), "PNG")
  truncated = data[:len(data) // 2]
  assert Image.open(io.BytesIO(truncated)).size == (200, 4)  # the header is intact
  for seed in range(10):
    with pytest.raises(images.CorruptImageError):
      images.train_image(truncated, np.random.default_rng(seed), image_size=8,
                         letterbox_to_square=True)


@pytest.mark.parametrize("side", [10_000, 20_000])  # PIL warns above 89.5 MP, raises above 179
def test_an_image_above_max_pixels_is_refused_with_one_error_and_no_warning(side):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    with pytest.raises(images.CorruptImageError, match=r"more than 89,478,485"):
      images.eval_image(fakes.png_header(side, side), image_size=8)
  assert images.open_image(fakes.png_header(9_000, 9_000)).size == (9_000, 9_000)
