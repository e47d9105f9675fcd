"""Training and evaluation pipelines on a miniature CUB archive.

The archive's train split has classes 1, 2, 3 with four images each; class 1 holds a
grayscale JPEG, a CMYK JPEG and a truncated (corrupt) one.
"""
import logging

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from diml_jax import data

SIZE = 16


def _train(dataset, **kwargs):
  options = dict(batch_size=4, images_per_class=2, image_size=SIZE, seed=0, num_workers=0,
                 process_index=0, process_count=1)
  options.update(kwargs)
  return data.train_iterator(dataset, **options)


def _take(iterator, n):
  batches = [next(iterator) for _ in range(n)]
  iterator.close()
  return batches


def test_train_batches_shapes_and_balance(cub_root):
  train = data.load("cub200", "train", cub_root)
  for batch in _take(_train(train), 6):
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    labels = batch["label"].reshape(2, 2)
    assert (labels[:, 0] == labels[:, 1]).all() and labels[0, 0] != labels[1, 0]
    # ImageNet normalisation of uint8 pixels stays within [-2.2, 2.7].
    assert batch["image"].min() >= -2.2 and batch["image"].max() <= 2.7


def test_resume_continues_with_the_same_batches(cub_root):
  train = data.load("cub200", "train", cub_root)
  uninterrupted = _take(_train(train, seed=4), 7)
  resumed = _take(_train(train, seed=4, start_step=4), 3)
  for a, b in zip(uninterrupted[4:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(uninterrupted[0]["image"], uninterrupted[1]["image"])


def test_host_shards_put_together_are_the_global_batch(cub_root):
  train = data.load("cub200", "train", cub_root)
  whole = _take(_train(train, batch_size=6, seed=1), 3)
  shards = [_take(_train(train, batch_size=6, seed=1, process_index=p, process_count=3), 3)
            for p in range(3)]
  for step in range(3):
    for key in ("image", "label"):
      assert shards[0][step][key].shape[0] == 2
      joined = np.concatenate([shards[p][step][key] for p in range(3)])
      np.testing.assert_array_equal(joined, whole[step][key])


def test_worker_processes_give_the_same_batches(cub_root):
  train = data.load("cub200", "train", cub_root)
  threads = _take(_train(train, num_workers=0, num_steps=4), 4)
  processes = _take(_train(train, num_workers=2, num_steps=4), 4)
  for a, b in zip(threads, processes):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_corrupt_image_is_skipped_counted_and_reported(cub_root, caplog):
  train = data.load("cub200", "train", cub_root)
  corrupt = str(cub_root / "images" / "001.Bird_1" / "bird_3.jpg")
  iterator = _train(train, num_steps=30)
  with caplog.at_level(logging.WARNING, logger="diml_jax.data.pipeline"):
    for batch in iterator:
      labels = batch["label"].reshape(2, 2)  # still two images of each class
      assert (labels[:, 0] == labels[:, 1]).all()
  # 12 images / batch 4 = 3 steps an epoch; 30 steps draw class 1 many times.
  assert set(iterator.skipped) == {corrupt}
  assert iterator.step == 30
  reports = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
  assert reports and all("cub200/train, epoch" in r and corrupt in r for r in reports)
  reported = sum(int(r.split("skipped ")[1].split(" ")[0]) for r in reports)
  assert reported == iterator.skipped[corrupt]


def test_corrupt_image_raises_when_asked(cub_root):
  train = data.load("cub200", "train", cub_root)
  iterator = _train(train, num_steps=30, on_corrupt="raise")
  with pytest.raises(data.CorruptImageError, match=r"001.Bird_1/bird_3.jpg"):
    for _ in iterator:
      pass


def test_eval_batches_fixed_order_padding_and_mask(cub_root):
  test = data.load("cub200", "test", cub_root)  # 8 images
  batches = list(data.eval_iterator(test, batch_size=5, image_size=SIZE, num_workers=0,
                                    process_index=0, process_count=1))
  assert len(batches) == 2
  for batch in batches:
    assert batch["image"].shape == (5, SIZE, SIZE, 3) and batch["mask"].dtype == bool
  np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]),
                                [0, 1, 2, 3, 4, 5, 6, 7, -1, -1])
  np.testing.assert_array_equal(batches[1]["mask"], [True, True, True, False, False])
  np.testing.assert_array_equal(batches[1]["label"][3:], [-1, -1])
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:8], test.labels)
  assert (batches[1]["image"][3:] == 0).all()
  # Evaluation is deterministic: a second pass gives the same pixels.
  again = list(data.eval_iterator(test, batch_size=5, image_size=SIZE, num_workers=0,
                                  process_index=0, process_count=1))
  np.testing.assert_array_equal(again[0]["image"], batches[0]["image"])


def test_eval_masks_a_corrupt_image(cub_root):
  train = data.load("cub200", "train", cub_root)
  corrupt = train.images.paths.index(str(cub_root / "images" / "001.Bird_1" / "bird_3.jpg"))
  iterator = data.eval_iterator(train, batch_size=6, image_size=SIZE, num_workers=0,
                                process_index=0, process_count=1)
  mask = np.concatenate([b["mask"] for b in iterator])
  np.testing.assert_array_equal(np.flatnonzero(~mask), [corrupt])
  assert sum(iterator.skipped.values()) == 1


def test_eval_host_shards(cub_root):
  test = data.load("cub200", "test", cub_root)
  shards = [list(data.eval_iterator(test, batch_size=4, image_size=SIZE, num_workers=0,
                                    process_index=p, process_count=2)) for p in range(2)]
  indices = np.concatenate([np.concatenate([shards[0][s]["index"], shards[1][s]["index"]])
                            for s in range(2)])
  np.testing.assert_array_equal(indices, np.arange(8))


def test_device_prefetch_shards_over_the_mesh(cub_root):
  assert jax.device_count() == 8  # tests/conftest.py
  train = data.load("cub200", "train", cub_root)
  sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
  options = dict(batch_size=8, images_per_class=4, num_steps=3)
  host = _take(_train(train, **options), 3)
  on_devices = list(data.device_prefetch(_train(train, **options), sharding))
  assert len(on_devices) == 3
  for a, b in zip(host, on_devices):
    assert b["image"].sharding == sharding and b["label"].sharding == sharding
    assert len(b["image"].addressable_shards) == 8
    assert b["image"].addressable_shards[0].data.shape == (1, SIZE, SIZE, 3)
    np.testing.assert_array_equal(np.asarray(b["image"]), a["image"])
    np.testing.assert_array_equal(np.asarray(b["label"]), a["label"])


def test_argument_errors(cub_root):
  train = data.load("cub200", "train", cub_root)
  with pytest.raises(ValueError, match="needs 4 distinct classes"):
    _train(train, batch_size=8, images_per_class=2)
  with pytest.raises(ValueError, match="on_corrupt='ignore'"):
    _train(train, on_corrupt="ignore")
  with pytest.raises(ValueError, match="divisible by process_count=3"):
    _train(train, batch_size=4, process_count=3, process_index=0)
  with pytest.raises(ValueError, match="normalization='caffe'"):
    _train(train, normalization="caffe")
