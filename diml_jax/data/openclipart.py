"""The demo set: real clip art from Debian's ``openclipart-png`` package.

The package (``apt-get install openclipart-png``) puts about 8,100 PNGs under
``/usr/share/openclipart/png/<category>/<sub category>/...``, many of them twice: as
symbolic links between categories, or as identical files under two names. Here

* a category is a folder (``"animals/birds"``) with the images directly inside it;
* byte-identical images are kept once (SHA-256), in the category of the path that sorts
  first after resolving links;
* images above ``max_pixels`` (4 megapixels) are left out: the package has 14 posters of
  up to 21,000 x 30,000 pixels, each taking seconds to decode (most images are < 1,000 px);
* categories with at least ``min_images`` (20) distinct images are kept (75 categories,
  6,298 images with the Debian package of 2026);
* the split is class-disjoint and deterministic: the kept categories sorted by name,
  those at even positions (0, 2, 4, ...) train, those at odd positions test.

Images are RGBA or palette with transparency: they are composited on white and
letterboxed to a square (``Dataset.letterbox``) by the input pipeline.
"""
import collections
import hashlib
import os
import struct

from etils import epath

from diml_jax.data import dataset as dataset_lib

NAME = "openclipart"
DEFAULT_ROOT = "/usr/share/openclipart/png"
# The layout under the root, and where to get it, for error messages.
EXPECTED = ("<category>/[<sub category>/]*.png  the layout of Debian's openclipart-png",)
SOURCE = ("sudo apt-get install openclipart-png (then root is /usr/share/openclipart/png), "
          "or use the 'synthetic' data set")
MIN_IMAGES = 20
MAX_PIXELS = 4_000_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _png_pixels(path: str) -> int:
  """Width x height from a PNG's IHDR chunk (0 if not a PNG: the decoder will judge it)."""
  with open(path, "rb") as f:
    head = f.read(24)
  if len(head) < 24 or not head.startswith(_PNG_SIGNATURE):
    return 0
  width, height = struct.unpack(">II", head[16:24])
  return width * height


def distinct_images(root: str) -> dict[str, str]:
  """Maps each distinct PNG under ``root`` to its category.

  Returns:
    ``{resolved path: category}`` with one entry per distinct content; the category is the
    folder of the path relative to ``root``.
  """
  real_root = os.path.realpath(root)
  paths = set()
  for folder, _, files in os.walk(root):
    paths.update(os.path.realpath(os.path.join(folder, f)) for f in files
                 if f.lower().endswith(".png"))
  # Only files of equal size can be identical, so only those are hashed.
  by_size = collections.defaultdict(list)
  for path in paths:
    by_size[os.path.getsize(path)].append(path)
  keep = []
  for same_size in by_size.values():
    if len(same_size) == 1:
      keep += same_size
      continue
    first_by_hash = {}
    for path in sorted(same_size):
      first_by_hash.setdefault(_sha256(path), path)
    keep += first_by_hash.values()
  return {p: os.path.dirname(os.path.relpath(p, real_root)) for p in sorted(keep)}


def categories(root: str = DEFAULT_ROOT, min_images: int = MIN_IMAGES,
               max_pixels: int = MAX_PIXELS) -> dict[str, list[str]]:
  """The kept categories, sorted by name, each with its sorted list of distinct image paths."""
  if not os.path.isdir(root):
    raise dataset_lib.DataNotFoundError(NAME, root, EXPECTED,
                                        dataset_lib.describe_contents(epath.Path(root)), SOURCE)
  by_category = collections.defaultdict(list)
  for path, category in distinct_images(root).items():
    if _png_pixels(path) <= max_pixels:
      by_category[category].append(path)
  kept = {c: sorted(p) for c, p in sorted(by_category.items()) if len(p) >= min_images}
  if len(kept) < 2:
    raise dataset_lib.DataNotFoundError(
        NAME, root, EXPECTED, f"{len(kept)} folders with >= {min_images} distinct PNGs",
        SOURCE)
  return kept


def load(root: str | None, split: str, *, min_images: int = MIN_IMAGES,
         max_pixels: int = MAX_PIXELS) -> dataset_lib.Dataset:
  """Loads one split of the clip-art demo set.

  Args:
    root: the package's ``png`` folder; ``/usr/share/openclipart/png`` when None.
    split: ``"train"`` (categories at even positions by name) or ``"test"`` (odd).
    min_images: least number of distinct images a category needs to be kept.
    max_pixels: images with more pixels are left out.

  Returns:
    The split's :class:`~diml_jax.data.dataset.Dataset`; class ids are 1-based positions
    among all kept categories, class names the category folders.
  """
  dataset_lib.check_split(split)
  kept = categories(root or DEFAULT_ROOT, min_images, max_pixels)
  paths, class_ids, names = [], [], {}
  for class_id, (category, files) in enumerate(kept.items(), start=1):
    if (class_id - 1) % 2 == (0 if split == "train" else 1):
      paths += files
      class_ids += [class_id] * len(files)
      names[class_id] = category
  return dataset_lib.from_class_ids(
      NAME, split, images=dataset_lib.Files(tuple(paths)), class_ids=class_ids,
      names_by_id=names, letterbox=True)
