"""The published DIML baselines' losses against loop-over-examples references in float64 torch.

Each reference is written here from the paper and the published criterion
(``criteria/*.py`` of the DIML code) as a plain Python loop over anchors, tuples, proxies
or histogram bins, in float64 PyTorch so that autograd gives the reference gradient.
Mined tuples come from :mod:`diml_jax.miners` (whose sampling ``tests/test_miners.py``
checks against loops) and are handed to the reference as index lists, as the published
miners hand them to the criteria.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diml_jax import losses, miners

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 5])  # classes 4 and 5 have one image
B, D, N_CLASSES = len(LABELS), 6, 6
KEY = jax.random.key(11)


def embeddings(seed, scale=1.0):
  """``[b, d]`` float32, clustered by class (so mining has hard and easy tuples)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(N_CLASSES, D))[LABELS] + 0.9 * rng.normal(size=(B, D))
  return (scale * x).astype(np.float32)


def leaf(a):
  return torch.tensor(np.asarray(a, np.float64), requires_grad=True)


def check(ours, args, ref_value, ref_leaves, rtol=1e-4, atol=1e-5):
  """Value and gradients of ``ours(*args).loss`` against the reference's autograd."""
  value, grads = jax.jit(jax.value_and_grad(
      lambda *a: ours(*a).loss, argnums=tuple(range(len(args)))))(*args)
  ref_value.backward()
  np.testing.assert_allclose(float(value), ref_value.item(), rtol=rtol, atol=atol)
  for g, t in zip(grads, ref_leaves):
    want = np.zeros(t.shape) if t.grad is None else t.grad.numpy()
    np.testing.assert_allclose(np.asarray(g), want, rtol=rtol, atol=atol)
  assert max(float(np.abs(np.asarray(g)).max()) for g in grads) > 1e-3


def unit(v):
  return v / torch.sqrt((v * v).sum())


def dist(a, b):
  return torch.sqrt(((a - b) ** 2).sum() + 1e-8)


def pos_of(i):
  return [j for j in range(B) if j != i and LABELS[j] == LABELS[i]]


def neg_of(i):
  return [j for j in range(B) if LABELS[j] != LABELS[i]]


def npair_picks():
  pairs = jax.tree.map(np.asarray, miners.npair(KEY, LABELS))
  return [(a, int(pairs.positive[a].argmax())) for a in range(B) if pairs.positive[a].any()]


def sampled(miner, x):
  """A miner's ``Sampled`` on the Euclidean distances of unit ``x``, and its triplet list."""
  d = losses.euclidean_distance(jnp.asarray(x))
  s = {"distance": lambda: miners.distance_weighted(KEY, d, LABELS, dim=D),
       "semihard": lambda: miners.semihard(KEY, d, LABELS, margin=0.2),
       "softhard": lambda: miners.softhard(KEY, d, LABELS)}[miner]()
  s = jax.tree.map(np.asarray, s)
  valid = s.has_positive & s.has_negative
  return s, [(a, int(s.positive[a]), int(s.negative[a])) for a in range(B) if valid[a]]


# --- N-pair, angular, lifted: unnormalised embeddings ---------------------------------------
def ref_npair_terms(x, picks):
  return [torch.log(1 + sum(torch.exp(x[a] @ x[n] - x[a] @ x[p]) for n in neg_of(a)))
          for a, p in picks]


def ref_norm_penalty(x, weight=0.005):
  return weight * sum(torch.sqrt((x[i] ** 2).sum()) for i in range(B)) / B


def test_npair_loss_matches_reference():
  x = embeddings(0)
  t, picks = leaf(x), npair_picks()
  assert len(picks) == B - 2  # the singletons have no positive
  ref = sum(ref_npair_terms(t, picks)) / len(picks) + ref_norm_penalty(t)
  check(lambda a: losses.npair_loss(a, LABELS, pairs=miners.npair(KEY, LABELS)),
        (jnp.asarray(x),), ref, [t])


