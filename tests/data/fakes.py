"""Tiny encoded images for the miniature archives of the tests."""
import io
import struct
import zlib

import numpy as np
from PIL import Image

IMAGES_PER_CLASS = 4


def jpeg(rng: np.random.Generator, mode: str = "RGB", size=(40, 30)) -> bytes:
  """A small random JPEG in ``mode`` (RGB, L or CMYK)."""
  pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  image = Image.fromarray(pixels).convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, "JPEG", quality=90)
  return buffer.getvalue()


def class_images(rng: np.random.Generator, class_position: int) -> list[bytes]:
  """``IMAGES_PER_CLASS`` encoded images; class 0 holds the grayscale, CMYK and corrupt ones."""
  blobs = [jpeg(rng) for _ in range(IMAGES_PER_CLASS)]
  if class_position == 0:
    blobs[1] = jpeg(rng, "L")
    blobs[2] = jpeg(rng, "CMYK")
    blobs[3] = jpeg(rng)[:200]  # truncated: header intact, pixel data cut
  return blobs


def png_header(width: int, height: int) -> bytes:
  """A PNG claiming ``width x height``: signature, IHDR and an empty IDAT, what PIL reads
  to open an image (never enough to decode it)."""
  def chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"")
