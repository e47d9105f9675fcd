"""A TFDS builder for Stanford Online Products, built once from a manual download.

TFDS has no SOP; this builder reads the extracted official archive (the layout of
:mod:`diml_jax.data.sop`) from TFDS's manual directory and writes the two DML splits,
``train`` (``Ebay_train.txt``) and ``test`` (``Ebay_test.txt``), with the JPEG bytes kept as
they are. Build it once into a bucket, in ArrayRecord so it can be read without TensorFlow
by random access (``tfds.data_source``)::

  python -c "from diml_jax.data import sop_tfds; \\
      sop_tfds.build('/path/to/Stanford_Online_Products', 'gs://BUCKET/tfds')"

(or, with TensorFlow installed, ``tfds build stanford_online_products
--imports=diml_jax.data.sop_tfds --manual_dir=... --data_dir=... --file_format=array_record``),
then ``diml_jax.data.load("sop", split, root="gs://BUCKET/tfds", source="tfds")``.
Needs ``pip install 'diml-jax[tfds]'``; building this way needs no TensorFlow.
"""
import tensorflow_datasets as tfds
from etils import epath

from diml_jax.data import sop

NUM_CLASSES = 22_634
NUM_SUPER_CLASSES = 12


class StanfordOnlineProducts(tfds.core.GeneratorBasedBuilder):
  """Stanford Online Products (Oh Song et al., CVPR 2016), DML splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Ebay_train.txt / Ebay_test.txt as train / test."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download Stanford_Online_Products.zip from the authors' page "
      "(cvgl.stanford.edu/projects/lifted_struct), extract it, and pass the extracted "
      "folder (the one holding Ebay_train.txt) as --manual_dir.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="120,053 product images of 22,634 classes from eBay.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "super_class": tfds.features.ClassLabel(num_classes=NUM_SUPER_CLASSES),
            "image/filename": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://cvgl.stanford.edu/projects/lifted_struct/",
        citation="Oh Song, Xiang, Jegelka, Savarese. Deep Metric Learning via Lifted "
                 "Structured Feature Embedding. CVPR 2016.")

  def _split_generators(self, dl_manager):
    root = epath.Path(dl_manager.manual_dir)
    return {split: self._generate_examples(root, split) for split in ("train", "test")}

  def _generate_examples(self, root: epath.Path, split: str):
    class_ids, super_ids, paths = sop.read_list(sop.find_list(root, split))
    for class_id, super_id, path in zip(class_ids, super_ids, paths):
      yield path, {
          "image": root / path,
          # Class and super-class ids are 1-based in the lists.
          "label": int(class_id) - 1,
          "super_class": int(super_id) - 1,
          "image/filename": path,
      }


def build(manual_dir: str, data_dir: str) -> tfds.core.DatasetInfo:
  """Builds the data set from the extracted archive ``manual_dir`` into ``data_dir``."""
  builder = StanfordOnlineProducts(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder.info

