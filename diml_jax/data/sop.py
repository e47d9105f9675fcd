"""Stanford Online Products (Oh Song et al. 2016) from its official archive.

Layout under ``root`` (``Stanford_Online_Products.zip`` extracted)::

  Ebay_train.txt, Ebay_test.txt   "image_id class_id super_class_id path" (one header line)
  bicycle_final/111085122871_0.JPG ...

The two lists may also sit in ``root/Info_Files/`` (the layout of several DML code bases);
image paths are relative to ``root`` either way. The lists are the DML split: 11,318 train
classes / 59,551 images, 11,316 test classes / 60,502 images.
"""
import numpy as np
from etils import epath

from diml_jax.data import dataset as dataset_lib

NAME = "sop"
# The layout under the root, and where to get it, for error messages.
EXPECTED = (
    "Ebay_train.txt and Ebay_test.txt (or Info_Files/Ebay_*.txt), lines "
    "'image_id class_id super_class_id path'",
    "<super class>_final/*.JPG  the images, paths relative to the root",
)
SOURCE = "https://cvgl.stanford.edu/projects/lifted_struct/ (Stanford_Online_Products.zip, 2.9 GB)"
_HEADER = ["image_id", "class_id", "super_class_id", "path"]


def read_list(path: epath.Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Parses an ``Ebay_*.txt`` list into class ids ``[n]``, super-class ids ``[n]`` and paths."""
  lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
  if not lines or lines[0] != _HEADER:
    raise ValueError(f"{NAME}: {path} must start with the header line {' '.join(_HEADER)!r}.")
  rows = lines[1:]
  bad = next((i for i, row in enumerate(rows, start=2) if len(row) != 4), None)
  if bad is not None:
    raise ValueError(f"{NAME}: {path} line {bad} does not have 4 fields: {rows[bad - 2]}.")
  class_ids = np.array([int(r[1]) for r in rows], np.int64)
  super_ids = np.array([int(r[2]) for r in rows], np.int64)
  return class_ids, super_ids, [r[3] for r in rows]


def find_list(root: epath.Path, split: str) -> epath.Path:
  """``Ebay_<split>.txt`` under ``root`` or ``root/Info_Files``."""
  for folder in (root, root / "Info_Files"):
    if (folder / f"Ebay_{split}.txt").exists():
      return folder / f"Ebay_{split}.txt"
  raise dataset_lib.DataNotFoundError(NAME, root, EXPECTED,
                                      dataset_lib.describe_contents(root), SOURCE)


def load(root: epath.PathLike, split: str) -> dataset_lib.Dataset:
  """Loads one split of SOP, as listed by ``Ebay_<split>.txt``.

  Args:
    root: the extracted archive (local path or ``gs://...``).
    split: ``"train"`` or ``"test"``.

  Returns:
    The split's :class:`~diml_jax.data.dataset.Dataset` in list order; class names are
    ``"<super class folder>/<class id>"`` and ``super_class_ids`` holds SOP's 12 super classes.
  """
  dataset_lib.check_split(split)
  root = epath.Path(root)
  class_ids, super_ids, paths = read_list(find_list(root, split))
  names = {int(c): f"{p.split('/', 1)[0]}/{c}" for c, p in zip(class_ids, paths)}
  return dataset_lib.from_class_ids(
      NAME, split,
      images=dataset_lib.Files(tuple(str(root / p) for p in paths)),
      class_ids=class_ids,
      names_by_id=names,
      super_class_ids=super_ids)
