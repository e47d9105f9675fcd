"""In-Shop Clothes Retrieval (DeepFashion; Liu et al., CVPR 2016) from its official files.

Layout under ``root`` (the benchmark's folder, ``img.zip`` extracted)::

  Eval/list_eval_partition.txt    (or directly under root)
  img/WOMEN/Dresses/id_00000002/02_1_front.jpg ...   (or Img/img/..., img.zip extracted
                                                      where the download puts it)

``list_eval_partition.txt`` holds the number of images, the header line
``image_name item_id evaluation_status``, then one line per image:
``img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train``, with image paths
relative to the folder holding ``img/``. An item (one garment, ``id_00000002`` -> class
id 2) is a class.

The benchmark's split is by item: 25,882 training images of 3,997 items, and for testing
14,218 query images against 12,612 gallery images, of 3,985 other items. Splits:

* ``"train"``: the training images.
* ``"query"`` and ``"gallery"``: the two halves of the test set, labelled over the same
  classes (the 3,985 test items; a label means the same item in both).
* ``"test"``: the query images followed by the gallery images, as one
  :class:`~diml_jax.data.dataset.Dataset` whose ``is_query`` marks the queries. The
  benchmark's protocol ranks each query against the gallery only (never against other
  queries), as :mod:`diml_jax.eval_lib` evaluates it (the embeddings keep ``is_query``);
  evaluation code that ignores ``is_query`` ranks every test image against all others,
  which is a different, harder-to-compare number.

Class ids are the items' numbers, the labels are contiguous within ``"train"`` and within
the test items. This is the split the DML literature and the reference DGML code
(``datasets/in_shop.py``) read from the same file.
"""
import dataclasses

import numpy as np
from etils import epath

from diml_jax.data import dataset as dataset_lib

NAME = "inshop"
SPLITS = ("train", "test", "query", "gallery")
_LIST = "list_eval_partition.txt"
_HEADER = ["image_name", "item_id", "evaluation_status"]
_STATUSES = ("train", "query", "gallery")
# The layout under the root, and where to get it, for error messages.
EXPECTED = (
    f"Eval/{_LIST} (or {_LIST}): the image count, the header line "
    f"'{' '.join(_HEADER)}', then one line per image",
    "img/<gender>/<category>/id_NNNNNNNN/*.jpg (or Img/img/...)  the images",
)
SOURCE = ("https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html "
          "(the In-shop Clothes Retrieval Benchmark: img.zip and Eval/list_eval_partition.txt)")


def find_list(root: epath.Path) -> epath.Path:
  """``list_eval_partition.txt`` under ``root/Eval`` or ``root``."""
  for folder in (root / "Eval", root):
    if (folder / _LIST).exists():
      return folder / _LIST
  raise dataset_lib.DataNotFoundError(NAME, root, EXPECTED,
                                      dataset_lib.describe_contents(root), SOURCE)


def read_list(path: epath.Path) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Parses ``list_eval_partition.txt``.

  Args:
    path: the file.

  Returns:
    ``(paths, class_ids, status)``: image paths relative to the root, the item number of
    each image ``int64 [n]`` and its evaluation status ``[n]`` (``"train"``, ``"query"``
    or ``"gallery"``).

  Raises:
    ValueError: naming the file and line of a malformed count, header or row.
  """
  numbered = [(number, line.split()) for number, line in
              enumerate(path.read_text().splitlines(), start=1) if line.strip()]
  head = [fields for _, fields in numbered[:2]]
  if len(head) < 2 or len(head[0]) != 1 or not head[0][0].isdigit() or head[1] != _HEADER:
    raise ValueError(f"{NAME}: {path} must start with the number of images and the header"
                     f" line {' '.join(_HEADER)!r}.")
  rows = numbered[2:]
  if int(head[0][0]) != len(rows):
    raise ValueError(f"{NAME}: {path} announces {head[0][0]} images but lists {len(rows)};"
                     " the file is truncated or not the official one.")
  paths, class_ids, status = [], [], []
  for number, row in rows:
    if (len(row) != 3 or row[2] not in _STATUSES or not row[1].startswith("id_")
        or not row[1][3:].isdigit()):
      raise ValueError(f"{NAME}: {path} line {number} is not 'img/... id_NNNNNNNN"
                       f" train|query|gallery': {' '.join(row)!r}.")
    paths.append(row[0])
    class_ids.append(int(row[1][3:]))
    status.append(row[2])
  return paths, np.array(class_ids, np.int64), np.array(status)


def load(root: epath.PathLike, split: str) -> dataset_lib.Dataset:
  """Loads one split of In-Shop Clothes Retrieval.

  Args:
    root: the benchmark's folder (local path or ``gs://...``).
    split: ``"train"``, ``"query"``, ``"gallery"`` or ``"test"`` (queries then gallery,
      with ``is_query``); see the module docstring.

  Returns:
    The split's :class:`~diml_jax.data.dataset.Dataset`, images in list order within the
    queries and within the gallery; class names are the item ids (``"id_00000002"``).
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is unknown for {NAME}: use one of {SPLITS}.")
  root = epath.Path(root)
  paths, class_ids, status = read_list(find_list(root))
  images = next((folder for folder in (root, root / "Img") if (folder / "img").is_dir()), None)
  if images is None:
    raise dataset_lib.DataNotFoundError(NAME, root, EXPECTED,
                                      dataset_lib.describe_contents(root), SOURCE)
  if split == "train":
    keep = np.flatnonzero(status == "train")
  else:
    keep = np.concatenate([np.flatnonzero(status == "query"),
                           np.flatnonzero(status == "gallery")])
  dataset = dataset_lib.from_class_ids(
      NAME, "train" if split == "train" else "test",
      images=dataset_lib.Files(tuple(str(images / paths[i]) for i in keep)),
      class_ids=class_ids[keep],
      names_by_id={int(c): f"id_{c:08d}" for c in class_ids[keep]},
      is_query=None if split == "train" else status[keep] == "query")
  if split in ("train", "test"):
    return dataset
  part = dataset.subset(np.flatnonzero(dataset.is_query == (split == "query")))
  return dataclasses.replace(part, split=split)
