"""Data: the DML benchmarks, the clip-art demo set, a synthetic set, and input pipelines.

Typical use by a training loop::

  from diml_jax import data

  train = data.load("cub200", "train", root="gs://my-bucket/CUB_200_2011")
  batches = data.train_iterator(train, batch_size=112, images_per_class=2, seed=0,
                                start_step=restored_step)
  for batch in data.device_prefetch(batches, NamedSharding(mesh, P("data"))):
    ...  # batch["image"]: float32 [b, 224, 224, 3], batch["label"]: int32 [b]

  test = data.load("cub200", "test", root=...)
  for batch in data.eval_iterator(test, batch_size=256):
    ...  # plus batch["mask"]: bool [b] (False on padding) and batch["index"]: int64 [b]

Data sets (``name``; ``root`` is a local path or ``gs://...``):

* ``"cub200"``: CUB-200-2011, classes 1-100 train / 101-200 test (:mod:`.cub`).
* ``"cars196"``: Cars196, classes 1-98 / 99-196 (:mod:`.cars196`).
* ``"sop"``: Stanford Online Products, ``Ebay_train.txt`` / ``Ebay_test.txt`` (:mod:`.sop`).
* ``"inshop"``: In-Shop Clothes Retrieval, ``list_eval_partition.txt``: train, and a test
  split of queries against a gallery (also ``"query"`` / ``"gallery"``) (:mod:`.inshop`).
* ``"openclipart"``: the demo set from ``apt-get install openclipart-png`` (:mod:`.openclipart`).
* ``"synthetic"``: made at run time, no files (:mod:`.synthetic`).

With ``source="tfds"`` the first three come from TensorFlow Datasets instead, ``root``
being the TFDS ``data_dir`` (:mod:`.tfds_sources`; needs ``pip install 'diml-jax[tfds]'``).
"""
from etils import epath

from diml_jax.data import cars196
from diml_jax.data import cub
from diml_jax.data import inshop
from diml_jax.data import openclipart
from diml_jax.data import sop
from diml_jax.data import synthetic
from diml_jax.data.dataset import Dataset
from diml_jax.data.images import CorruptImageError
from diml_jax.data.images import EFFICIENTNET_LITE
from diml_jax.data.images import IMAGENET
from diml_jax.data.images import Normalization
from diml_jax.data.pipeline import BatchIterator
from diml_jax.data.pipeline import device_prefetch
from diml_jax.data.pipeline import eval_iterator
from diml_jax.data.pipeline import train_iterator

__all__ = [
    "BatchIterator", "CorruptImageError", "Dataset", "EFFICIENTNET_LITE", "IMAGENET", "NAMES",
    "Normalization", "device_prefetch", "eval_iterator", "load", "train_iterator",
]

_ARCHIVES = {"cub200": cub.load, "cars196": cars196.load, "sop": sop.load,
             "inshop": inshop.load}
NAMES = (*_ARCHIVES, "openclipart", "synthetic")
SOURCES = ("files", "tfds")


def load(name: str, split: str, root: epath.PathLike | None = None, *, source: str = "files",
         **kwargs) -> Dataset:
  """Loads one class-disjoint split of a data set as a :class:`Dataset` (paths and labels).

  Args:
    name: one of ``NAMES``.
    split: ``"train"`` or ``"test"``; for ``inshop`` also ``"query"`` and ``"gallery"``
      (its ``"test"`` is both, with ``Dataset.is_query``).
    root: where the data set is; required for the archives, optional for ``openclipart``
      (Debian's path) and unused for ``synthetic``. With ``source="tfds"``: the TFDS
      ``data_dir`` (TFDS's default when None).
    source: ``"files"`` (the official archive layouts) or ``"tfds"``.
    **kwargs: options of the data set's own ``load`` (e.g. ``num_classes`` for
      ``synthetic``, ``min_images`` for ``openclipart``).

  Returns:
    The split, with contiguous labels ``0 .. num_classes - 1`` and the archive's class ids.
  """
  if name not in NAMES:
    raise ValueError(f"name={name!r} is unknown: use one of {NAMES}.")
  if source not in SOURCES:
    raise ValueError(f"source={source!r} is unknown: use one of {SOURCES}.")
  if source == "tfds":
    from diml_jax.data import tfds_sources  # pylint: disable=g-import-not-at-top
    return tfds_sources.load(name, split, data_dir=root, **kwargs)
  if name == "synthetic":
    return synthetic.load(split, **kwargs)
  if name == "openclipart":
    return openclipart.load(None if root is None else str(root), split, **kwargs)
  if root is None:
    raise ValueError(f"{name} needs root=, the directory of its extracted archive "
                     f"(see the module docstring of diml_jax.data.{name}).")
  return _ARCHIVES[name](root, split, **kwargs)
