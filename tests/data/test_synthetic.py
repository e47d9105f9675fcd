"""The synthetic set: deterministic, class-disjoint, and classes told apart by structure."""
import io

import numpy as np
from PIL import Image

from diml_jax import data
from diml_jax.data import synthetic


def _pixels(dataset, i):
  return np.asarray(Image.open(io.BytesIO(dataset.images[i])), np.float32)


def test_deterministic_and_class_disjoint():
  train = data.load("synthetic", "train", num_classes=6, images_per_class=3, image_size=32)
  again = data.load("synthetic", "train", num_classes=6, images_per_class=3, image_size=32)
  test = data.load("synthetic", "test", num_classes=6, images_per_class=3, image_size=32)
  assert train.images.blobs == again.images.blobs
  np.testing.assert_array_equal(train.class_ids, [1, 2, 3])
  np.testing.assert_array_equal(test.class_ids, [4, 5, 6])
  assert len(train) == 9 and not set(train.class_names) & set(test.class_names)
  other_seed = data.load("synthetic", "train", num_classes=6, images_per_class=3, image_size=32,
                         seed=1)
  assert other_seed.images.blobs != train.images.blobs


def test_arrangements_are_distinct_parts_in_distinct_cells():
  classes = synthetic.arrangements(40, seed=0)
  assert len(set(classes)) == 40
  for parts in classes:
    assert len({p.cell for p in parts}) == len(parts) == 3


def test_images_of_a_class_resemble_each_other_more_than_other_classes():
  dataset = data.load("synthetic", "train", num_classes=16, images_per_class=6, image_size=48)
  images = np.stack([_pixels(dataset, i) for i in range(len(dataset))]).reshape(len(dataset), -1)
  images -= images.mean(1, keepdims=True)
  images /= np.linalg.norm(images, axis=1, keepdims=True)
  similarity = images @ images.T
  same = dataset.labels[:, None] == dataset.labels[None, :]
  np.fill_diagonal(same, False)
  different = dataset.labels[:, None] != dataset.labels[None, :]
  assert similarity[same].mean() > similarity[different].mean() + 0.1
  # Jitter: no two images of a class are identical.
  assert len(set(dataset.images.blobs)) == len(dataset)
