"""Tiny encoded images for the miniature archives of the tests."""
import io
import pathlib
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


# (item number, evaluation status of each of its images), in list order; the test items'
# query and gallery images are interleaved in the file as in the official list.
INSHOP_ITEMS = [
    (1, ["train"] * 4), (2, ["train"] * 4), (3, ["train"] * 4),
    (7, ["query", "gallery", "query", "gallery"]),
    (8, ["gallery", "query", "gallery", "gallery"]),
    (9, ["gallery"] * 4),  # gallery only: a distractor class for the queries
]


def write_inshop(root: pathlib.Path) -> pathlib.Path:
  """In-Shop's ``Eval/list_eval_partition.txt`` + ``img/`` of :data:`INSHOP_ITEMS` under
  ``root``: 12 training images (the corrupt ones among them), 3 queries, 9 gallery images."""
  rng = np.random.default_rng(4)
  rows = []
  for position, (item, statuses) in enumerate(INSHOP_ITEMS):
    folder = f"img/{'WOMEN' if item % 2 else 'MEN'}/Dresses/id_{item:08d}"
    (root / folder).mkdir(parents=True)
    for k, (blob, status) in enumerate(zip(class_images(rng, position), statuses)):
      (root / folder / f"0{k}_1_front.jpg").write_bytes(blob)
      rows.append(f"{folder}/0{k}_1_front.jpg  id_{item:08d}  {status}")
  (root / "Eval").mkdir()
  header = [str(len(rows)), "image_name item_id evaluation_status"]
  (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(header + rows) + "\n")
  return root
