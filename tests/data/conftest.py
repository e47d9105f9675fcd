"""Miniature archives in each official layout: a few classes of tiny images.

Every archive has, besides plain RGB JPEGs, one grayscale JPEG, one CMYK JPEG and one
corrupt file (a JPEG cut short), so loaders and the pipeline meet them all
(:func:`tests.data.fakes.class_images`).
"""
import pathlib

import numpy as np
import pytest

from tests.data.fakes import class_images
from tests.data.fakes import jpeg
from tests.data.fakes import write_inshop


@pytest.fixture
def cub_root(tmp_path: pathlib.Path) -> pathlib.Path:
  """``CUB_200_2011/`` with classes 1, 2, 3 (train) and 101, 102 (test), text files included."""
  root = tmp_path / "CUB_200_2011"
  rng = np.random.default_rng(0)
  classes, images, labels = [], [], []
  for position, class_id in enumerate([1, 2, 3, 101, 102]):
    folder = f"{class_id:03d}.Bird_{class_id}"
    classes.append(f"{class_id} {folder}")
    (root / "images" / folder).mkdir(parents=True)
    for k, blob in enumerate(class_images(rng, position)):
      (root / "images" / folder / f"bird_{k}.jpg").write_bytes(blob)
      images.append(f"{len(images) + 1} {folder}/bird_{k}.jpg")
      labels.append(f"{len(labels) + 1} {class_id}")
  (root / "classes.txt").write_text("\n".join(classes) + "\n")
  (root / "images.txt").write_text("\n".join(images) + "\n")
  (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
  return root


@pytest.fixture
def cars_official_root(tmp_path: pathlib.Path) -> pathlib.Path:
  """``cars_annos.mat`` + ``car_ims/`` with classes 1, 2 (train), 99, 100, 196 (test)."""
  scipy_io = pytest.importorskip("scipy.io")
  root = tmp_path / "cars"
  (root / "car_ims").mkdir(parents=True)
  rng = np.random.default_rng(1)
  class_ids = [1, 2, 99, 100, 196]
  rows = []
  for position, class_id in enumerate(class_ids):
    for blob in class_images(rng, position):
      name = f"car_ims/{len(rows) + 1:06d}.jpg"
      (root / name).write_bytes(blob)
      rows.append((name, 1, 2, 30, 20, class_id, len(rows) % 2))
  dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
           ("bbox_y2", "O"), ("class", "O"), ("test", "O")]
  annotations = np.array([rows], dtype=dtype)  # MATLAB's 1 x n struct array
  names = np.empty((1, 196), dtype=object)
  names[0, :] = [f"Make Model {i}" for i in range(1, 197)]
  scipy_io.savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": names})
  return root


@pytest.fixture
def cars_folders_root(tmp_path: pathlib.Path) -> pathlib.Path:
  """The DML community layout ``images/<class name>/`` with 100 classes, 2 images each."""
  root = tmp_path / "cars196"
  rng = np.random.default_rng(2)
  for k in range(100):
    folder = root / "images" / f"Make {k:03d} Sedan 2012"
    folder.mkdir(parents=True)
    for j in range(2):
      (folder / f"{j:05d}.jpg").write_bytes(jpeg(rng, size=(8, 8)))
  return root


SOP_SUPER = ["bicycle_final", "chair_final"]


@pytest.fixture
def sop_root(tmp_path: pathlib.Path) -> pathlib.Path:
  """``Stanford_Online_Products/`` with Ebay_train.txt (classes 1-3), Ebay_test.txt (4-5)."""
  root = tmp_path / "Stanford_Online_Products"
  rng = np.random.default_rng(3)
  lines = {"train": [], "test": []}
  image_id = 0
  for position, class_id in enumerate([1, 2, 3, 4, 5]):
    split = "train" if class_id <= 3 else "test"
    super_id = 1 + class_id % 2
    folder = root / SOP_SUPER[super_id - 1]
    folder.mkdir(parents=True, exist_ok=True)
    for k, blob in enumerate(class_images(rng, position)):
      image_id += 1
      name = f"{SOP_SUPER[super_id - 1]}/{class_id}00{k}_{k}.JPG"
      (root / name).write_bytes(blob)
      lines[split].append(f"{image_id} {class_id} {super_id} {name}")
  for split, rows in lines.items():
    header = "image_id class_id super_class_id path"
    (root / f"Ebay_{split}.txt").write_text("\n".join([header] + rows) + "\n")
  return root


@pytest.fixture
def inshop_root(tmp_path: pathlib.Path) -> pathlib.Path:
  """In-Shop's ``Eval/list_eval_partition.txt`` + ``img/`` with 3 train and 3 test items."""
  return write_inshop(tmp_path / "inshop")
