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
  assert "does not exist" in message


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
  with pytest.raises(ValueError, match="needs root="):
    data.load("sop", "train")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is not None,
                    reason="tensorflow-datasets is installed (tests/data/test_tfds.py runs)")
def test_tfds_source_without_tfds_says_how_to_install(tmp_path):
  with pytest.raises(ImportError, match=r"pip install 'diml-jax\[tfds\]'"):
    data.load("cub200", "train", tmp_path, source="tfds")


def _item_of(dataset, i):
  """The item number in image i's path (``.../id_00000007/...``)."""
  return int(dataset.images.describe(i).split("/id_")[1].split("/")[0])


@pytest.mark.parametrize("list_at_root, images_in_img_folder", [
    (False, False), (True, False), (False, True)])
def test_inshop_splits(inshop_root, list_at_root, images_in_img_folder):
  if list_at_root:
    shutil.move(inshop_root / "Eval" / "list_eval_partition.txt", inshop_root)
  if images_in_img_folder:  # img.zip extracted in Img/, where the download has it
    (inshop_root / "Img").mkdir()
    shutil.move(inshop_root / "img", inshop_root / "Img" / "img")
  train = data.load("inshop", "train", inshop_root)
  test = data.load("inshop", "test", inshop_root)
  np.testing.assert_array_equal(train.class_ids, [1, 2, 3])
  assert len(train) == 12 and train.is_query is None and train.split == "train"
  assert train.class_names == ("id_00000001", "id_00000002", "id_00000003")
  _check_contiguous(train)
  # Test: the 3 queries in list order, then the 9 gallery images in list order.
  np.testing.assert_array_equal(test.class_ids, [7, 8, 9])
  np.testing.assert_array_equal(test.is_query, [True] * 3 + [False] * 9)
  assert [_item_of(test, i) for i in range(len(test))] == [7, 7, 8] + [7, 7, 8, 8, 8] + [9] * 4
  assert test.images.describe(0).endswith("id_00000007/00_1_front.jpg")
  assert test.images[0] and train.images[5]  # the files are where the paths say
  assert test.images.describe(3).endswith("id_00000007/01_1_front.jpg")
  _check_contiguous(test)
  for dataset in (train, test):  # each label is its image's item
    for i in range(len(dataset)):
      assert dataset.class_ids[dataset.labels[i]] == _item_of(dataset, i)


def test_inshop_query_and_gallery_share_labels(inshop_root):
  test = data.load("inshop", "test", inshop_root)
  query = data.load("inshop", "query", inshop_root)
  gallery = data.load("inshop", "gallery", inshop_root)
  assert (query.split, gallery.split) == ("query", "gallery")
  assert (len(query), len(gallery)) == (3, 9)
  assert query.is_query.all() and not gallery.is_query.any()
  # The same classes on both sides (9 is in the gallery only), so labels compare.
  np.testing.assert_array_equal(query.class_ids, [7, 8, 9])
  np.testing.assert_array_equal(gallery.class_ids, [7, 8, 9])
  np.testing.assert_array_equal(query.labels, [0, 0, 1])
  np.testing.assert_array_equal(gallery.labels, [0, 0, 1, 1, 1, 2, 2, 2, 2])
  assert [query.images.describe(i) for i in range(3)] == [test.images.describe(i)
                                                          for i in range(3)]
  # A subset keeps is_query in step with the images.
  np.testing.assert_array_equal(test.subset([4, 1, 0]).is_query, [False, True, True])
  # The pipeline reads them like any split (the corrupt image is in the train items).
  batch = next(iter(data.eval_iterator(gallery, batch_size=16, image_size=16,
                                       resize_size=16, num_workers=0)))
  assert batch["image"].shape == (16, 16, 16, 3) and batch["mask"].sum() == 9


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines[1:], r"must start with the number of images and the header line"
                              r" 'image_name item_id evaluation_status'"),
    (lambda lines: ["99"] + lines[1:], r"announces 99 images but lists 24"),
    (lambda lines: lines[:5] + [lines[5].replace("train", "val")] + lines[6:],
     r"line 6 is not 'img/\.\.\. id_NNNNNNNN train\|query\|gallery'"),
    (lambda lines: lines[:3] + [lines[3].replace("id_00000001", "item1")] + lines[4:],
     r"line 4 is not"),
])
def test_inshop_malformed_list(inshop_root, edit, message):
  path = inshop_root / "Eval" / "list_eval_partition.txt"
  path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
  with pytest.raises(ValueError, match=message):
    data.load("inshop", "train", inshop_root)


def test_inshop_wrong_layout_and_split(inshop_root, tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    data.load("inshop", "train", tmp_path / "nowhere")
  assert "Eval/list_eval_partition.txt" in str(error.value) and "does not exist" in str(error.value)
  shutil.rmtree(inshop_root / "img")
  with pytest.raises(FileNotFoundError, match=r"img/<gender>/<category>/id_NNNNNNNN/\*\.jpg"
                                              r" \(or Img/img/\.\.\.\)"):
    data.load("inshop", "test", inshop_root)
  with pytest.raises(ValueError, match=r"split='val' is unknown for inshop: use one of"
                                       r" \('train', 'test', 'query', 'gallery'\)"):
    data.load("inshop", "val", inshop_root)
