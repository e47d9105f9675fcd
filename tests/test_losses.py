"""diml_jax.losses against independent loop-over-pairs references in float64 PyTorch.

Each reference below is written from the papers / the published criteria as plain Python
loops over anchors, pairs, triplets or proxies (the way pytorch-metric-learning tests its
losses), in float64 PyTorch so that autograd gives the reference gradient too.

Structural quantities: the flow T of every pair comes from a float64 NumPy Sinkhorn written
here (run to convergence) and is held constant, as the published method does; the DIML
similarity and distance are then torch functions of the raw local features, so the
reference gradient with respect to the features is the published one. diml_jax runs its
own matching (with a tight threshold, so both sides use the same converged flow).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F

from diml_jax import losses, matching, miners

B, R, C = 12, 4, 8
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 5])  # classes 4 and 5 have one image
N_CLASSES = 6
TIGHT = losses.StructuralOptions(  # for diml_jax
    solver=matching.SinkhornOptions(threshold=1e-5, max_iterations=3000))


def tight(marginals):
  """:data:`TIGHT` with other marginals."""
  return losses.StructuralOptions(marginals=marginals, solver=TIGHT.solver)


def features(seed=0, b=B, labels=LABELS):
  """Local features ``[b, r, c]``: a class prototype per part, noise, a shared direction.

  The shared direction (CNN features have one) keeps the cross-correlation marginals
  dense enough for the float64 reference Sinkhorn to converge in milliseconds.
  """
  rng = np.random.default_rng(seed)
  proto = rng.normal(size=(labels.max() + 1, R, C))
  x = proto[labels] + 0.8 * rng.normal(size=(b, R, C)) + rng.normal(size=C)
  return x[:, rng.permutation(R)].astype(np.float32)  # parts move between images


# --- independent references -------------------------------------------------------------
def sinkhorn64(x, y, gx, gy, eps=0.05, tol=1e-11, marginals="cross"):
  """float64 DIML flow between raw local features ``x [r, c]`` and ``y``, converged.

  ``marginals``: ``"cross"``, the paper's (a part of x weighs its correlation with y's
  global vector), or ``"cross_swapped"``, the published criteria's ``cross_attention``
  (x's parts get the weights relu(<g_x, y_i>) of y's parts, and y's those of x's).
  """
  unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
  x, y, gx, gy = (unit(np.asarray(a, np.float64)) for a in (x, y, gx, gy))
  S = x @ y.T
  # An image whose parts all anti-correlate with the other: uniform (matching's rule).
  prob = lambda w: (np.maximum(w, 0) / np.maximum(w, 0).sum() if np.maximum(w, 0).sum() > 1e-6
                    else np.full(len(w), 1.0 / len(w)))
  mu, nu = prob(x @ gy), prob(y @ gx)
  if marginals == "cross_swapped":
    mu, nu = prob(y @ gx), prob(x @ gy)
  K = np.exp(-(1.0 - S) / eps)
  c = np.ones(len(y))
  for i in range(50_000):
    r = mu / (K @ c)
    c = nu / (K.T @ r)
    if i % 10 == 0 and np.abs((r[:, None] * K * c).sum(1) - mu).sum() < tol:
      return r[:, None] * K * c[None, :]
  raise AssertionError("the reference Sinkhorn did not converge")


def diml_pair(x, y, T, quantity):
  """DIML similarity or distance of torch ``x [r, c]``, ``y`` with a constant flow T."""
  gx, gy = F.normalize(x.mean(0), dim=0), F.normalize(y.mean(0), dim=0)
  xn, yn = F.normalize(x, dim=1), F.normalize(y, dim=1)
  T = torch.from_numpy(T)
  if quantity == "similarity":
    return ((T * (xn @ yn.T)).sum() + gx @ gy) / 2
  # The published criteria/margin_diml.py adds 1e-6 under both square roots.
  d_local = torch.sqrt(((xn[:, None] - yn[None]) ** 2).sum(-1) + 1e-6)
  return ((T * d_local).sum() + torch.sqrt(((gx - gy) ** 2).sum() + 1e-6)) / 2


def global_pair(x, y, quantity):
  gx, gy = F.normalize(x.mean(0), dim=0), F.normalize(y.mean(0), dim=0)
  if quantity == "similarity":
    return gx @ gy
  return torch.sqrt(((gx - gy) ** 2).sum() + 1e-8)


class Quantities:
  """Pair quantities ``q(i, j, quantity)`` of raw local features (torch float64 leaf ``x``).

  ``quantity``: ``"similarity"`` / ``"distance"`` (global or DIML, as ``structural``), or
  ``"proxy"``: the cosine of image ``i``'s global vector and proxy ``j``.
  """

  def __init__(self, x, structural, proxies=None, marginals="cross"):
    self.x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    self.leaf = self.x
    self.structural = structural
    self.marginals = marginals
    self.proxies = None if proxies is None else F.normalize(torch.from_numpy(proxies), dim=1)
    self._cache = {}

  def __call__(self, i, j, quantity):
    if (i, j, quantity) not in self._cache:
      if quantity == "proxy":
        value = F.normalize(self.x[i].mean(0), dim=0) @ self.proxies[j]
      elif self.structural:
        x = self.x.detach().numpy()
        T = sinkhorn64(x[i], x[j], x[i].mean(0), x[j].mean(0), marginals=self.marginals)
        value = diml_pair(self.x[i], self.x[j], T, quantity)
      else:
        value = global_pair(self.x[i], self.x[j], quantity)
      self._cache[i, j, quantity] = value
    return self._cache[i, j, quantity]


class Matrices:
  """Pair quantities read from given float64 matrices; the reference gradient is w.r.t. them."""

  def __init__(self, matrices):
    self.m = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in matrices.items()}
    self.leaf = self.m

  def __call__(self, i, j, quantity):
    return self.m[quantity][i, j]


def ref_margin(q, labels, beta, partners, margin=0.2):
  """Margin loss over (anchor, partner, is_positive) pairs: sum / #nonzero terms."""
  total, count = 0.0, 0
  for i, j, positive in partners:
    d = q(i, j, "distance")
    b = beta[labels[i]]
    term = F.relu(d - b + margin) if positive else F.relu(b - d + margin)
    total = total + term
    count += int(term.item() > 0)
  return total / count