def test_angular_loss_matches_reference():
  x = embeddings(1)
  t, picks = leaf(x), npair_picks()
  tan2 = math.tan(math.radians(45.0)) ** 2
  angular = []
  for a, p in picks:
    xa, xp = unit(t[a]), unit(t[p])
    angular.append(torch.log(1 + sum(
        torch.exp(4 * tan2 * (xa + xp) @ unit(t[n]) - 2 * (1 + tan2) * xa @ xp)
        for n in neg_of(a))))
  ref = (sum(ref_npair_terms(t, picks)) + 2.0 * sum(angular)) / len(picks) + ref_norm_penalty(t)
  check(lambda a: losses.angular_loss(a, LABELS, pairs=miners.npair(KEY, LABELS)),
        (jnp.asarray(x),), ref, [t])


def test_lifted_loss_matches_reference():
  x = embeddings(2)
  t = leaf(x)
  terms = []
  for a in range(B):
    if not pos_of(a):
      continue
    pos = torch.logsumexp(torch.stack([dist(t[a], t[p]) for p in pos_of(a)]), 0)
    neg = torch.logsumexp(torch.stack([1.0 - dist(t[a], t[n]) for n in neg_of(a)]), 0)
    terms.append(F.relu(pos + neg))
  ref = sum(terms) / len(terms) + ref_norm_penalty(t)
  check(lambda a: losses.lifted_loss(a, LABELS), (jnp.asarray(x),), ref, [t])


# --- proxy and classifier losses: gradients for the embeddings and the parameters -----------
def proxies(seed, rows=N_CLASSES):
  return np.random.default_rng(seed).normal(size=(rows, D)).astype(np.float32)


def test_proxy_nca_loss_matches_reference():
  x, w = embeddings(3), proxies(4)
  t, tw = leaf(x), leaf(w)
  total = 0.0
  for i in range(B):
    d = [9 * ((unit(t[i]) - unit(tw[c])) ** 2).sum() for c in range(N_CLASSES)]
    total = total + d[LABELS[i]] + torch.logsumexp(
        torch.stack([-d[c] for c in range(N_CLASSES) if c != LABELS[i]]), 0)
  check(lambda a, p: losses.proxy_nca_loss(losses.proxy_similarity(a, p), LABELS),
        (jnp.asarray(x), jnp.asarray(w)), total / B, [t, tw])


def ref_cross_entropy(logits_of):
  return sum(-F.log_softmax(logits_of(i), 0)[LABELS[i]] for i in range(B)) / B


def test_normalized_softmax_loss_matches_reference():
  x, w = embeddings(5), proxies(6)
  t, tw = leaf(x), leaf(w)
  ref = ref_cross_entropy(lambda i: torch.stack(
      [unit(t[i]) @ unit(tw[c]) / 0.05 for c in range(N_CLASSES)]))
  check(lambda a, p: losses.normalized_softmax_loss(losses.proxy_similarity(a, p), LABELS),
        (jnp.asarray(x), jnp.asarray(w)), ref, [t, tw])


def test_arcface_loss_matches_reference():
  x, w = embeddings(7), proxies(8)
  t, tw = leaf(x), leaf(w)

  def logits(i):
    cos = [unit(t[i]) @ unit(tw[c]) for c in range(N_CLASSES)]
    cos[LABELS[i]] = torch.cos(torch.acos(cos[LABELS[i]]) + 0.5)  # the paper's target logit
    return 16.0 * torch.stack(cos)

  check(lambda a, p: losses.arcface_loss(losses.proxy_similarity(a, p), LABELS),
        (jnp.asarray(x), jnp.asarray(w)), ref_cross_entropy(logits), [t, tw])


