"""TFDS sources, built for real: our SOP builder from a miniature archive, TFDS's own
caltech_birds2011 and cars196 builders (their features) from fake examples.

Skipped without ``tensorflow_datasets`` (``pip install 'diml-jax[tfds]'``).
"""
import io

import numpy as np
import pytest
from PIL import Image

from diml_jax import data
from tests.data import fakes

tfds = pytest.importorskip(
    "tensorflow_datasets",
    reason="tensorflow-datasets is not installed: pip install 'diml-jax[tfds]'")


@pytest.fixture
def sop_tfds_dir(sop_root, tmp_path):
  from diml_jax.data import sop_tfds  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / "tfds"
  info = sop_tfds.build(str(sop_root), str(data_dir))
  assert info.splits["train"].num_examples == 12 and info.splits["test"].num_examples == 8
  return data_dir


@pytest.mark.parametrize("split", ["train", "test"])
def test_sop_builder_matches_the_archive(sop_root, sop_tfds_dir, split):
  from_tfds = data.load("sop", split, sop_tfds_dir, source="tfds")
  from_files = data.load("sop", split, sop_root)
  assert len(from_tfds) == len(from_files)
  np.testing.assert_array_equal(from_tfds.class_ids, from_files.class_ids)
  # Same bytes and label for each file, whatever order TFDS stored them in.
  by_path = {from_files.images.describe(i).split(str(sop_root) + "/")[1]: i
             for i in range(len(from_files))}
  for i in range(len(from_tfds)):
    j = by_path[from_tfds.images.describe(i).split(" ", 1)[1]]
    assert from_tfds.images[i] == from_files.images[j]
    assert from_tfds.labels[i] == from_files.labels[j]


def test_tfds_source_feeds_the_pipeline(sop_tfds_dir):
  train = data.load("sop", "train", sop_tfds_dir, source="tfds")
  iterator = data.train_iterator(train, batch_size=4, image_size=16, num_workers=0,
                                 num_steps=6, process_index=0, process_count=1)
  batches = list(iterator)
  assert len(batches) == 6 and batches[0]["image"].shape == (4, 16, 16, 3)
  # The miniature archive's truncated JPEG went into TFDS as it was, and is skipped.
  assert all("_3.JPG" in name for name in iterator.skipped)


def _build_fake(builder_name: str, data_dir, example, labels):
  """Builds TFDS's own ``builder_name`` (its real features) from fake examples, no download.

  Each of TFDS's two splits gets one example of each of ``labels`` (TFDS's 0-based labels).
  """
  real = tfds.builder_cls(builder_name)

  class Fake(real, skip_registration=True):
    name = builder_name

    def _split_generators(self, dl_manager):
      return {split: self._fake(part) for part, split in enumerate(("train", "test"))}

    def _fake(self, part):
      rng = np.random.default_rng(part)
      for k, label in enumerate(labels):
        yield f"{part}_{k}", example(rng, label, f"{part}_{k:02d}.jpg")

  Fake(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def _bird(rng, label, filename):
  mask = io.BytesIO()
  Image.new("L", (40, 30)).save(mask, "PNG")
  return {"image": io.BytesIO(fakes.jpeg(rng)), "label": label, "label_name": f"bird {label + 1}",
          "bbox": tfds.features.BBox(0.1, 0.1, 0.5, 0.5), "image/filename": filename,
          "segmentation_mask": mask}


def _car(rng, label, filename):
  return {"image": io.BytesIO(fakes.jpeg(rng)), "label": label, "id": filename,
          "bbox": tfds.features.BBox(0.1, 0.1, 0.5, 0.5)}


@pytest.mark.parametrize("name,builder,example,num_train,labels", [
    ("cub200", "caltech_birds2011", _bird, 100, [0, 99, 100, 199, 5, 150]),
    ("cars196", "cars196", _car, 98, [0, 97, 98, 195, 5, 150])])
def test_class_disjoint_split_over_both_tfds_splits(name, builder, example, num_train, labels,
                                                    tmp_path):
  _build_fake(builder, tmp_path, example, labels)
  train = data.load(name, "train", tmp_path, source="tfds")
  test = data.load(name, "test", tmp_path, source="tfds")
  expected_train = sorted({label + 1 for label in labels if label < num_train})
  np.testing.assert_array_equal(train.class_ids, expected_train)
  assert (test.class_ids > num_train).all()
  # Both TFDS splits contribute: each fake label occurs once per split.
  assert len(train) == 2 * len(expected_train)
  assert len(train) + len(test) == 2 * len(labels)
  assert {train.images.describe(i).split("[")[0] for i in range(len(train))} == {
      f"{builder}/train", f"{builder}/test"}
  if name == "cub200":
    assert train.class_names[0] == "bird 1"
  batch = next(data.eval_iterator(train, batch_size=4, image_size=8, num_workers=0,
                                  process_index=0, process_count=1))
  assert batch["mask"].all()
