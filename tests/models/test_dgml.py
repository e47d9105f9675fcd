"""DGML attentive grouping: the head against a float64 NumPy forward, its invariance to spatial
permutations, the diversity loss against a transcription of the reference's binomial deviance,
the model around a backbone, and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diml_jax.models import AttentiveGrouping, GroupingModel, ResNetTiny, diversity_loss
from tests.models.helpers import random_variables


def grouping_loop(feature_map, key, value, queries):
  """DGML's grouping, position by position, in float64: ``(groups [b, k, d], att [b, k, h, w])``."""
  b, h, w, c = feature_map.shape
  k = queries.shape[1]
  groups = np.zeros((b, k, value.shape[1]))
  attention = np.zeros((b, k, h, w))
  for image in range(b):
    for g in range(k):
      logits = np.zeros((h, w))
      for i in range(h):
        for j in range(w):
          logits[i, j] = feature_map[image, i, j] @ key @ queries[:, g]
      weights = np.exp(logits - logits.max())
      weights /= weights.sum()
      attention[image, g] = weights
      for i in range(h):
        for j in range(w):
          groups[image, g] += weights[i, j] * (feature_map[image, i, j] @ value)
      groups[image, g] /= np.linalg.norm(groups[image, g])
  return groups, attention


def _head_and_variables(c=16, group_dim=4, seed=0):
  head = AttentiveGrouping(num_groups=3, group_dim=group_dim)
  variables = random_variables(head, (2, 3, 5, c), seed=seed)
  # Scaled up so that the attention is far from uniform.
  variables["params"]["queries"] = 20.0 * variables["params"]["queries"]
  return head, variables


