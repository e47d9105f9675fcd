"""CUB-200-2011 from its official archive (``CUB_200_2011.tgz``, extracted).

Layout under ``root`` (or ``root/CUB_200_2011``)::

  classes.txt                 "1 001.Black_footed_Albatross"
  images.txt                  "1 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
  image_class_labels.txt      "1 1"
  images/NNN.Name/*.jpg

``images.txt`` and ``image_class_labels.txt`` are read when present (no directory listing,
which is slow on GCS); otherwise the class folders are listed. DML split (Wah et al. 2011
classes; Oh Song et al. 2016 protocol): classes 1-100 train, 101-200 test.
"""
import numpy as np
from etils import epath

from diml_jax.data import dataset as dataset_lib

NAME = "cub200"
NUM_TRAIN_CLASSES = 100
# The layout under the root, and where to get it, for error messages.
EXPECTED = (
    "classes.txt            lines '<class_id> <NNN.Name>'",
    "images/NNN.Name/*.jpg  one folder per class",
    "optional: images.txt ('<image_id> <NNN.Name/file.jpg>') and "
    "image_class_labels.txt ('<image_id> <class_id>')",
)
SOURCE = "https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz, 1.1 GB)"


def _read_pairs(path: epath.Path) -> dict[int, str]:
  pairs = {}
  for line in path.read_text().splitlines():
    if line.strip():
      key, value = line.strip().split(" ", 1)
      pairs[int(key)] = value
  return pairs


def find_root(root: epath.PathLike) -> epath.Path:
  """The directory holding ``classes.txt`` and ``images/``: ``root`` or ``root/CUB_200_2011``."""
  root = epath.Path(root)
  for candidate in (root, root / "CUB_200_2011"):
    if (candidate / "classes.txt").exists() and (candidate / "images").is_dir():
      return candidate
  raise dataset_lib.DataNotFoundError(NAME, root, EXPECTED,
                                      dataset_lib.describe_contents(root), SOURCE)


def load(root: epath.PathLike, split: str) -> dataset_lib.Dataset:
  """Loads one DML split of CUB-200-2011.

  Args:
    root: the extracted archive (local path or ``gs://...``).
    split: ``"train"`` (classes 1-100) or ``"test"`` (classes 101-200).

  Returns:
    The split's :class:`~diml_jax.data.dataset.Dataset`, images in ``images.txt`` order
    (or sorted by path).
  """
  dataset_lib.check_split(split)
  root = find_root(root)
  class_names = _read_pairs(root / "classes.txt")
  if (root / "images.txt").exists() and (root / "image_class_labels.txt").exists():
    paths = _read_pairs(root / "images.txt")
    labels = _read_pairs(root / "image_class_labels.txt")
    items = [(paths[i], int(labels[i])) for i in sorted(paths)]
  else:
    ids_by_folder = {folder: class_id for class_id, folder in class_names.items()}
    items = []
    for folder in sorted(p.name for p in (root / "images").iterdir() if p.is_dir()):
      if folder not in ids_by_folder:
        raise ValueError(f"{NAME}: folder images/{folder} is not listed in {root / 'classes.txt'}.")
      files = sorted(p.name for p in (root / "images" / folder).iterdir()
                     if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
      items += [(f"{folder}/{f}", ids_by_folder[folder]) for f in files]
  if not items:
    raise dataset_lib.DataNotFoundError(NAME, root, EXPECTED, "no images", SOURCE)
  in_split = [(p, c) for p, c in items if (c <= NUM_TRAIN_CLASSES) == (split == "train")]
  return dataset_lib.from_class_ids(
      NAME, split,
      images=dataset_lib.Files(tuple(str(root / "images" / p) for p, _ in in_split)),
      class_ids=np.array([c for _, c in in_split], np.int64),
      names_by_id={c: class_names[c].split(".", 1)[-1] for c in {c for _, c in in_split}})
