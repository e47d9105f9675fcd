"""The benchmark loaders on miniature archives: splits, labels, counts, layout errors."""
import importlib.util
import shutil

import numpy as np
import pytest

from diml_jax import data
from tests.data import fakes


def _check_contiguous(dataset):
  assert dataset.labels.dtype == np.int32
  np.testing.assert_array_equal(np.unique(dataset.labels), np.arange(dataset.num_classes))


@pytest.mark.parametrize("nested", [False, True])
def test_cub_splits_by_class_id(cub_root, nested):
  root = cub_root.parent if nested else cub_root  # the archive's own top folder, or inside it
  train = data.load("cub200", "train", root)
  test = data.load("cub200", "test", root)
  np.testing.assert_array_equal(train.class_ids, [1, 2, 3])
  np.testing.assert_array_equal(test.class_ids, [101, 102])
  assert len(train) == 3 * fakes.IMAGES_PER_CLASS and len(test) == 2 * fakes.IMAGES_PER_CLASS
  assert train.class_names == ("Bird_1", "Bird_2", "Bird_3")
  _check_contiguous(train)
  _check_contiguous(test)
  # Each image's folder is its class: the label and the path agree.
  for i in range(len(test)):
    assert f"{test.class_ids[test.labels[i]]:03d}.Bird_" in test.images.describe(i)


def test_cub_without_text_files_lists_folders(cub_root):
  with_lists = data.load("cub200", "train", cub_root)
  (cub_root / "images.txt").unlink()
  (cub_root / "image_class_labels.txt").unlink()
  listed = data.load("cub200", "train", cub_root)
  assert sorted(listed.images.paths) == sorted(with_lists.images.paths)
  np.testing.assert_array_equal(listed.class_ids, with_lists.class_ids)


def test_cub_wrong_root_lists_the_layout(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    data.load("cub200", "train", tmp_path / "nowhere")
  message = str(error.value)
  assert "classes.txt" in message and "images/NNN.Name/*.jpg" in message
  assert "does not exist" in message and "Get it: https://www.vision.caltech.edu" in message


def test_cars_official_mat(cars_official_root):
  train = data.load("cars196", "train", cars_official_root)
  test = data.load("cars196", "test", cars_official_root)
  np.testing.assert_array_equal(train.class_ids, [1, 2])
  np.testing.assert_array_equal(test.class_ids, [99, 100, 196])
  assert test.class_names == ("Make Model 99", "Make Model 100", "Make Model 196")
  assert len(train) == 2 * fakes.IMAGES_PER_CLASS
  assert len(test) == 3 * fakes.IMAGES_PER_CLASS
  _check_contiguous(test)
  assert test.images.describe(0).endswith("car_ims/000009.jpg")


def test_cars_folder_layout_first_98_sorted_classes_train(cars_folders_root):
  train = data.load("cars196", "train", cars_folders_root)
  test = data.load("cars196", "test", cars_folders_root)
  assert train.num_classes == 98 and test.num_classes == 2
  assert len(train) == 196 and len(test) == 4
  assert test.class_names == ("Make 098 Sedan 2012", "Make 099 Sedan 2012")
  np.testing.assert_array_equal(test.class_ids, [99, 100])


def test_cars_wrong_layout_names_both_layouts(tmp_path):
  (tmp_path / "car_ims").mkdir()
  with pytest.raises(FileNotFoundError) as error:
    data.load("cars196", "train", tmp_path)
  message = str(error.value)
  assert "cars_annos.mat" in message and "images/<class name>/*.jpg" in message
  assert "car_ims/" in message  # what was found


@pytest.mark.parametrize("info_files", [False, True])
def test_sop_lists(sop_root, info_files):
  if info_files:
    (sop_root / "Info_Files").mkdir()
    for split in ("train", "test"):
      shutil.move(sop_root / f"Ebay_{split}.txt", sop_root / "Info_Files" / f"Ebay_{split}.txt")
  train = data.load("sop", "train", sop_root)
  test = data.load("sop", "test", sop_root)
  np.testing.assert_array_equal(train.class_ids, [1, 2, 3])
  np.testing.assert_array_equal(test.class_ids, [4, 5])
  assert len(train) == 12 and len(test) == 8
  np.testing.assert_array_equal(test.super_class_ids, [1] * 4 + [2] * 4)
  assert test.class_names == ("bicycle_final/4", "chair_final/5")
  assert all(str(sop_root) in test.images.describe(i) for i in range(len(test)))


def test_sop_bad_header(sop_root):
  (sop_root / "Ebay_train.txt").write_text("1 1 1 bicycle_final/x.JPG\n")
  with pytest.raises(ValueError, match="header line 'image_id class_id super_class_id path'"):
    data.load("sop", "train", sop_root)


def test_sop_missing_lists(tmp_path):
  with pytest.raises(FileNotFoundError, match="Ebay_train.txt and Ebay_test.txt"):
    data.load("sop", "test", tmp_path)


def test_load_arguments(cub_root):
  with pytest.raises(ValueError, match="split='val'"):
    data.load("cub200", "val", cub_root)
  with pytest.raises(ValueError, match="name='imagenet'"):
    data.load("imagenet", "train", cub_root)
  with pytest.raises(data.DataNotFoundError, match="needs root=DIR") as error:
    data.load("sop", "train")
  assert "Ebay_train.txt" in str(error.value) and "Get it: https://" in str(error.value)


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is not None,
                    reason="tensorflow-datasets is installed (tests/data/test_tfds.py runs)")
def test_tfds_source_without_tfds_says_how_to_install(tmp_path):
  with pytest.raises(ImportError, match=r"pip install 'diml-jax\[tfds\]'"):
    data.load("cub200", "train", tmp_path, source="tfds")