def test_head_matches_float64_loop():
  head, variables = _head_and_variables()
  params = variables["params"]
  assert params["key"]["kernel"].shape == (16, 2)  # c / 8 key channels
  assert params["value"]["kernel"].shape == (16, 4)
  assert params["queries"].shape == (2, 3)
  assert set(params["key"]) == set(params["value"]) == {"kernel"}  # no biases
  feature_map = np.random.default_rng(1).normal(size=(2, 3, 5, 16)).astype(np.float32)
  groups, attention = head.apply(variables, feature_map)
  expected_groups, expected_attention = grouping_loop(
      feature_map.astype(np.float64), *(np.asarray(p, np.float64) for p in (
          params["key"]["kernel"], params["value"]["kernel"], params["queries"])))
  np.testing.assert_allclose(groups, expected_groups, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(attention, expected_attention, rtol=1e-5, atol=1e-7)
  assert np.asarray(attention).max() > 3 / 15  # far from uniform: a wrong axis would show


def test_grouping_is_invariant_to_spatial_permutations():
  head, variables = _head_and_variables(seed=2)
  feature_map = np.random.default_rng(3).normal(size=(2, 4, 6, 16)).astype(np.float32)
  order = np.random.default_rng(4).permutation(24)
  shuffled = feature_map.reshape(2, 24, 16)[:, order].reshape(2, 4, 6, 16)
  groups, attention = head.apply(variables, feature_map)
  shuffled_groups, shuffled_attention = head.apply(variables, shuffled)
  np.testing.assert_allclose(shuffled_groups, groups, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(shuffled_attention.reshape(2, 3, 24),
                             np.asarray(attention).reshape(2, 3, 24)[:, :, order], atol=1e-7)


def reference_diversity(groups, beta1=2.0, beta2=0.5, cost=25.0):
  """The reference's dirdiv_bd: bd_loss between groups i < j with an identity negative mask."""
  n, k, _ = groups.shape
  e = groups / np.linalg.norm(groups, axis=-1, keepdims=True)
  pos_mask, neg_mask = np.zeros((n, n)), np.eye(n)
  loss = 0.0
  for i in range(k):
    for j in range(i + 1, k):
      sim = e[:, i] @ e[:, j].T
      act = beta1 * (sim - beta2) * (-1.0 * pos_mask + cost * neg_mask)
      norm = pos_mask / max(1e-5, pos_mask.sum()) + neg_mask / max(1e-5, neg_mask.sum())
      loss += np.sum(np.log(np.exp(act) + 1.0) * norm)
  return loss / (k - 1) if k > 1 else loss


@pytest.mark.parametrize("k", [2, 3, 5])
def test_diversity_loss_matches_the_reference_formula(k):
  groups = np.random.default_rng(k).normal(size=(6, k, 8))
  groups[:, 1] += 1.5 * groups[:, 0]  # some pairs similar, so no term is ~0
  np.testing.assert_allclose(diversity_loss(groups.astype(np.float32)),
                             reference_diversity(groups), rtol=1e-5)
  np.testing.assert_allclose(diversity_loss(groups, beta1=1.0, beta2=0.2, cost=10.0),
                             reference_diversity(groups, 1.0, 0.2, 10.0), rtol=1e-5)


def test_diversity_loss_pushes_the_groups_apart():
  same = np.ones((4, 3, 8), np.float32)
  apart = np.zeros((4, 3, 8), np.float32)
  apart[:, 0, 0] = apart[:, 1, 1] = apart[:, 2, 2] = 1.0
  # Identical groups: softplus(2 * 25 * 0.5) per pair, 3 pairs over k - 1 = 2.
  np.testing.assert_allclose(diversity_loss(same), 1.5 * np.logaddexp(0.0, 25.0), rtol=1e-6)
  assert float(diversity_loss(apart)) < 1e-9
  groups = np.random.default_rng(5).normal(size=(4, 3, 8)).astype(np.float32)
  groups[:, 1] = groups[:, 0] + 0.1 * groups[:, 1]
  step = groups - 0.01 * np.asarray(jax.grad(diversity_loss)(groups))
  cosine = lambda g: np.sum(g[:, 0] * g[:, 1], -1) / np.linalg.norm(g[:, 0], axis=-1) \
      / np.linalg.norm(g[:, 1], axis=-1)
  assert np.all(cosine(step) < cosine(groups))
  assert float(diversity_loss(groups[:, :1])) == 0.0  # one group: nothing to diversify


def test_grouping_model_around_a_backbone():
  model = GroupingModel(backbone=ResNetTiny(), num_groups=3, group_dim=8)
  images = np.random.default_rng(6).normal(size=(2, 64, 96, 3)).astype(np.float32)
  variables = random_variables(model, images.shape)
  embedding, aux = jax.jit(model.apply)(variables, images)
  assert embedding.shape == (2, 24)
  assert aux["groups"].shape == (2, 3, 8)
  assert aux["group_attention"].shape == (2, 3, 2, 3)  # the 2x3 map of a stride-32 ResNet
  np.testing.assert_allclose(np.linalg.norm(embedding, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(aux["groups"], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(aux["group_attention"]).sum((-2, -1)), 1.0, rtol=1e-5)
  np.testing.assert_allclose(embedding, np.asarray(aux["groups"]).reshape(2, 24) / np.sqrt(3),
                             rtol=1e-6)
  groups, attention = AttentiveGrouping(3, 8, name="grouping").apply(
      {"params": variables["params"]["grouping"]}, aux["feature_map"])
  np.testing.assert_allclose(groups, aux["groups"], rtol=1e-6)


@pytest.mark.parametrize("shape, kwargs, message", [
    ((2, 5, 16), {}, r"non-empty \[b, h, w, c\]; got shape \(2, 5, 16\)"),
    ((2, 3, 5, 4), {}, r"4 channels give no key channel with `key_reduction`=8"),
    ((2, 3, 5, 16), {"num_groups": 0}, r"`num_groups` and `group_dim` must be >= 1; got 0"),
])
def test_bad_feature_maps_and_sizes_raise_value_error(shape, kwargs, message):
  with pytest.raises(ValueError, match=message):
    AttentiveGrouping(**kwargs).init(jax.random.key(0), jnp.zeros(shape))


def test_bad_groups_and_images_raise_value_error():
  with pytest.raises(ValueError, match=r"`groups` must be group embeddings \[b, k, d\]"):
    diversity_loss(np.zeros((4, 8)))
  model = GroupingModel(backbone=ResNetTiny(), group_dim=8)
  with pytest.raises(ValueError, match="NCHW"):
    model.init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)))