def ref_multi_similarity(q, labels, reduction, a=2.0, b=40.0, eps=0.1, lam=0.5):
  """Per anchor, as the published criterion: mine, then the two soft terms."""
  n = len(labels)
  per_anchor = []
  for i in range(n):
    pos = [q(i, j, "similarity") for j in range(n) if labels[j] == labels[i] and j != i]
    neg = [q(i, j, "similarity") for j in range(n) if labels[j] != labels[i]]
    min_pos = min(p.item() for p in pos) if pos else np.inf
    max_neg = max(s.item() for s in neg) if neg else -np.inf
    pos = [p for p in pos if p.item() - eps < max_neg]
    neg = [s for s in neg if s.item() + eps > min_pos]
    if reduction == "complete_anchors" and (not pos or not neg):
      continue
    term = 0.0
    if pos:
      term = term + torch.log(1 + sum(torch.exp(-a * (p - lam)) for p in pos)) / a
    if neg:
      term = term + torch.log(1 + sum(torch.exp(b * (s - lam)) for s in neg)) / b
    per_anchor.append(term)
  if reduction == "all_anchors":
    return sum(per_anchor) / n
  return sum(per_anchor) / len(per_anchor)


def ref_triplet(q, labels, triplets, margin=0.2):
  total, count = 0.0, 0
  for a, p, n in triplets:
    term = F.relu(q(a, p, "distance") - q(a, n, "distance") + margin)
    total = total + term
    count += int(term.item() > 0)
  return total / count


def ref_contrastive(q, labels, pos_margin=0.0, neg_margin=1.0):
  n = len(labels)
  parts = []
  for positive in (True, False):
    total, count = 0.0, 0
    for i in range(n):
      for j in range(n):
        if i == j or (labels[i] == labels[j]) != positive:
          continue
        d = q(i, j, "distance")
        term = F.relu(d - pos_margin) if positive else F.relu(neg_margin - d)
        total = total + term
        count += int(term.item() > 0)
    parts.append(total / count if count else 0.0)
  return parts[0] + parts[1]


def ref_proxy_anchor(q, labels, n_classes, alpha=32.0, delta=0.1):
  """Per proxy: log(1 + sum over its positives / negatives) of s = q(i, p, "proxy")."""
  sim = lambda i, p: q(i, p, "proxy")
  with_pos = [p for p in range(n_classes) if (labels == p).any()]
  pos = sum(
      torch.log(1 + sum(torch.exp(-alpha * (sim(i, p) - delta))
                        for i in range(len(labels)) if labels[i] == p))
      for p in with_pos)
  neg = sum(
      torch.log(1 + sum(torch.exp(alpha * (sim(i, p) + delta))
                        for i in range(len(labels)) if labels[i] != p))
      for p in range(n_classes))
  return pos / len(with_pos) + neg / n_classes