@pytest.mark.parametrize("gamma,lam", [(0.1, 8.0), (10.0, 20.0)])  # CUB/Cars and SOP
def test_softtriple_loss_matches_reference(gamma, lam):
  x, k = embeddings(9), 3
  w = np.random.default_rng(10).normal(size=(N_CLASSES, k, D)).astype(np.float32)
  t, tw = leaf(x), leaf(w)

  def logits(i):
    rows = []
    for c in range(N_CLASSES):
      s = torch.stack([unit(t[i]) @ unit(tw[c, j]) for j in range(k)])
      relaxed = (torch.softmax(gamma * s, 0) * s).sum()
      rows.append(lam * (relaxed - (0.01 if c == LABELS[i] else 0.0)))
    return torch.stack(rows)

  reg = sum(torch.sqrt(2 + 1e-5 - 2 * unit(tw[c, j]) @ unit(tw[c, l]))
            for c in range(N_CLASSES) for j in range(k) for l in range(j + 1, k))
  ref = ref_cross_entropy(logits) + 0.2 * reg / (N_CLASSES * k * (k - 1))
  check(lambda a, c: losses.softtriple_loss(losses.centroid_similarity(a, c), LABELS,
                                            centroids=c, gamma=gamma, lam=lam),
        (jnp.asarray(x), jnp.asarray(w)), ref, [t, tw])


