"""EfficientNet-Lite: TF-SAME parity with an independent PyTorch forward pass, and the real
ImageNet weights of EfficientNet-Lite0 classifying real photographs."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from diml_jax.models.efficientnet import DepthwiseConv
from diml_jax.models import (LITE0_STAGES, EfficientNetLite, EfficientNetLite0,
                             EfficientNetLiteTiny, backbone_variables, imagenet_variables,
                             lite0_weights_path, load_state_dict)
from tests.models.helpers import assert_rel_close
from tests.models.torch_reference import TorchEfficientNetLite, randomize_batch_norm

# ImageNet-1k class indices.
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP, COFFEE_MUG = 967, 968, 504
MISSILE, PROJECTILE, SPACE_SHUTTLE = 657, 744, 812


@pytest.mark.parametrize("height, width", [(45, 38), (64, 64)])
def test_tiny_matches_torch_reference(height, width):
  model = EfficientNetLiteTiny(num_classes=10)
  torch.manual_seed(0)
  reference = randomize_batch_norm(TorchEfficientNetLite(
      model.stages, model.stem_features, model.head_features, num_classes=10)).eval()
  variables = backbone_variables({k: v.numpy() for k, v in reference.state_dict().items()},
                                 model)
  images = np.random.default_rng(0).normal(size=(2, height, width, 3)).astype(np.float32)
  _, aux = model.apply(variables, images)
  with torch.no_grad():
    ref_map, ref_logits = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
  assert aux["feature_map"].shape == (2, -(-height // 8), -(-width // 8), 32)
  assert_rel_close(aux["feature_map"], ref_map.permute(0, 2, 3, 1).numpy())
  assert_rel_close(aux["logits"], ref_logits.numpy())


def _photo(image: np.ndarray, size: int = 224) -> np.ndarray:
  """Centre square crop, bicubic resize, Lite normalisation: ``[size, size, 3]``."""
  img = Image.fromarray(image)
  w, h = img.size
  s = min(w, h)
  box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
  img = img.crop(box).resize((size, size), Image.BICUBIC)
  mean, std = EfficientNetLite.pixel_mean, EfficientNetLite.pixel_std
  return ((np.asarray(img, np.float32) - mean) / std).astype(np.float32)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
  return np.stack([_photo(skimage.data.chelsea()), _photo(skimage.data.coffee()),
                   _photo(skimage.data.rocket())])


def test_lite0_imagenet_weights_classify_real_photos(photos):
  model = EfficientNetLite0(num_classes=1000)
  variables = imagenet_variables(model)
  _, aux = jax.jit(model.apply)(variables, photos)
  probs = np.asarray(jax.nn.softmax(aux["logits"]))
  cat, coffee, rocket = probs
  # Observed: Egyptian cat 0.39, tiger cat 0.33, tabby 0.16; espresso 0.94; missile 0.22,
  # projectile 0.15. Thresholds leave room for numerics, not for a wrong architecture.
  assert np.argmax(cat) in CATS and cat[list(CATS)].sum() > 0.7
  assert np.argmax(coffee) == ESPRESSO and coffee[ESPRESSO] > 0.8
  assert set(np.argsort(-coffee)[:5]) >= {CUP, COFFEE_MUG}
  assert np.argmax(rocket) in {MISSILE, PROJECTILE, SPACE_SHUTTLE}
  assert aux["feature_map"].shape == (3, 7, 7, 1280)


def test_lite0_imagenet_weights_match_torch_reference(photos):
  reference = TorchEfficientNetLite(LITE0_STAGES).eval()
  reference.load_state_dict(torch.load(lite0_weights_path(), weights_only=True))
  model = EfficientNetLite0(num_classes=1000)
  variables = backbone_variables(load_state_dict(lite0_weights_path()), model)
  _, aux = jax.jit(model.apply)(variables, photos[:2])
  with torch.no_grad():
    ref_map, ref_logits = reference(torch.from_numpy(photos[:2]).permute(0, 3, 1, 2))
  assert_rel_close(aux["logits"], ref_logits.numpy())
  assert_rel_close(aux["feature_map"], ref_map.permute(0, 2, 3, 1).numpy())


def test_lite0_without_classifier_drops_only_the_classifier():
  model = EfficientNetLite0()
  variables = imagenet_variables(model)
  n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert n_params == 4_652_008 - (1280 * 1000 + 1000)
  assert "fc" not in variables["params"]
  images = jax.ShapeDtypeStruct((2, 224, 320, 3), jnp.float32)
  pooled, aux = jax.eval_shape(model.apply, variables, images)
  assert aux["feature_map"].shape == (2, 7, 10, 1280) and pooled.shape == (2, 1280)


@pytest.mark.parametrize("kernel_size, strides, size", [(3, 1, 7), (3, 2, 8), (5, 2, 7),
                                                        (5, 1, 6), (3, 2, 1)])
def test_depthwise_conv_equals_a_grouped_convolution(kernel_size, strides, size):
  # The shifted multiply-adds used on CPU against XLA's grouped convolution with TF SAME
  # padding, values and gradients; same parameter tree as nn.Conv.
  x = jax.random.normal(jax.random.key(0), (2, size, size + 3, 8))
  ours = DepthwiseConv(kernel_size, strides)
  grouped = nn.Conv(8, (kernel_size, kernel_size), strides=strides, padding="SAME",
                    feature_group_count=8, use_bias=False)
  variables = grouped.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(
      jnp.shape, variables)
  np.testing.assert_allclose(ours.apply(variables, x), grouped.apply(variables, x),
                             rtol=1e-5, atol=1e-5)
  grad = lambda m: jax.grad(lambda v, x: jnp.sum(jnp.sin(m.apply(v, x))), (0, 1))(variables, x)
  for a, b in zip(jax.tree.leaves(grad(ours)), jax.tree.leaves(grad(grouped))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