# --- helpers and the table of losses ------------------------------------------------
def reference_matrices(x, proxies):
  """float64 DIML similarity / distance [b, b] of features x, and similarity to part proxies.

  The diagonal (an image with itself) is never used by a loss and is set to NaN-free
  placeholders.
  """
  q = Quantities(x, structural=True)
  m = {k: np.eye(B) * (k == "similarity") for k in ("similarity", "distance")}
  with torch.no_grad():
    for i in range(B):
      for j in range(B):
        if i != j:
          for k in m:
            m[k][i, j] = q(i, j, k).item()
    xt = torch.from_numpy(x.astype(np.float64))
    pt = torch.from_numpy(proxies)
    m["proxy"] = np.array([[diml_pair(xt[i], pt[p], sinkhorn64(
        x[i], proxies[p], x[i].mean(0), proxies[p].mean(0)), "similarity").item()
        for p in range(len(proxies))] for i in range(B)])
  return m


def global_matrices(a, proxies):
  """diml_jax's global matrices of raw local features a [b, r, c]."""
  g = a.mean(1)
  return {"similarity": losses.cosine_similarity(g), "distance": losses.euclidean_distance(g),
          "proxy": losses.proxy_similarity(g, proxies), "global_distance":
          losses.euclidean_distance(g)}


def check(ours, args, ref_value, ref_leaves, rtol=1e-4, atol=2e-5):
  """Value and gradients of ``ours(*args).loss`` against the reference's autograd."""
  value, grads = jax.jit(jax.value_and_grad(lambda *a: ours(*a).loss, argnums=tuple(
      range(len(args)))))(*args)
  ref_value.backward()
  np.testing.assert_allclose(float(value), ref_value.item(), rtol=rtol, atol=atol)
  leaves = jax.tree.leaves(ref_leaves)
  assert len(leaves) == len(jax.tree.leaves(grads))
  for g, leaf in zip(jax.tree.leaves(grads), leaves):
    want = np.zeros(leaf.shape) if leaf.grad is None else leaf.grad.numpy()
    np.testing.assert_allclose(np.asarray(g), want, rtol=rtol, atol=atol)
  assert max(np.abs(leaf.grad.numpy()).max() for leaf in leaves if leaf.grad is not None) > 1e-3


KEY = jax.random.key(3)
BETA = np.linspace(1.0, 1.3, N_CLASSES)


def picks(global_distance):
  """The distance-weighted miner's pairs, as (anchor, partner, is_positive) for the references."""
  s = jax.tree.map(np.asarray, jax.jit(miners.distance_weighted, static_argnames="dim")(
      KEY, global_distance, LABELS, dim=C))
  pairs = [(i, int(s.positive[i]), True) for i in range(B) if s.has_positive[i]]
  return pairs + [(i, int(s.negative[i]), False) for i in range(B) if s.has_negative[i]]


def all_pair_list():
  return [(i, j, bool(LABELS[i] == LABELS[j])) for i in range(B) for j in range(B) if i != j]


def triplet_list(distance=None):
  t = [(a, p, n) for a in range(B) for p in range(B) for n in range(B)
       if p != a and LABELS[p] == LABELS[a] and LABELS[n] != LABELS[a]]
  if distance is not None:  # semi-hard
    t = [(a, p, n) for a, p, n in t if 0 < distance(a, n) - distance(a, p) <= 0.2]
    assert 0 < len(t) < 200
  return t


def _margin_sampled(m):
  s = miners.distance_weighted(KEY, m["global_distance"], LABELS, dim=C)
  d = jnp.take_along_axis(m["distance"], s.partners, axis=1)
  return losses.margin_loss(d, LABELS, jnp.asarray(BETA, jnp.float32), pairs=s.pairs)


def _semihard(m):
  return losses.triplet_loss(m["distance"], LABELS, triplets=miners.semihard_triplets(
      m["distance"], LABELS, margin=0.2))


