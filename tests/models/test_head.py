"""The DIML head: grid pooling against float64 loops and PyTorch, the global/local embeddings,
and the baseline test-time path (embedding at every position, then pooling)."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from diml_jax.models import EmbeddingModel, ResNetTiny, grid_pool
from tests.models.helpers import random_variables


def resize_loop(x: np.ndarray, out: int) -> np.ndarray:
  """Bilinear resize with aligned corners, pixel by pixel: ``[h, w, c] -> [out, out, c]``."""
  h, w, _ = x.shape
  y = np.zeros((out, out, x.shape[2]))
  for i in range(out):
    for j in range(out):
      sy = i * (h - 1) / (out - 1)
      sx = j * (w - 1) / (out - 1)
      y0, x0 = int(math.floor(sy)), int(math.floor(sx))
      y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
      dy, dx = sy - y0, sx - x0
      y[i, j] = ((1 - dy) * (1 - dx) * x[y0, x0] + (1 - dy) * dx * x[y0, x1]
                 + dy * (1 - dx) * x[y1, x0] + dy * dx * x[y1, x1])
  return y


def adaptive_pool_loop(x: np.ndarray, g: int) -> np.ndarray:
  """PyTorch's adaptive average pooling, bin by bin: ``[h, w, c] -> [g, g, c]``."""
  h, w, _ = x.shape
  y = np.zeros((g, g, x.shape[2]))
  for i in range(g):
    for j in range(g):
      r0, r1 = (i * h) // g, math.ceil((i + 1) * h / g)
      c0, c1 = (j * w) // g, math.ceil((j + 1) * w / g)
      y[i, j] = x[r0:r1, c0:c1].mean(axis=(0, 1))
  return y


def reference_grid(x: np.ndarray, g: int, resize_to: int | None = 16) -> np.ndarray:
  """``[b, h, w, c] -> [b, g, g, c]`` in float64; ``None``: the reference eval rule."""
  out = []
  for image in x.astype(np.float64):
    if resize_to is None:  # evaluation/eval_diml.py of the reference, for square maps
      size = image.shape[0]
      out.append(adaptive_pool_loop(image, g) if size % g == 0
                 else adaptive_pool_loop(resize_loop(image, 4 * g), g))
    else:
      out.append(adaptive_pool_loop(resize_loop(image, resize_to), g))
  return np.stack(out)


