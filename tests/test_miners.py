"""diml_jax.miners against loop references written here (float64 NumPy)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diml_jax import losses, miners

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 5])
B = len(LABELS)


def embeddings(seed, dim=8):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(LABELS.max() + 1, dim))[LABELS] + 0.9 * rng.normal(size=(B, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def distances64(x):
  x = x.astype(np.float64)
  return np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0.0))


def test_all_pairs_and_triplets_match_loops():
  pairs = miners.all_pairs(LABELS)
  triplets = np.asarray(miners.all_triplets(LABELS))
  for i in range(B):
    for j in range(B):
      assert pairs.positive[i, j] == (i != j and LABELS[i] == LABELS[j])
      assert pairs.negative[i, j] == (LABELS[i] != LABELS[j])
  want = [(a, p, n) for a in range(B) for p in range(B) for n in range(B)
          if a != p and LABELS[a] == LABELS[p] and LABELS[a] != LABELS[n]]
  assert sorted(zip(*np.nonzero(triplets))) == want


def test_multi_similarity_mining_matches_loop():
  x = embeddings(0)
  s = (x.astype(np.float64) @ x.T.astype(np.float64)).astype(np.float32)
  got = jax.tree.map(np.asarray, miners.multi_similarity(jnp.asarray(s), LABELS, epsilon=0.1))
  for i in range(B):
    pos = [j for j in range(B) if j != i and LABELS[j] == LABELS[i]]
    neg = [j for j in range(B) if LABELS[j] != LABELS[i]]
    min_pos = min(s[i, pos]) if pos else np.inf
    max_neg = max(s[i, neg])
    assert set(np.nonzero(got.positive[i])[0]) == {j for j in pos if s[i, j] - 0.1 < max_neg}
    assert set(np.nonzero(got.negative[i])[0]) == {j for j in neg if s[i, j] + 0.1 > min_pos}
  assert 0 < int(got.negative.sum()) < int(miners.all_pairs(LABELS).negative.sum())


def test_semihard_triplets_match_loop():
  d = distances64(embeddings(1)).astype(np.float32)
  got = np.asarray(miners.semihard_triplets(jnp.asarray(d), LABELS, margin=0.3))
  want = [(a, p, n) for a in range(B) for p in range(B) for n in range(B)
          if a != p and LABELS[a] == LABELS[p] and LABELS[a] != LABELS[n]
          and 0 < d[a, n] - d[a, p] <= 0.3]
  assert 0 < len(want) and sorted(zip(*np.nonzero(got))) == want


def inverse_density_probabilities(d, labels, dim, cutoff, nonzero_loss_cutoff=None):
  """Reference negative-sampling probabilities [b, b] (Wu et al. 2017, Sec. 4), float64."""
  p = np.zeros_like(d)
  for i in range(len(labels)):
    w = {}
    for j in range(len(labels)):
      if labels[j] == labels[i]:
        continue
      dj = max(d[i, j], cutoff)
      if nonzero_loss_cutoff is not None and dj >= nonzero_loss_cutoff:
        continue
      w[j] = (2 - dim) * np.log(dj) - (dim - 3) / 2 * np.log(1 - dj * dj / 4)
    if not w:  # nothing within the cutoff: uniform over the negatives
      w = {j: 0.0 for j in range(len(labels)) if labels[j] != labels[i]}
    top = max(w.values())
    for j, lw in w.items():
      p[i, j] = np.exp(lw - top)
    p[i] /= p[i].sum()
  return p


@pytest.mark.parametrize("nonzero_loss_cutoff", [None, 1.4])
def test_distance_weighted_sampling_follows_the_inverse_sphere_density(nonzero_loss_cutoff):
  """Empirical frequencies over 4000 keys against the probabilities computed here."""
  dim = 8  # small, so that the probabilities are spread over several negatives
  d = distances64(embeddings(2, dim))
  # Anchor 11's negatives all beyond 1.4: exercises the uniform fall-back.
  d[11, :11] = d[:11, 11] = np.linspace(1.45, 1.9, 11)
  want = inverse_density_probabilities(d, LABELS, dim, 0.5, nonzero_loss_cutoff)
  keys = jax.random.split(jax.random.key(0), 4000)
  draw = jax.jit(jax.vmap(lambda k: miners.distance_weighted(
      k, jnp.asarray(d, jnp.float32), LABELS, dim=dim,
      nonzero_loss_cutoff=nonzero_loss_cutoff)))
  s = draw(keys)
  neg = np.asarray(s.negative)
  freq = np.stack([np.bincount(neg[:, i], minlength=B) for i in range(B)]) / len(keys)
  np.testing.assert_allclose(freq, want, atol=0.035)
  assert want.max(1).min() < 0.9  # the draws are not trivially deterministic
  # Positives: uniform over the other images of the class; none for singletons.
  pos = np.asarray(s.positive)
  for i in range(B):
    mates = [j for j in range(B) if j != i and LABELS[j] == LABELS[i]]
    assert bool(s.has_positive[0, i]) == bool(mates)
    if mates:
      counts = np.bincount(pos[:, i], minlength=B)[mates] / len(keys)
      np.testing.assert_allclose(counts, 1 / len(mates), atol=0.035)
    else:
      assert np.all(pos[:, i] == i)


def test_distance_weighted_flags_missing_partners():
  labels = np.zeros(4, int)  # one class: no negatives
  x = jnp.asarray(embeddings(3)[:4])
  s = miners.distance_weighted(jax.random.key(0), losses.euclidean_distance(x), labels, dim=8)
  assert not np.any(s.has_negative) and np.all(s.has_positive)
  np.testing.assert_array_equal(s.negative, np.arange(4))  # the anchor itself, flagged
  pairs = s.pairs
  assert pairs.positive.shape == (4, 2) and not np.any(pairs.negative)
  np.testing.assert_array_equal(pairs.positive, np.stack([np.ones(4), np.zeros(4)], 1))


# --- the published samplers: candidate sets written as loops, frequencies over many keys ---
KEYS = jax.random.split(jax.random.key(7), 3000)


def positives_of(i, labels=LABELS):
  return [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]


def negatives_of(i, labels=LABELS):
  return [j for j in range(len(labels)) if labels[j] != labels[i]]


def assert_uniform(draws, allowed):
  """``draws``: indices drawn for one anchor (same allowed set); uniform over ``allowed``."""
  assert set(np.unique(draws)) <= set(allowed), (set(np.unique(draws)), allowed)
  freq = np.bincount(draws, minlength=B)[allowed] / len(draws)
  np.testing.assert_allclose(freq, 1 / len(allowed), atol=0.04)


def test_random_triplet_miner_draws_b_distinct_triplets_uniformly():
  valid = {(a, p, n) for a in range(B) for p in positives_of(a) for n in negatives_of(a)}
  masks = np.asarray(jax.jit(jax.vmap(lambda k: miners.random_triplets(k, LABELS)))(KEYS))
  assert masks.shape == (len(KEYS), B, B, B)
  for m in masks[:50]:
    picked = set(zip(*np.nonzero(m)))
    assert len(picked) == B and picked <= valid  # b distinct triplets, all valid
  # Each of the 148 triplets is in a draw with probability b / 148.
  freq = masks.mean(0)[tuple(np.array(sorted(valid)).T)]
  np.testing.assert_allclose(freq, B / len(valid), atol=0.025)
  # Fewer triplets than b: all of them.
  few = miners.random_triplets(KEYS[0], np.array([0, 0, 1, 2]))
  assert int(few.sum()) == 4


def test_semihard_miner_samples_inside_the_window_or_any_negative():
  d = distances64(embeddings(4)).astype(np.float32)
  s = jax.tree.map(np.asarray, jax.jit(jax.vmap(
      lambda k: miners.semihard(k, jnp.asarray(d), LABELS, margin=0.3)))(KEYS))
  windows_used = 0
  for a in range(B):
    pos = positives_of(a)
    assert s.has_positive[0, a] == bool(pos) and s.has_negative[0, a]
    if not pos:
      continue
    assert_uniform(s.positive[:, a], pos)
    for p in pos:
      window = [n for n in negatives_of(a) if d[a, p] < d[a, n] < d[a, p] + 0.3]
      windows_used += bool(window)
      drawn = s.negative[s.positive[:, a] == p, a]
      assert_uniform(drawn, window or negatives_of(a))
  assert 0 < windows_used < sum(len(positives_of(a)) for a in range(B))  # both branches


def test_softhard_miner_samples_hard_positives_and_negatives():
  d = distances64(embeddings(5)).astype(np.float32)
  s = jax.tree.map(np.asarray, jax.jit(jax.vmap(
      lambda k: miners.softhard(k, jnp.asarray(d), LABELS)))(KEYS))
  hard_found = [0, 0]
  for a in range(B):
    pos, neg = positives_of(a), negatives_of(a)
    if not pos:
      assert not s.has_positive[0, a]
      continue
    hard_pos = [p for p in pos if d[a, p] > min(d[a, n] for n in neg)]
    hard_neg = [n for n in neg if d[a, n] < max(d[a, p] for p in pos)]
    hard_found[0] += bool(hard_pos)
    hard_found[1] += bool(hard_neg)
    assert_uniform(s.positive[:, a], hard_pos or pos)
    assert_uniform(s.negative[:, a], hard_neg or neg)
  assert hard_found[0] > 0 and hard_found[1] > 0


def test_npair_miner_one_positive_per_anchor_and_every_other_class():
  pairs = jax.tree.map(np.asarray, jax.jit(jax.vmap(
      lambda k: miners.npair(k, LABELS)))(KEYS))
  for a in range(B):
    pos = positives_of(a)
    assert np.all(pairs.positive[:, a].sum(1) == (1 if pos else 0))
    want_neg = np.isin(np.arange(B), negatives_of(a)) if pos else np.zeros(B, bool)
    assert np.all(pairs.negative[:, a] == want_neg)
    if pos:
      assert_uniform(pairs.positive[:, a].argmax(1), pos)


def test_sampled_triplets_mask_holds_one_triplet_per_complete_anchor():
  s = miners.Sampled(positive=jnp.array([1, 0, 2]), negative=jnp.array([2, 2, 0]),
                     has_positive=jnp.array([True, True, False]),
                     has_negative=jnp.array([True, True, True]))
  assert sorted(zip(*np.nonzero(np.asarray(s.triplets)))) == [(0, 1, 2), (1, 0, 2)]


def test_quadruplet_miner_second_negative_is_of_a_third_class():
  negative = jnp.asarray((np.arange(B) + 5) % B)
  neg = np.asarray(negative)
  index, found = jax.tree.map(np.asarray, jax.jit(jax.vmap(
      lambda k: miners.quadruplet_negatives(k, LABELS, negative)))(KEYS))
  for a in range(B):
    third = [j for j in range(B) if LABELS[j] not in (LABELS[a], LABELS[neg[a]])]
    assert found[0, a]
    assert_uniform(index[:, a], third)
  two_classes = np.array([0, 0, 1, 1])
  _, found = miners.quadruplet_negatives(KEYS[0], two_classes, jnp.array([2, 3, 0, 1]))
  assert not np.any(found)


@pytest.mark.parametrize("call,message", [
    (lambda: miners.all_pairs(np.zeros((2, 3), int)), r"labels must have shape \[b\]"),
    (lambda: miners.multi_similarity(np.ones((3, 4)), np.arange(3)), r"\[b, b\] matrix"),
    (lambda: miners.distance_weighted(jax.random.key(0), np.ones((3, 3)), np.arange(3), dim=2),
     "dim must be"),
    (lambda: miners.distance_weighted(jax.random.key(0), np.ones((3, 3)), np.arange(3), dim=8,
                                      nonzero_loss_cutoff=0.4), "nonzero_loss_cutoff"),
    (lambda: miners.random_triplets(jax.random.key(0), np.arange(3), num=0), "num must be"),
    (lambda: miners.quadruplet_negatives(jax.random.key(0), np.arange(3), np.ones(3)),
     "negative must be int"),
])
def test_miner_bad_arguments_raise_clear_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()