# name: (diml_jax on a dict of matrices, the reference on pair quantities q)
LOSSES = {
    "margin, distance-weighted": (
        _margin_sampled,
        lambda q, gd: ref_margin(q, LABELS, torch.from_numpy(BETA), picks(gd))),
    "margin, all pairs": (
        lambda m: losses.margin_loss(m["distance"], LABELS, losses.init_beta(N_CLASSES)),
        lambda q, gd: ref_margin(q, LABELS, torch.full((N_CLASSES,), 1.2), all_pair_list())),
    "multi-similarity": (
        lambda m: losses.multi_similarity_loss(m["similarity"], LABELS),
        lambda q, gd: ref_multi_similarity(q, LABELS, "complete_anchors")),
    "multi-similarity, all anchors": (
        lambda m: losses.multi_similarity_loss(m["similarity"], LABELS, reduction="all_anchors"),
        lambda q, gd: ref_multi_similarity(q, LABELS, "all_anchors")),
    "triplet": (
        lambda m: losses.triplet_loss(m["distance"], LABELS),
        lambda q, gd: ref_triplet(q, LABELS, triplet_list())),
    "triplet, semi-hard": (
        _semihard,
        lambda q, gd: ref_triplet(q, LABELS, triplet_list(
            lambda i, j: q(i, j, "distance").item()))),
    "contrastive": (  # a negative margin that some negatives violate
        lambda m: losses.contrastive_loss(m["distance"], LABELS, neg_margin=1.2),
        lambda q, gd: ref_contrastive(q, LABELS, neg_margin=1.2)),
    "proxy anchor": (
        lambda m: losses.proxy_anchor_loss(m["proxy"], LABELS),
        lambda q, gd: ref_proxy_anchor(q, LABELS, N_CLASSES)),
}


@pytest.mark.parametrize("name", LOSSES)
def test_losses_on_global_embeddings_match_reference(name):
  """End to end: raw local features -> global vectors -> matrices -> loss, and gradients."""
  x = features(1)
  proxies = np.random.default_rng(2).normal(size=(N_CLASSES, C))
  ours, ref = LOSSES[name]
  q = Quantities(x, structural=False, proxies=proxies)
  gd = losses.euclidean_distance(jnp.asarray(x).mean(1))
  p32 = jnp.asarray(proxies, jnp.float32)
  check(lambda a: ours(global_matrices(a, p32)), (jnp.asarray(x),), ref(q, gd), q.leaf)


@pytest.mark.parametrize("name", LOSSES)
def test_losses_on_structural_matrices_match_reference(name):
  """The loss on DIML matrices from the float64 reference matching; gradients w.r.t. them."""
  x = features(2)
  proxies = np.random.default_rng(3).normal(size=(N_CLASSES, 2, C))
  matrices = reference_matrices(x, proxies)
  ours, ref = LOSSES[name]
  q = Matrices(matrices)
  gd = losses.euclidean_distance(jnp.asarray(x).mean(1))
  args = {k: jnp.asarray(v, jnp.float32) for k, v in matrices.items()}
  check(lambda m: ours(dict(m, global_distance=gd)), (args,), ref(q, gd), q.leaf)


@pytest.mark.parametrize("marginals", ["cross", "cross_swapped"])
def test_multi_similarity_diml_matches_reference(marginals):
  """End to end through the matching: features -> DIML similarity of all pairs -> loss,
  with the paper's marginals and with the published criterion's swapped ones."""
  x = features(4)
  q = Quantities(x, structural=True, marginals=marginals)
  check(lambda a: losses.multi_similarity_diml(a, LABELS, structural=tight(marginals)),
        (jnp.asarray(x),), ref_multi_similarity(q, LABELS, "complete_anchors"), q.leaf)


@pytest.mark.parametrize("marginals", [
    "cross", pytest.param("cross_swapped", marks=pytest.mark.slow)])  # test_matching's rerank
def test_margin_diml_matches_reference(marginals):
  """End to end: sampling on the global vectors, DIML distance of the 2b picked pairs."""
  x = features(5)
  q = Quantities(x, structural=True, marginals=marginals)
  beta = torch.tensor(BETA, requires_grad=True)
  partners = picks(losses.euclidean_distance(jnp.asarray(x).mean(1)))
  assert len(partners) == 2 * B - 2  # the two singletons have no positive
  check(lambda a, bt: losses.margin_diml(a, LABELS, bt, KEY, structural=tight(marginals)),
        (jnp.asarray(x), jnp.asarray(BETA, jnp.float32)),
        ref_margin(q, LABELS, beta, partners), [q.leaf, beta])


