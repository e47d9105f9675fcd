"""The record list every source returns: where each image's bytes are, and its label.

A :class:`Dataset` is small and picklable (paths, not pixels), so the input pipeline can
ship it to worker processes, which read the bytes themselves. Labels are contiguous
``0 .. num_classes - 1`` within a split; ``class_ids[label]`` is the class id of the
original archive (CUB's 1..200, Cars196's 1..196, SOP's 1..22,634, In-Shop's item numbers).
"""
import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from etils import epath

SPLITS = ("train", "test")


class ImageSource(Protocol):
  """Random access to encoded images: ``source[i]`` is bytes, ``describe(i)`` names it."""

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> bytes:
    ...

  def describe(self, index: int) -> str:
    ...


@dataclasses.dataclass(frozen=True)
class Files:
  """Images stored as files, local or remote (``gs://`` through ``etils.epath``)."""
  paths: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> bytes:
    return epath.Path(self.paths[index]).read_bytes()

  def describe(self, index: int) -> str:
    return self.paths[index]


@dataclasses.dataclass(frozen=True)
class InMemory:
  """Encoded images held in memory (the synthetic set), each with a name for messages."""
  blobs: tuple[bytes, ...]
  names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.blobs)

  def __getitem__(self, index: int) -> bytes:
    return self.blobs[index]

  def describe(self, index: int) -> str:
    return self.names[index]


@dataclasses.dataclass(frozen=True)
class Subset:
  """The images ``indices`` of another source, in that order."""
  source: ImageSource
  indices: tuple[int, ...]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> bytes:
    return self.source[self.indices[index]]

  def describe(self, index: int) -> str:
    return self.source.describe(self.indices[index])


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """One split of one data set.

  Attributes:
    name: data set name, e.g. ``"cub200"``.
    split: ``"train"`` or ``"test"`` (In-Shop also ``"query"``, ``"gallery"``).
    images: ``images[i]`` are the encoded bytes of image ``i``.
    labels: ``int32 [n]`` contiguous class labels ``0 .. num_classes - 1``.
    class_ids: ``int64 [num_classes]`` the archive's class id of each label.
    class_names: ``[num_classes]`` a readable name of each label.
    letterbox: pad images to a square with white before augmenting (clip art).
    super_class_ids: ``int64 [n]`` SOP's super-class id of each image, else None.
    is_query: ``bool [n]`` for a query/gallery test split (In-Shop): which images are
      queries, ranked against the others (the gallery) only. None: every image is a
      query against all the others.
  """
  name: str
  split: str
  images: ImageSource
  labels: np.ndarray
  class_ids: np.ndarray
  class_names: tuple[str, ...]
  letterbox: bool = False
  super_class_ids: np.ndarray | None = None
  is_query: np.ndarray | None = None

  def __post_init__(self):
    if len(self.images) != len(self.labels):
      raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels.")
    if len(self.class_ids) != len(self.class_names):
      raise ValueError(
          f"{len(self.class_ids)} class ids but {len(self.class_names)} class names.")

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def num_classes(self) -> int:
    return len(self.class_ids)

  def subset(self, indices) -> "Dataset":
    """The images ``indices`` (labels and classes unchanged), e.g. a smaller test set."""
    indices = np.asarray(indices, np.int64)
    if indices.ndim != 1 or (len(indices) and not 0 <= indices.min() <= indices.max() < len(self)):
      raise ValueError(f"indices must be a 1-D array of image indices in [0, {len(self)}).")
    return dataclasses.replace(
        self, images=Subset(self.images, tuple(int(i) for i in indices)),
        labels=self.labels[indices],
        super_class_ids=None if self.super_class_ids is None else self.super_class_ids[indices],
        is_query=None if self.is_query is None else self.is_query[indices])

  def __repr__(self) -> str:
    return (f"Dataset({self.name!r}, split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes})")


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is unknown: use one of {SPLITS}.")


def from_class_ids(
    name: str,
    split: str,
    images: ImageSource,
    class_ids: Sequence[int] | np.ndarray,
    names_by_id: dict[int, str],
    **kwargs,
) -> Dataset:
  """Builds a :class:`Dataset`, remapping archive class ids to contiguous labels.

  Args:
    name: data set name.
    split: split name.
    images: the split's images.
    class_ids: ``[n]`` archive class id of each image.
    names_by_id: readable name of every class id that occurs.
    **kwargs: further :class:`Dataset` fields.
  """
  class_ids = np.asarray(class_ids, np.int64)
  if not len(class_ids):
    raise ValueError(f"{name}: the {split} split has no images.")
  unique_ids, labels = np.unique(class_ids, return_inverse=True)
  return Dataset(
      name=name,
      split=split,
      images=images,
      labels=labels.astype(np.int32),
      class_ids=unique_ids,
      class_names=tuple(names_by_id[int(i)] for i in unique_ids),
      **kwargs)


def layout_error(name: str, root: epath.PathLike, expected: Sequence[str],
                 found: str) -> Exception:
  """One message for a missing root or a wrong layout: what was expected, where, what is there."""
  lines = "\n".join(f"  {line}" for line in expected)
  return FileNotFoundError(
      f"{name}: {root} does not hold the expected layout.\nExpected under {root}:\n{lines}\n"
      f"Found: {found}")


def describe_contents(root: epath.Path, limit: int = 10) -> str:
  """A short listing of ``root`` for error messages."""
  if not root.exists():
    return "the directory does not exist"
  if not root.is_dir():
    return "a file, not a directory"
  names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
  if not names:
    return "an empty directory"
  more = f", ... ({len(names)} entries)" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more
