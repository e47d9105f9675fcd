"""Truncated attention rollout against a float64 loop, its truncation, the class-token
relevance of a real (tiny) ViT, pooling to the part grid, and bad arguments."""
import jax
import numpy as np
import pytest

from diml_jax.models import (EmbeddingModel, ViTTiny, attention_rollout, grid_pool,
                             patch_relevance, pool_relevance)
from tests.models.helpers import random_variables


def random_attentions(depth=4, b=2, heads=3, n=7, seed=0) -> np.ndarray:
  """``[depth, b, heads, n, n]`` row-stochastic, peaked like real attention."""
  logits = 3.0 * np.random.default_rng(seed).normal(size=(depth, b, heads, n, n))
  weights = np.exp(logits)
  return (weights / weights.sum(-1, keepdims=True)).astype(np.float32)


def rollout_loop(attentions: np.ndarray, last: int, fusion: str) -> np.ndarray:
  """Abnar & Zuidema's rollout over the last ``last`` blocks, entry by entry in float64."""
  depth, b, heads, n, _ = attentions.shape
  fuse = {"mean": np.mean, "max": np.max, "min": np.min}[fusion]
  out = np.zeros((b, n, n))
  for image in range(b):
    rollout = np.eye(n)
    for block in range(depth - last, depth):
      a = np.zeros((n, n))
      for i in range(n):
        for j in range(n):
          a[i, j] = fuse([float(attentions[block, image, h, i, j]) for h in range(heads)])
          a[i, j] += 1.0 if i == j else 0.0
        a[i] /= a[i].sum()
      composed = np.zeros((n, n))
      for i in range(n):
        for j in range(n):
          composed[i, j] = sum(a[i, k] * rollout[k, j] for k in range(n))
      rollout = composed
    out[image] = rollout
  return out


@pytest.mark.parametrize("last", [1, 2, 4])
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_matches_float64_loop(last, fusion):
  attentions = random_attentions()
  ours = attention_rollout(list(attentions), num_blocks=last, head_fusion=fusion)
  np.testing.assert_allclose(ours, rollout_loop(attentions, last, fusion), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ours).sum(-1), 1.0, rtol=1e-5)


def test_truncation_keeps_only_the_last_blocks():
  attentions = random_attentions(depth=5, seed=1)
  changed = attentions.copy()
  changed[:3] = random_attentions(depth=3, seed=2)  # the first three blocks differ
  np.testing.assert_array_equal(attention_rollout(attentions, num_blocks=2),
                                attention_rollout(changed, num_blocks=2))
  assert not np.allclose(attention_rollout(attentions, num_blocks=3),
                         attention_rollout(changed, num_blocks=3))
  # None: all blocks; a stacked array and a sequence are the same input.
  np.testing.assert_array_equal(attention_rollout(attentions),
                                attention_rollout(list(attentions), num_blocks=5))
  # One block: (A + I) / 2 for mean fusion of row-stochastic heads.
  np.testing.assert_allclose(attention_rollout(attentions, num_blocks=1),
                             (attentions[-1].mean(1) + np.eye(7)) / 2, rtol=1e-6)


def test_relevance_follows_the_attended_patch():
  # Every head of every block sends the class token's attention to patch 4 (token 5).
  n = 10
  attentions = np.full((2, 1, 2, n, n), 1.0 / n, np.float32)
  attentions[:, :, :, 0] = 0.0
  attentions[:, :, :, 0, 5] = 1.0
  relevance = np.asarray(patch_relevance(attentions))
  assert relevance.shape == (1, 9)
  assert relevance.argmax() == 4
  assert relevance.sum() <= 1.0 + 1e-6 and relevance.min() >= 0.0


def test_vit_relevance_pooled_to_the_embedding_grid():
  model = EmbeddingModel(backbone=ViTTiny(), embed_dim=8, grid_size=2)
  images = np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype(np.float32)
  variables = random_variables(model, images.shape)
  _, aux = jax.jit(model.backbone.apply)({"params": variables["params"]["backbone"]}, images)
  relevance = patch_relevance(aux["attentions"], num_blocks=2)
  assert relevance.shape == (2, 4 * 6)
  grid = relevance.reshape(aux["feature_map"].shape[:3])
  mu = pool_relevance(grid, grid_size=2)
  assert mu.shape == (2, 4)
  # The same cells, in the same order, as the local embeddings' pooling.
  np.testing.assert_allclose(mu, grid_pool(grid[..., None], 2).reshape(2, 4), rtol=1e-6)
  assert np.all(np.asarray(mu) > 0)


@pytest.mark.parametrize("attentions, num_blocks, message", [
    (random_attentions(depth=3), 0, r"`num_blocks` must be an integer in 1..3"),
    (random_attentions(depth=3), 4, r"`num_blocks` must be an integer in 1..3"),
    ([], None, "at least one block"),
    (random_attentions(depth=1)[0], None, r"block 0 has shape \(3, 7, 7\)"),
    ([np.zeros((1, 2, 5, 5)), np.zeros((1, 2, 6, 6))], None, r"block 1 has shape \(1, 2, 6, 6\)"),
    ([np.zeros((1, 2, 5, 4))], None, r"block 0 has shape \(1, 2, 5, 4\)"),
])
def test_bad_attentions_raise_value_error(attentions, num_blocks, message):
  with pytest.raises(ValueError, match=message):
    attention_rollout(attentions, num_blocks=num_blocks)


def test_bad_fusion_and_relevance_shapes_raise_value_error():
  with pytest.raises(ValueError, match="`head_fusion` must be 'mean', 'max' or 'min'"):
    attention_rollout(random_attentions(), head_fusion="median")
  with pytest.raises(ValueError, match=r"`relevance` must be a map \[b, h, w\]; got shape"
                     r" \(2, 16\)"):
    pool_relevance(np.ones((2, 16)), grid_size=2)