def test_margin_global_is_the_sampled_margin_loss():
  x = jnp.asarray(features(6)).mean(1)
  ours = losses.margin_global(x, LABELS, jnp.asarray(BETA, jnp.float32), KEY)
  want = _margin_sampled({"distance": losses.euclidean_distance(x),
                          "global_distance": losses.euclidean_distance(x)})
  np.testing.assert_allclose(ours, want, rtol=1e-6)


def test_structural_quantities_match_reference():
  """The matrices: all pairs, picked partners (distance), part proxies (y), against float64."""
  x = features(7)
  proxies = np.random.default_rng(8).normal(size=(N_CLASSES, 2, C))
  want = reference_matrices(x, proxies)
  xj = jnp.asarray(x)
  off = ~np.eye(B, dtype=bool)
  got = losses.structural_matrix(xj, quantity="similarity", structural=TIGHT)
  np.testing.assert_allclose(np.asarray(got)[off], want["similarity"][off], atol=2e-5)
  partners = (np.arange(B)[:, None] + np.array([[1, 5, 7]])) % B
  got = losses.structural_partners(xj, jnp.asarray(partners), structural=TIGHT)
  np.testing.assert_allclose(got, np.take_along_axis(want["distance"], partners, 1), atol=2e-5)
  got = losses.structural_matrix(xj, y=jnp.asarray(proxies, jnp.float32), structural=TIGHT)
  np.testing.assert_allclose(got, want["proxy"], atol=2e-5)


def test_proxy_anchor_proxies_get_the_reference_gradient():
  x = features(9).mean(1)
  proxies = np.random.default_rng(10).normal(size=(N_CLASSES, C))
  pt = torch.tensor(proxies, requires_grad=True)
  sim = F.normalize(torch.from_numpy(x).double(), dim=1) @ F.normalize(pt, dim=1).T
  ref_proxy_anchor(lambda i, p, _: sim[i, p], LABELS, N_CLASSES).backward()
  grad = jax.grad(lambda p: losses.proxy_anchor_loss(
      losses.proxy_similarity(jnp.asarray(x), p), LABELS).loss)(jnp.asarray(proxies, jnp.float32))
  np.testing.assert_allclose(grad, pt.grad.numpy(), rtol=1e-4, atol=1e-5)


# --- degenerate batches -----------------------------------------------------------------
def _all_losses(x, labels, key):
  """Every loss on local features x: {name: LossOutput}."""
  g = x.mean(1)
  beta = losses.init_beta(8)
  dist, sim = losses.euclidean_distance(g), losses.cosine_similarity(g)
  proxies = jnp.ones((8, x.shape[-1]))
  return {
      "margin_diml": losses.margin_diml(x, labels, beta, key),
      "margin_global": losses.margin_global(g, labels, beta, key),
      "ms_diml": losses.multi_similarity_diml(x, labels),
      "ms_all_anchors": losses.multi_similarity_loss(sim, labels, reduction="all_anchors"),
      "triplet": losses.triplet_loss(dist, labels),
      "semihard": losses.triplet_loss(
          dist, labels, triplets=miners.semihard_triplets(dist, labels)),
      "contrastive": losses.contrastive_loss(dist, labels),
      "proxy_anchor": losses.proxy_anchor_loss(losses.proxy_similarity(g, proxies), labels),
  }


NAMES = list(_all_losses(jnp.ones((2, R, C)), np.arange(2), jax.random.key(0)))


def values_and_gradients(x, labels):
  """Every loss ``[n]`` and its gradient with respect to x ``[n, b, r, c]``."""
  stacked = lambda a: jnp.stack(
      [o.loss for o in _all_losses(a, labels, jax.random.key(0)).values()])
  return stacked(x), jax.jacrev(stacked)(x)


DEGENERATE = {  # features [6, r, c], labels [6], the losses that must be exactly 0
    # No negatives: nothing mined for the multi-similarity and triplet losses; the margin
    # losses select the positive pairs, all closer than beta - margin here.
    "one class": (features(11, b=6, labels=np.zeros(6, int)), np.zeros(6, int),
                  [n for n in NAMES if n not in ("contrastive", "proxy_anchor")]),
    # No positives.
    "all singletons": (features(12, b=6, labels=np.arange(6)), np.arange(6),
                       ["ms_diml", "ms_all_anchors", "triplet", "semihard"]),
    # No semi-hard triplet: no negative is farther than a positive.
    "identical images": (np.ones((6, R, C), np.float32), np.array([0, 0, 1, 1, 2, 2]),
                         ["semihard"]),
    "all-zero features": (np.zeros((6, R, C), np.float32), np.array([0, 0, 1, 1, 2, 2]),
                          ["semihard"]),
}


