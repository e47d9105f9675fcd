"""CUB-200-2011, Cars196 and SOP from TensorFlow Datasets, read without TensorFlow.

Images are read by random access (``tfds.data_source``), which needs the data sets built
in the ArrayRecord format, once, e.g. into a bucket the TPU hosts read::

  tfds build caltech_birds2011 --file_format=array_record --data_dir=gs://BUCKET/tfds
  tfds build cars196 --file_format=array_record --data_dir=gs://BUCKET/tfds
  tfds build stanford_online_products --imports=diml_jax.data.sop_tfds \\
      --manual_dir=/path/to/Stanford_Online_Products --file_format=array_record \\
      --data_dir=gs://BUCKET/tfds

TFDS's ``train`` / ``test`` of ``caltech_birds2011`` and ``cars196`` are the official
image-level splits; the DML splits take the images of both and keep the classes 1-100 /
101-200 (CUB) and 1-98 / 99-196 (Cars196), as the archive loaders do. SOP's TFDS splits
(:mod:`diml_jax.data.sop_tfds`) already are the DML splits. The encoded bytes are kept
(``SkipDecoding``), so decoding and augmentation are those of the file pipeline.

Needs ``pip install 'diml-jax[tfds]'`` (TensorFlow itself is not needed).
"""
import dataclasses
from typing import NamedTuple

import numpy as np

from diml_jax.data import dataset as dataset_lib

_READ_CHUNK = 1024


class _Spec(NamedTuple):
  builder: str
  splits: dict[str, tuple[str, ...]]  # DML split -> TFDS splits to read
  num_train_classes: int | None       # DML split by class id; None: by TFDS split
  filename_key: str


_SPECS = {
    "cub200": _Spec("caltech_birds2011", {"train": ("train", "test"), "test": ("train", "test")},
                    100, "image/filename"),
    "cars196": _Spec("cars196", {"train": ("train", "test"), "test": ("train", "test")}, 98, "id"),
    "sop": _Spec("stanford_online_products", {"train": ("train",), "test": ("test",)}, None,
                 "image/filename"),
}


def import_tfds():
  """Imports ``tensorflow_datasets`` or says how to install it."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "source='tfds' needs TensorFlow Datasets: pip install 'diml-jax[tfds]' "
        "(or use source='files' with the extracted archives).") from e
  return tfds


@dataclasses.dataclass(frozen=True, eq=False)
class TfdsImages:
  """Encoded images of TFDS data sources: image ``i`` is record ``record[i]`` of ``part[i]``.

  Attributes:
    sources: ``tfds.data_source`` objects, images left encoded.
    part: ``int [n]`` which source holds each image.
    record: ``int [n]`` the record in that source.
    names: ``[n]`` a name for each image in messages.
  """
  sources: tuple
  part: np.ndarray
  record: np.ndarray
  names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.part)

  def __getitem__(self, index: int) -> bytes:
    return self.sources[self.part[index]][int(self.record[index])]["image"]

  def describe(self, index: int) -> str:
    return self.names[index]


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _read_records(source, filename_key: str) -> tuple[np.ndarray, list[str], list[str | None]]:
  """Label, file name and label name (None if absent) of every record, images undecoded."""
  labels, files, label_names = [], [], []
  for start in range(0, len(source), _READ_CHUNK):
    records = source.__getitems__(range(start, min(start + _READ_CHUNK, len(source))))
    labels += [int(r["label"]) for r in records]
    files += [_text(r[filename_key]) for r in records]
    label_names += [_text(r["label_name"]) if "label_name" in r else None for r in records]
  return np.array(labels, np.int64), files, label_names


def load(name: str, split: str, *, data_dir=None) -> dataset_lib.Dataset:
  """Loads one DML split of ``name`` from TFDS.

  Args:
    name: ``"cub200"``, ``"cars196"`` or ``"sop"``.
    split: ``"train"`` or ``"test"``.
    data_dir: the TFDS data directory (local or ``gs://``); TFDS's default when None.

  Returns:
    The split's :class:`~diml_jax.data.dataset.Dataset`; class ids are 1-based, as in
    the archives (TFDS's label + 1).
  """
  if name not in _SPECS:
    raise ValueError(f"name={name!r} has no TFDS source: use one of {sorted(_SPECS)}.")
  dataset_lib.check_split(split)
  tfds = import_tfds()
  spec = _SPECS[name]
  if name == "sop":
    from diml_jax.data import sop_tfds  # pylint: disable=g-import-not-at-top,unused-import
  builder = tfds.builder(spec.builder, data_dir=data_dir)
  images = {k: tfds.decode.SkipDecoding() for k, feature in builder.info.features.items()
            if isinstance(feature, tfds.features.Image)}
  # caltech_birds2011's ClassLabel has no names, its records do ("label_name").
  label_names = dict(enumerate(builder.info.features["label"].names, start=1))
  sources, parts, records, class_ids, names = [], [], [], [], []
  for part, tfds_split in enumerate(spec.splits[split]):
    source = tfds.data_source(spec.builder, split=tfds_split, data_dir=data_dir,
                              decoders=images, download=False)
    labels, files, record_label_names = _read_records(source, spec.filename_key)
    ids = labels + 1
    label_names.update({int(c): n for c, n in zip(ids, record_label_names) if n is not None})
    keep = (np.ones_like(ids, bool) if spec.num_train_classes is None
            else (ids <= spec.num_train_classes) == (split == "train"))
    sources.append(source)
    parts.append(np.full(keep.sum(), part, np.int32))
    records.append(np.flatnonzero(keep))
    class_ids.append(ids[keep])
    names += [f"{spec.builder}/{tfds_split}[{i}] {files[i]}" for i in np.flatnonzero(keep)]
  class_ids = np.concatenate(class_ids)
  return dataset_lib.from_class_ids(
      name, split,
      images=TfdsImages(tuple(sources), np.concatenate(parts), np.concatenate(records),
                        tuple(names)),
      class_ids=class_ids,
      names_by_id=label_names)
