"""Cars196 (Stanford Cars, Krause et al. 2013) in either of its two common layouts.

Official (``car_ims.tgz`` extracted next to ``cars_annos.mat``)::

  cars_annos.mat     MATLAB v5: annotations(relative_im_path, bbox_*, class, test), class_names
  car_ims/000001.jpg ...

DML community (one folder per class, as in Roth et al.'s "Revisiting DML" code)::

  images/<class name>/*.jpg

In the folder layout a class's id is its 1-based position among the sorted folder names,
which follows the official ``class_names`` order. DML split (Oh Song et al. 2016):
classes 1-98 train, 99-196 test; the official train/test flag is ignored.
"""
import numpy as np
from etils import epath

from diml_jax.data import dataset as dataset_lib

NAME = "cars196"
NUM_TRAIN_CLASSES = 98
# The layout under the root, and where to get it, for error messages.
EXPECTED = (
    "official:  cars_annos.mat (MATLAB file with 'annotations' and 'class_names') "
    "and car_ims/*.jpg",
    "or DML folders:  images/<class name>/*.jpg",
)
SOURCE = ("car_ims.tgz and cars_annos.mat from the Stanford Cars page, "
          "http://ai.stanford.edu/~jkrause/cars/car_dataset.html, or a mirror of those two files")


def _load_mat(path: epath.Path) -> tuple[list[str], list[int], dict[int, str]]:
  """Image paths, class ids and class names from ``cars_annos.mat``."""
  try:
    import scipy.io  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "Reading cars_annos.mat needs scipy: pip install scipy (or use the images/<class>/ "
        "folder layout).") from e
  with path.open("rb") as f:
    mat = scipy.io.loadmat(f, squeeze_me=True)
  if "annotations" not in mat or "class_names" not in mat:
    raise ValueError(
        f"{NAME}: {path} lacks 'annotations' or 'class_names' "
        f"(has {sorted(k for k in mat if not k.startswith('__'))}).")
  annotations = np.atleast_1d(mat["annotations"])
  names = [str(n) for n in np.atleast_1d(mat["class_names"])]
  paths = [str(p) for p in annotations["relative_im_path"]]
  class_ids = [int(c) for c in annotations["class"]]
  return paths, class_ids, {i + 1: n for i, n in enumerate(names)}


def _list_folders(images: epath.Path) -> tuple[list[str], list[int], dict[int, str]]:
  """Image paths, class ids and class names from ``images/<class name>/``."""
  folders = sorted(p.name for p in images.iterdir() if p.is_dir())
  paths, class_ids = [], []
  for class_id, folder in enumerate(folders, start=1):
    files = sorted(p.name for p in (images / folder).iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    paths += [f"images/{folder}/{f}" for f in files]
    class_ids += [class_id] * len(files)
  return paths, class_ids, {i: f for i, f in enumerate(folders, start=1)}


def load(root: epath.PathLike, split: str) -> dataset_lib.Dataset:
  """Loads one DML split of Cars196.

  Args:
    root: directory with ``cars_annos.mat`` + ``car_ims/``, or with ``images/<class>/``.
    split: ``"train"`` (classes 1-98) or ``"test"`` (classes 99-196).

  Returns:
    The split's :class:`~diml_jax.data.dataset.Dataset`, in annotation order (or sorted).
  """
  dataset_lib.check_split(split)
  root = epath.Path(root)
  if (root / "cars_annos.mat").exists() and (root / "car_ims").is_dir():
    paths, class_ids, names = _load_mat(root / "cars_annos.mat")
  elif (root / "images").is_dir():
    paths, class_ids, names = _list_folders(root / "images")
  else:
    raise dataset_lib.DataNotFoundError(NAME, root, EXPECTED,
                                      dataset_lib.describe_contents(root), SOURCE)
  keep = [(p, c) for p, c in zip(paths, class_ids)
          if (c <= NUM_TRAIN_CLASSES) == (split == "train")]
  return dataset_lib.from_class_ids(
      NAME, split,
      images=dataset_lib.Files(tuple(str(root / p) for p, _ in keep)),
      class_ids=[c for _, c in keep],
      names_by_id=names)
