"""Dataset.subset: a smaller split with the same classes."""
import numpy as np
import pytest

from diml_jax import data


def test_subset_keeps_images_labels_and_classes():
  full = data.load("synthetic", "test", num_classes=6, images_per_class=4, image_size=32)
  sub = full.subset([5, 0, 11])
  assert len(sub) == 3 and sub.num_classes == full.num_classes
  np.testing.assert_array_equal(sub.labels, full.labels[[5, 0, 11]])
  assert sub.images[2] == full.images[11]
  assert sub.images.describe(0) == full.images.describe(5)
  with pytest.raises(ValueError, match="indices must be"):
    full.subset([len(full)])
