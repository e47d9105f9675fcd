"""BN-Inception: parity with an independent PyTorch forward pass in Cadene's state-dict
layout (random weights, BGR input), the input convention, key-by-key loading, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import common
from diml_jax import data, experiment
from diml_jax.models import (BNINCEPTION_IMAGENET, BNInception, EmbeddingModel,
                             backbone_variables, imagenet_variables)
from diml_jax.models import pretrained
from diml_jax.models.bninception import max_pool_ceil
from tests.models.helpers import assert_rel_close
from tests.models.torch_reference import TorchBNInception, randomize_batch_norm


def experiment_config(image_size):
  """The papers' CUB margin config with BN-Inception at ``image_size`` px."""
  c = common.paper("cub", "margin", diml=False)
  c.model.backbone, c.data.image_size = "bninception", image_size
  return c


@pytest.fixture(scope="module")
def reference() -> TorchBNInception:
  torch.manual_seed(0)
  return randomize_batch_norm(TorchBNInception()).eval()


@pytest.fixture(scope="module")
def state_dict(reference) -> dict[str, np.ndarray]:
  return {k: v.numpy().copy() for k, v in reference.state_dict().items()}


def test_matches_torch_reference_on_bgr_input(reference, state_dict):
  """64 x 96 px: every block runs, with 2x3 maps after the last stride-2 block."""
  model = BNInception(num_classes=1000)
  variables = backbone_variables(state_dict, model)
  images = np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype(np.float32)
  pooled, aux = jax.jit(model.apply)(variables, images)
  with torch.no_grad():  # the reference sees the channels in BGR order, as Caffe did
    bgr = torch.from_numpy(images[..., ::-1].copy()).permute(0, 3, 1, 2)
    ref_map, ref_logits = reference(bgr)
  assert aux["feature_map"].shape == (2, 2, 3, 1024)
  assert_rel_close(aux["feature_map"], ref_map.permute(0, 2, 3, 1).numpy())
  assert_rel_close(pooled, ref_map.mean((2, 3)).numpy())
  assert_rel_close(aux["logits"], ref_logits.numpy())


@pytest.mark.parametrize("size, window, strides, padding", [
    (7, 3, 2, 0), (8, 3, 2, 0), (2, 3, 2, 0), (5, 3, 1, 1), (56, 3, 2, 0), (6, 2, 3, 1)])
def test_max_pool_rounds_up_like_pytorch_ceil_mode(size, window, strides, padding):
  x = np.random.default_rng(size).normal(size=(1, size, size + 1, 2)).astype(np.float32)
  ours = max_pool_ceil(jnp.asarray(x), window, strides, padding)
  expected = torch.nn.functional.max_pool2d(
      torch.from_numpy(x).permute(0, 3, 1, 2), window, strides, padding, ceil_mode=True)
  np.testing.assert_array_equal(ours, expected.permute(0, 2, 3, 1).numpy())


def test_input_convention_is_the_ports_bgr_mean_without_scaling():
  """The pipeline's RGB normalisation, then the model's channel reversal, give Cadene's
  input: BGR pixels on 0..255 minus [104, 117, 128]."""
  pixels = np.random.default_rng(1).integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
  normalization = experiment.normalization(EmbeddingModel(backbone=BNInception()))
  ours = data.images.normalize(pixels, normalization)[..., ::-1]
  cadene = pixels[..., ::-1].astype(np.float64) - np.array([104.0, 117.0, 128.0])
  np.testing.assert_allclose(ours, cadene, atol=1e-4)


def test_the_ports_keys_load_one_by_one(state_dict):
  model = BNInception()
  variables = backbone_variables(state_dict, model, ignore=("last_linear.",))
  params = variables["params"]
  assert "inception_3a_double_3x3_1" in params and "inception_3a_double_3x3_1_bn" in params
  np.testing.assert_array_equal(
      params["inception_5b_pool_proj"]["kernel"],
      state_dict["inception_5b_pool_proj.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      variables["batch_stats"]["conv1_7x7_s2_bn"]["var"],
      state_dict["conv1_7x7_s2_bn.running_var"])
  broken = dict(state_dict)
  del broken["inception_4c_3x3_bn.running_mean"]
  broken["inception_3a_1x1.weight"] = np.zeros((64, 192, 3, 3), np.float32)
  broken["inception_6a_1x1.weight"] = np.zeros((1, 1), np.float32)
  with pytest.raises(ValueError) as error:
    backbone_variables(broken, model)
  message = str(error.value)
  assert "missing inception_4c_3x3_bn.running_mean: the model expects shape (160,)" in message
  assert ("inception_3a_1x1.weight: the file has shape (64, 192, 3, 3), the model expects"
          " (64, 192, 1, 1)") in message
  assert "unexpected inception_6a_1x1.weight" in message
  assert "unexpected last_linear.weight" in message  # the classifier is dropped explicitly


def test_odd_maps_before_a_stride_2_block_are_named():
  images = jax.ShapeDtypeStruct((1, 48, 64, 3), jnp.float32)
  with pytest.raises(ValueError, match=r"inception_4e needs an even feature map, and images "
                                       r"of 48x64 give 3x4 there: use image sides that are "
                                       r"multiples of 32"):
    jax.eval_shape(BNInception().init, jax.random.key(0), images)
  config = experiment_config(image_size=240)
  with pytest.raises(ValueError, match=r"image_size=240 must be a multiple of 32 for"):
    experiment.check_config(config)


def test_config_builds_bninception_with_a_224_px_map():
  config = experiment_config(224)
  experiment.check_config(config)
  model = experiment.build_model(config)
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  _, aux = jax.eval_shape(model.apply, variables, images)
  assert aux["local"].shape == (1, 16, 128)
  _, backbone_aux = jax.eval_shape(model.backbone.apply,
                                   {k: v["backbone"] for k, v in variables.items()}, images)
  assert backbone_aux["feature_map"].shape == (1, 7, 7, 1024)
  count = sum(x.size for x in jax.tree.leaves(variables["params"]["backbone"]))
  assert count == 11_295_240 - 1_025_000  # the port's parameters less its classifier


def test_imagenet_weights_download_convert_and_say_where_to_put_the_file(
    tmp_path, monkeypatch, reference, state_dict):
  """The real URL's file name, served from a file:// URL (no network in tests): a torch.save
  of the port's keys is cached and converted without its classifier; a failed download
  says where to put the file."""
  name = BNINCEPTION_IMAGENET.filename
  assert name == "bn_inception-52deb4733.pth"
  source = tmp_path / "server" / name
  source.parent.mkdir()
  monkeypatch.setattr(pretrained, "BNINCEPTION_IMAGENET",
                      BNINCEPTION_IMAGENET._replace(url=source.as_uri()))
  with pytest.raises(OSError, match=f"without internet, place the file at {tmp_path}/cache/{name}"):
    imagenet_variables(BNInception(), cache_dir=tmp_path / "cache")
  torch.save(reference.state_dict(), source)
  variables = imagenet_variables(BNInception(), cache_dir=tmp_path / "cache")
  assert (tmp_path / "cache" / name).exists()
  expected = backbone_variables(state_dict, BNInception(), ignore=("last_linear.",))
  jax.tree.map(np.testing.assert_array_equal, variables, expected)