def test_degenerate_batches_are_finite_and_empty_selections_are_zero():
  run = jax.jit(values_and_gradients)  # one compilation: every case has b = 6
  for case, (x, labels, zero) in DEGENERATE.items():
    values, grads = run(jnp.asarray(x), jnp.asarray(labels))
    for n, name in enumerate(NAMES):
      value, grad = float(values[n]), np.asarray(grads[n])
      assert np.isfinite(value) and np.all(np.isfinite(grad)), (case, name)
      if name in zero:
        assert value == 0.0 and not np.any(grad), (case, name, value)
    if case == "all singletons":
      assert float(values[NAMES.index("margin_diml")]) > 0  # its negative pairs count


# --- parameters with their own learning rate ---------------------------------------------
def test_beta_trains_with_its_own_learning_rate():
  """The recipe of diml_jax.losses.margin's docstring: optax.multi_transform by branch."""
  x = jnp.asarray(features(13))
  params = {"model": {"w": jnp.eye(C)}, "margin": {"beta": losses.init_beta(N_CLASSES)}}
  tx = optax.multi_transform(
      {"model": optax.adam(1e-5), "beta": optax.adam(5e-4)},
      {"model": "model", "margin": "beta"})

  def loss(p):
    return losses.margin_global((x @ p["model"]["w"]).mean(1), LABELS, p["margin"]["beta"],
                                jax.random.key(0)).loss

  grads = jax.jit(jax.grad(loss))(params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  moved = np.abs(np.asarray(updates["margin"]["beta"]))
  np.testing.assert_allclose(moved[np.asarray(grads["margin"]["beta"]) != 0], 5e-4, rtol=1e-3)
  assert np.abs(np.asarray(updates["model"]["w"])).max() <= 1.0001e-5


# --- errors at the boundary -------------------------------------------------------------
@pytest.mark.parametrize("call,message", [
    (lambda: losses.multi_similarity_loss(np.ones((4, 3)), np.arange(4)), r"\[b, b\] matrix"),
    (lambda: losses.multi_similarity_loss(np.ones((4, 4)), np.arange(4), reduction="sum"),
     "reduction must be"),
    (lambda: losses.margin_loss(np.ones((4, 2)), np.arange(4), 1.2), "pairs must be masks"),
    (lambda: losses.margin_diml(np.ones((4, 8)), np.arange(4), 1.2, jax.random.key(0)),
     r"local_features must be float local features \[b, r, c\]"),
    (lambda: losses.margin_diml(np.ones((4, 2, 8)), np.arange(5), 1.2, jax.random.key(0)),
     r"labels must have shape \[4\]"),
    (lambda: losses.multi_similarity_loss(np.ones((4, 4)), np.ones(4)), "integer class ids"),
    (lambda: losses.triplet_loss(np.ones((4, 4)), np.arange(4), triplets=np.ones((4, 4), bool)),
     "triplets must be"),
    (lambda: losses.structural_matrix(np.ones((4, 2, 8)), np.ones((4, 7))), "g must be global"),
    (lambda: losses.structural_partners(np.ones((4, 2, 8)), np.ones((4, 2))), "partners must be"),
    (lambda: losses.structural_matrix(np.ones((4, 2, 8)), structural=TIGHT.solver),
     "structural must be a losses.StructuralOptions"),
    (lambda: losses.StructuralOptions(mass=1.5), r"mass.*\(0, 1\]"),
    (lambda: losses.StructuralOptions(mesh=jax.make_mesh((1,), ("data",)), axis_name="batch"),
     "must name axes of the mesh"),
    (lambda: losses.structural_matrix(np.ones((4, 2, 8)), structural=tight("swapped")),
     r"marginals must be one of \('cross', 'cross_swapped', 'uniform'\)"),
    (lambda: losses.structural_matrix(np.ones((4, 2, 8)), y=np.ones((3, 5, 8)),
                                      structural=tight("cross_swapped")), "same number of parts"),
    (lambda: losses.proxy_anchor_loss(np.ones((3, 5)), np.arange(4)), r"\[b, n_classes\]"),
    (lambda: losses.cosine_similarity(np.ones((4, 8)), np.ones((3, 6))), "same d"),
])
def test_bad_arguments_raise_clear_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()