@pytest.mark.parametrize("h, w", [(7, 7), (7, 5), (14, 9), (1, 1)])
@pytest.mark.parametrize("g", [1, 2, 3, 4, 5, 7])
def test_grid_pool_matches_float64_loops(h, w, g):
  x = np.random.default_rng(h * 100 + w * 10 + g).normal(size=(2, h, w, 3))
  actual = grid_pool(jnp.asarray(x, jnp.float32), g)
  assert actual.shape == (2, g, g, 3)
  np.testing.assert_allclose(actual, reference_grid(x, g), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("g", [1, 2, 3, 4, 5, 6, 7])
def test_grid_pool_matches_torch_interpolate_and_adaptive_pool(g):
  x = np.random.default_rng(g).normal(size=(2, 7, 7, 4)).astype(np.float32)
  t = torch.from_numpy(x).permute(0, 3, 1, 2)
  t = F.interpolate(t, size=(16, 16), mode="bilinear", align_corners=True)
  expected = F.adaptive_avg_pool2d(t, g).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(grid_pool(jnp.asarray(x), g), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("g", [1, 2, 3, 4, 7])
def test_grid_pool_reference_eval_rule(g):
  x = np.random.default_rng(g).normal(size=(2, 7, 7, 3))
  actual = grid_pool(jnp.asarray(x, jnp.float32), g, resize_to=None)
  np.testing.assert_allclose(actual, reference_grid(x, g, resize_to=None), rtol=1e-5,
                             atol=1e-6)
  if g == 7:  # no resize: the grid is the map itself
    np.testing.assert_allclose(actual, x, rtol=1e-6)


@pytest.mark.parametrize("g, resize_to, match", [
    (0, 16, "grid_size"), (17, 16, "1..16"), (2.5, 16, "grid_size"), (4, 0, "resize_to")])
def test_grid_pool_rejects_bad_arguments(g, resize_to, match):
  with pytest.raises(ValueError, match=match):
    grid_pool(jnp.zeros((1, 7, 7, 2)), g, resize_to=resize_to)
  with pytest.raises(ValueError, match=r"\[b, h, w, c\]"):
    grid_pool(jnp.zeros((7, 7, 2)), 4)


class PatchBackbone(nn.Module):
  """A cheap stand-in backbone: 8x8 average pooling and a dense layer, ``[b, h/8, w/8, 6]``."""

  @nn.compact
  def __call__(self, images, *, train=False):
    x = nn.Dense(6)(nn.avg_pool(images, (8, 8), strides=(8, 8)))
    return jnp.mean(x, axis=(1, 2)), {"feature_map": x}


@pytest.fixture(scope="module")
def tiny():
  """An embedding model on a stand-in backbone, its variables and 2 images -> 7x5 maps."""
  model = EmbeddingModel(backbone=PatchBackbone(), embed_dim=16, grid_size=3)
  images = np.random.default_rng(0).normal(size=(2, 56, 40, 3)).astype(np.float32)
  variables = random_variables(model, images.shape)
  return model, variables, images


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_embedding_model_on_resnet():
  model = EmbeddingModel(backbone=ResNetTiny(), embed_dim=16, grid_size=3)
  images = np.random.default_rng(0).normal(size=(2, 128, 96, 3)).astype(np.float32)
  variables = random_variables(model, images.shape)
  global_, aux = jax.jit(model.apply)(variables, images)
  assert global_.shape == (2, 16)
  assert aux["local"].shape == (2, 9, 16)
  assert set(aux) == {"local", "feature_map", "pooled"}
  assert aux["feature_map"].shape == (2, 4, 3, 256)
  assert aux["pooled"].shape == (2, 256)
  assert set(variables["params"]) == {"backbone", "embedding"}
  np.testing.assert_allclose(np.linalg.norm(global_, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(aux["local"], axis=-1), 1.0, rtol=1e-5)


def test_global_embedding_embeds_the_average_pooled_map(tiny):
  """The default global embedding is the baseline's: embedding(avgpool(feature map))."""
  model, variables, images = tiny
  global_, aux = model.apply(variables, images)
  kernel = np.asarray(variables["params"]["embedding"]["kernel"], np.float64)
  bias = np.asarray(variables["params"]["embedding"]["bias"], np.float64)
  fmap = np.asarray(aux["feature_map"], np.float64)
  assert fmap.shape == (2, 7, 5, 6)
  np.testing.assert_allclose(global_, _normalize(fmap.mean((1, 2)) @ kernel + bias),
                             rtol=1e-4, atol=1e-6)


def test_baseline_test_time_path_is_the_same_computation(tiny):
  """Reference test-time DIML on a baseline: embed every position, then pool to the grid."""
  model, variables, images = tiny
  _, aux = model.apply(variables, images)
  kernel = np.asarray(variables["params"]["embedding"]["kernel"], np.float64)
  bias = np.asarray(variables["params"]["embedding"]["bias"], np.float64)
  per_position = np.asarray(aux["feature_map"], np.float64) @ kernel + bias  # [b, h, w, d]
  local = reference_grid(per_position, 3).reshape(2, 9, 16)
  np.testing.assert_allclose(aux["local"], _normalize(local), rtol=1e-4, atol=1e-6)


def test_global_from_grid_is_the_mean_of_local_embeddings(tiny):
  model, variables, images = tiny
  unnormalized = model.clone(global_from="grid", normalize=False)
  global_, aux = unnormalized.apply(variables, images)
  np.testing.assert_allclose(global_, np.mean(aux["local"], axis=1), rtol=1e-5, atol=1e-6)
  normalized, _ = model.clone(global_from="grid").apply(variables, images)
  np.testing.assert_allclose(normalized, _normalize(np.asarray(global_)), rtol=1e-5)


def test_frozen_backbone_gets_no_gradient_and_the_head_does(tiny):
  model, variables, images = tiny

  def loss(params, m):
    global_, aux = m.apply({**variables, "params": params}, images)
    return jnp.sum(global_[0] * global_[1]) + jnp.sum(aux["local"][0] * aux["local"][1])

  frozen = jax.grad(loss)(variables["params"], model.clone(freeze_backbone=True))
  free = jax.grad(loss)(variables["params"], model)
  for leaf in jax.tree.leaves(frozen["backbone"]):
    assert np.all(np.asarray(leaf) == 0)
  assert any(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(free["backbone"]))
  jax.tree.map(np.testing.assert_allclose, frozen["embedding"], free["embedding"])


def test_grid_size_changes_without_new_parameters(tiny):
  model, variables, images = tiny
  for g in (1, 2, 4, 7):
    global_, aux = model.clone(grid_size=g).apply(variables, images)
    assert aux["local"].shape == (2, g * g, 16)
  # g = 1: the single cell averages the resized map, whose embedding is the local vector.
  _, aux = model.clone(grid_size=1).apply(variables, images)
  kernel = np.asarray(variables["params"]["embedding"]["kernel"], np.float64)
  bias = np.asarray(variables["params"]["embedding"]["bias"], np.float64)
  cell = reference_grid(np.asarray(aux["feature_map"], np.float64), 1)[:, 0, 0]
  np.testing.assert_allclose(aux["local"][:, 0], _normalize(cell @ kernel + bias), rtol=1e-4,
                             atol=1e-6)


def test_embedding_model_rejects_bad_configuration(tiny):
  model, variables, images = tiny
  with pytest.raises(ValueError, match="global_from"):
    model.clone(global_from="mean").apply(variables, images)
  with pytest.raises(ValueError, match="grid_size"):
    model.clone(grid_size=0).apply(variables, images)
  with pytest.raises(ValueError, match="NCHW"):
    model.apply(variables, images.transpose(0, 3, 1, 2))
