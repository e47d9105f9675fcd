"""The class-balanced sampler: balance, determinism, resumption, host shards."""
import collections

import numpy as np
import pytest

from diml_jax.data import sampler

# 30 classes of unequal sizes (1 to 12 images), shuffled so no order is assumed.
_SIZES = np.arange(30) % 12 + 1
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(30), _SIZES)).astype(np.int32)


def test_class_index_groups_by_label():
  index = sampler.class_index(LABELS)
  assert index.num_classes == 30
  for label in range(30):
    members = index.members(label)
    assert len(members) == _SIZES[label]
    assert (LABELS[members] == label).all()
  with pytest.raises(ValueError, match="contiguous"):
    sampler.class_index(np.array([0, 2]))


@pytest.mark.parametrize("images_per_class", [2, 4])
def test_batches_are_class_balanced(images_per_class):
  index = sampler.class_index(LABELS)
  for step in range(50):
    batch = sampler.batch_indices(index, step=step, seed=3, batch_size=24,
                                  images_per_class=images_per_class)
    assert batch.shape == (24,)
    labels = LABELS[batch].reshape(-1, images_per_class)
    # Rows of m images share a class; classes are distinct across rows.
    assert (labels == labels[:, :1]).all()
    assert len(set(labels[:, 0])) == 24 // images_per_class
    # Without replacement whenever the class is large enough.
    for row in batch.reshape(-1, images_per_class):
      if _SIZES[LABELS[row[0]]] >= images_per_class:
        assert len(set(row)) == images_per_class


def test_batches_depend_on_seed_and_step_only():
  index = sampler.class_index(LABELS)
  run = [sampler.batch_indices(index, step=t, seed=7, batch_size=12) for t in range(20)]
  # A run resumed at step 13 draws the same batches as the uninterrupted run.
  resumed = [sampler.batch_indices(index, step=t, seed=7, batch_size=12) for t in range(13, 20)]
  for a, b in zip(run[13:], resumed):
    np.testing.assert_array_equal(a, b)
  assert len({b.tobytes() for b in run}) == 20
  other_seed = sampler.batch_indices(index, step=0, seed=8, batch_size=12)
  assert not np.array_equal(run[0], other_seed)


def test_every_class_is_drawn_evenly():
  index = sampler.class_index(LABELS)
  counts = collections.Counter()
  for step in range(400):
    counts.update(LABELS[sampler.batch_indices(index, step=step, seed=0, batch_size=20)[::2]])
  # 400 batches x 10 classes over 30 classes: 133 each in expectation.
  assert len(counts) == 30
  assert min(counts.values()) > 100 and max(counts.values()) < 170


def test_host_rows_partition_the_global_batch():
  index = sampler.class_index(LABELS)
  batch = sampler.batch_indices(index, step=5, seed=0, batch_size=24)
  shards = [batch[sampler.host_rows(24, p, 4)] for p in range(4)]
  assert all(len(s) == 6 for s in shards)
  np.testing.assert_array_equal(np.concatenate(shards), batch)
  with pytest.raises(ValueError, match="divisible by process_count=5"):
    sampler.host_rows(24, 0, 5)
  with pytest.raises(ValueError, match="process_index=4"):
    sampler.host_rows(24, 4, 4)


def test_batch_size_errors():
  index = sampler.class_index(LABELS)
  with pytest.raises(ValueError, match="multiple of images_per_class=4"):
    sampler.batch_indices(index, step=0, seed=0, batch_size=10, images_per_class=4)
  with pytest.raises(ValueError, match="needs 31 distinct classes"):
    sampler.batch_indices(index, step=0, seed=0, batch_size=62)
