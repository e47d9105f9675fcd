"""The clip-art demo set: its rules on a fake package tree, and the real package when installed."""
import hashlib
import io
import os

import numpy as np
import pytest
from PIL import Image

from diml_jax import data
from diml_jax.data import openclipart
from tests.data import fakes


def _png(seed: int, size=(12, 8)) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels, "RGBA").save(buffer, "PNG")
  return buffer.getvalue()


@pytest.fixture
def clipart_root(tmp_path):
  """Four categories: a (22 images), b/c (21 + a copy + a link), b (19), d (20 + a poster)."""
  root = tmp_path / "png"
  seed = iter(range(1000))
  for category, count in [("a", 22), ("b/c", 21), ("b", 19), ("d", 20)]:
    (root / category).mkdir(parents=True, exist_ok=True)
    for k in range(count):
      (root / category / f"img_{k:02d}.png").write_bytes(_png(next(seed)))
  # Duplicates: an identical copy under a name that sorts last, and a link from elsewhere.
  original = (root / "b" / "c" / "img_00.png").read_bytes()
  (root / "b" / "c" / "zz_copy_of_00.png").write_bytes(original)
  os.symlink(root / "a" / "img_00.png", root / "b" / "c" / "link_to_a.png")
  (root / "d" / "poster.png").write_bytes(fakes.png_header(5000, 5000))
  return root


def test_rules_on_a_fake_tree(clipart_root):
  kept = openclipart.categories(str(clipart_root))
  # b has 19 distinct images (< 20); b/c has 21 without its copy and link; d loses the poster.
  assert list(kept) == ["a", "b/c", "d"]
  assert [len(v) for v in kept.values()] == [22, 21, 20]
  assert not any(p.endswith(("zz_copy_of_00.png", "link_to_a.png", "poster.png"))
                 for paths in kept.values() for p in paths)
  train = data.load("openclipart", "train", clipart_root)
  test = data.load("openclipart", "test", clipart_root)
  assert train.class_names == ("a", "d") and test.class_names == ("b/c",)
  np.testing.assert_array_equal(train.class_ids, [1, 3])
  assert train.letterbox and len(train) == 42 and len(test) == 21


def test_missing_package_says_how_to_install(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get install openclipart-png"):
    data.load("openclipart", "train", tmp_path / "missing")


_REAL = openclipart.DEFAULT_ROOT
needs_package = pytest.mark.skipif(
    not os.path.isdir(_REAL),
    reason=f"{_REAL} is absent: `sudo apt-get install openclipart-png` to test the real demo set")


@needs_package
def test_real_demo_set():
  train = data.load("openclipart", "train")
  test = data.load("openclipart", "test")
  assert 70 <= train.num_classes + test.num_classes <= 80
  assert abs(train.num_classes - test.num_classes) <= 1
  assert not set(train.class_names) & set(test.class_names)
  for split in (train, test):
    assert np.bincount(split.labels).min() >= 20
  paths = train.images.paths + test.images.paths
  digests = {hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}
  assert len(digests) == len(paths)  # no two identical images
  batch = next(data.eval_iterator(test, batch_size=8, image_size=32, num_workers=0,
                                  process_index=0, process_count=1))
  assert batch["mask"].all() and np.isfinite(batch["image"]).all()