# --- histogram ---------------------------------------------------------------------------------
@pytest.mark.parametrize("num_bins", [65, 11])
def test_histogram_loss_matches_reference(num_bins):
  """Bins assigned as the published code (floor of (s + 1) / step), weights linear."""
  x = embeddings(11)
  t = leaf(x)
  step = 2.0 / (num_bins - 1)
  hist = {True: [0.0] * num_bins, False: [0.0] * num_bins}
  count = {True: 0, False: 0}
  for i in range(B):
    for j in range(i + 1, B):
      s = unit(t[i]) @ unit(t[j])
      r = int((s.item() + 1) // step)  # s lies between nodes r and r + 1
      same = bool(LABELS[i] == LABELS[j])
      node = -1 + r * step
      hist[same][r] = hist[same][r] + (node + step - s) / step
      if r + 1 < num_bins:
        hist[same][r + 1] = hist[same][r + 1] + (s - node) / step
      count[same] += 1
  ref, cdf = 0.0, 0.0
  for r in range(num_bins):
    cdf = cdf + hist[True][r] / count[True]
    ref = ref + hist[False][r] / count[False] * cdf
  check(lambda a: losses.histogram_loss(losses.cosine_similarity(a), LABELS,
                                        num_bins=num_bins),
        (jnp.asarray(x),), ref, [t])


# --- tuple losses with the published miners ---------------------------------------------------
def ref_triplet(t, triplets, squared, reduction, margin=0.2):
  terms = []
  for a, p, n in triplets:
    xa, xp, xn = unit(t[a]), unit(t[p]), unit(t[n])
    if squared:
      terms.append(F.relu(((xa - xp) ** 2).sum() - ((xa - xn) ** 2).sum() + margin))
    else:
      terms.append(F.relu(dist(xa, xp) - dist(xa, xn) + margin))
  nonzero = sum(v.item() > 0 for v in terms)
  assert 0 < nonzero
  return sum(terms) / (len(terms) if reduction == "mean" else nonzero)


@pytest.mark.parametrize("miner", ["random", "semihard", "softhard", "distance"])
def test_triplet_loss_with_published_miners_matches_reference(miner):
  """The published criterion: squared distances, mean over the mined triplets."""
  x = embeddings(12)
  t = leaf(x)
  if miner == "random":
    mask = miners.random_triplets(KEY, LABELS)
    triplets = sorted(zip(*np.nonzero(np.asarray(mask))))
    assert len(triplets) == B
  else:
    s, triplets = sampled(miner, x)
    mask = miners.Sampled(*map(jnp.asarray, s)).triplets
  check(lambda a: losses.triplet_loss(losses.euclidean_distance(a), LABELS, triplets=mask,
                                      squared=True, reduction="mean"),
        (jnp.asarray(x),), ref_triplet(t, triplets, True, "mean"), [t])


def test_contrastive_loss_with_distance_miner_matches_reference():
  """Mean over the mined pairs of each part (the published criterion on its triplets)."""
  x = embeddings(13)
  t = leaf(x)
  s, _ = sampled("distance", x)
  # Each anchor's positive pair where it has one (not the singletons), its negative pair.
  pos = [F.relu(dist(unit(t[a]), unit(t[s.positive[a]]))) for a in range(B) if pos_of(a)]
  neg = [F.relu(1.3 - dist(unit(t[a]), unit(t[s.negative[a]]))) for a in range(B)]
  assert 0 < sum(v.item() > 0 for v in neg) < len(neg)
  ref = sum(pos) / len(pos) + sum(neg) / len(neg)
  s = miners.Sampled(*map(jnp.asarray, s))

  def ours(a):
    d = jnp.take_along_axis(losses.euclidean_distance(a), s.partners, axis=1)
    return losses.contrastive_loss(d, LABELS, pairs=s.pairs, neg_margin=1.3,
                                   reduction="mean")

  check(ours, (jnp.asarray(x),), ref, [t])


def test_quadruplet_loss_with_distance_miner_matches_reference():
  x = embeddings(14)
  t = leaf(x)
  s, triplets = sampled("distance", x)
  index, found = jax.tree.map(np.asarray, miners.quadruplet_negatives(
      KEY, LABELS, jnp.asarray(s.negative)))
  first = [F.relu(dist(unit(t[a]), unit(t[p])) - dist(unit(t[a]), unit(t[n])) + 0.2)
           for a, p, n in triplets]
  second = [F.relu(dist(unit(t[a]), unit(t[p])) - dist(unit(t[n]), unit(t[index[a]])) + 0.2)
            for a, p, n in triplets]
  assert all(found[a] for a, _, _ in triplets)
  ref = sum(first) / len(first) + sum(second) / len(second)
  s = miners.Sampled(*map(jnp.asarray, s))
  check(lambda a: losses.quadruplet_loss(
      losses.euclidean_distance(a), LABELS, sampled=s,
      second_negative=(jnp.asarray(index), jnp.asarray(found))),
        (jnp.asarray(x),), ref, [t])


@pytest.mark.parametrize("reg_weight", [0.0, 0.005])
def test_snr_loss_with_distance_miner_matches_reference(reg_weight):
  """var(a - p) / var(a) with torch's unbiased variance; sum / #nonzero."""
  x = embeddings(15)
  t = leaf(x)
  s, triplets = sampled("distance", x)
  xs = [unit(t[i]) for i in range(B)]
  snr = lambda a, b: torch.var(xs[a] - xs[b]) / torch.var(xs[a])
  terms = [F.relu(snr(a, p) - snr(a, n) + 0.2) for a, p, n in triplets]
  nonzero = sum(v.item() > 0 for v in terms)
  assert 0 < nonzero < len(terms)
  reg = sum(torch.abs(xs[a].sum()) for a, _, _ in triplets) / len(triplets)
  ref = sum(terms) / nonzero + reg_weight * reg
  mask = miners.Sampled(*map(jnp.asarray, s)).triplets
  check(lambda a: losses.snr_loss(a / jnp.linalg.norm(a, axis=1, keepdims=True), LABELS,
                                  triplets=mask, reg_weight=reg_weight),
        (jnp.asarray(x),), ref, [t])


# --- degenerate batches and errors -------------------------------------------------------------
def _baseline_losses(x, labels, key):
  g = x / jnp.linalg.norm(x, axis=1, keepdims=True)
  d, s = losses.euclidean_distance(x), losses.cosine_similarity(x)
  w = jnp.ones((6, x.shape[1])) + jnp.arange(6.0)[:, None]
  pick = miners.distance_weighted(key, d, labels, dim=x.shape[1])
  return {
      "npair": losses.npair_loss(x, labels, pairs=miners.npair(key, labels), l2_weight=0.0),
      "angular": losses.angular_loss(x, labels, pairs=miners.npair(key, labels), l2_weight=0.0),
      "lifted": losses.lifted_loss(x, labels, l2_weight=0.0),
      "histogram": losses.histogram_loss(s, labels),
      "triplet_random": losses.triplet_loss(d, labels, triplets=miners.random_triplets(
          key, labels), squared=True, reduction="mean"),
      "triplet_softhard": losses.triplet_loss(d, labels, triplets=miners.softhard(
          key, d, labels).triplets, squared=True, reduction="mean"),
      "quadruplet": losses.quadruplet_loss(d, labels, sampled=pick, second_negative=(
          miners.quadruplet_negatives(key, labels, pick.negative))),
      "snr": losses.snr_loss(g, labels, triplets=pick.triplets),
      "proxynca": losses.proxy_nca_loss(losses.proxy_similarity(x, w), labels),
      "arcface": losses.arcface_loss(losses.proxy_similarity(x, w), labels),
  }


BASELINE_NAMES = list(_baseline_losses(jnp.ones((2, D)), np.arange(2), KEY))


def test_baseline_losses_on_degenerate_batches_are_finite_and_empty_tuples_give_zero():
  """One class (no negatives), all singletons (no positives), identical images."""
  def stacked(x, labels):
    return jnp.stack([o.loss for o in _baseline_losses(x, labels, KEY).values()])

  run = jax.jit(lambda x, labels: (stacked(x, labels), jax.jacrev(stacked)(x, labels)))
  rng = np.random.default_rng(16)
  pairwise = ["npair", "angular", "lifted", "triplet_random", "triplet_softhard",
              "quadruplet", "snr"]
  cases = {
      "one class": (rng.normal(size=(6, D)), np.zeros(6, int), pairwise + ["histogram"]),
      "all singletons": (rng.normal(size=(6, D)), np.arange(6), pairwise + ["histogram"]),
      "identical images": (np.ones((6, D)), np.array([0, 0, 1, 1, 2, 2]), []),
  }
  for case, (x, labels, zero) in cases.items():
    values, grads = run(jnp.asarray(x, jnp.float32), jnp.asarray(labels))
    for n, name in enumerate(BASELINE_NAMES):
      assert np.isfinite(float(values[n])), (case, name)
      assert np.all(np.isfinite(np.asarray(grads[n]))), (case, name)
      if name in zero:
        assert float(values[n]) == 0.0 and not np.any(np.asarray(grads[n])), (case, name)


@pytest.mark.parametrize("call,message", [
    (lambda: losses.histogram_loss(np.ones((4, 4)), np.arange(4), num_bins=1), "num_bins"),
    (lambda: losses.proxy_nca_loss(np.ones((3, 5)), np.arange(4)), r"\[b, n_classes\]"),
    (lambda: losses.softtriple_loss(np.ones((4, 5)), np.arange(4)), r"\[b, n_classes, k\]"),
    (lambda: losses.softtriple_loss(np.ones((4, 5, 2)), np.arange(4),
                                    centroids=np.ones((5, 3, 8))), "centroids must be"),
    (lambda: losses.npair_loss(np.ones((4, 8, 2)), np.arange(4),
                               pairs=miners.all_pairs(np.arange(4))), r"embeddings \[b, d\]"),
    (lambda: losses.contrastive_loss(np.ones((4, 2)), np.arange(4)), r"\[b, b\] matrix"),
    (lambda: losses.triplet_loss(np.ones((4, 4)), np.arange(4), reduction="sum"),
     "reduction must be"),
    (lambda: losses.snr_distance(np.ones((4, 1))), "d >= 2"),
])
def test_baseline_loss_bad_arguments_raise_clear_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()
