"""diml_jax.matching against an independent float64 NumPy implementation of DIML's matching.

The reference below is written from the published algorithm (kernel-mode Sinkhorn,
eps 0.05, cross-correlation marginals) and run to full convergence, so it is the exact
entropic flow; diml_jax must reach it within its stated accuracy.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diml_jax import matching

EPS = 0.05


# --- independent reference --------------------------------------------------------------
def _unit(a):
  n = np.linalg.norm(a, axis=-1, keepdims=True)
  return a / np.where(n > 0, n, 1.0)


def _probability(w):
  w = np.maximum(w, 0.0)
  return w / w.sum() if w.sum() > 1e-6 else np.full_like(w, 1.0 / len(w))


def reference(x, y, gx=None, gy=None, marginals="cross", tol=1e-13):
  """float64 DIML matching of one pair: returns (similarity, T, S, mu, nu)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  # The default global vector: the mean of the raw local features (the published code's).
  gx = _unit(x.mean(0) if gx is None else np.asarray(gx, np.float64))
  gy = _unit(y.mean(0) if gy is None else np.asarray(gy, np.float64))
  x, y = _unit(x), _unit(y)
  S = x @ y.T
  if marginals == "cross":  # the paper's: a part of x by its correlation with y's global
    mu, nu = _probability(x @ gy), _probability(y @ gx)
  elif marginals == "cross_swapped":
    # The published training criteria (cross_attention): the row marginal, over x's
    # parts, is relu(<g_x, y_i>) normalised, the column marginal relu(<g_y, x_j>).
    mu, nu = _probability(y @ gx), _probability(x @ gy)
  elif marginals == "uniform":
    mu, nu = np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y))
  else:
    mu, nu = _probability(np.asarray(marginals[0], np.float64)), _probability(
        np.asarray(marginals[1], np.float64))
  K = np.exp(-(1.0 - S) / EPS)
  c = np.ones(len(y))
  for i in range(200_000):
    r = mu / (K @ c)
    c = nu / (K.T @ r)
    if i % 20 == 0 and np.abs((r[:, None] * K * c).sum(1) - mu).sum() < tol:
      break
  T = r[:, None] * K * c[None, :]
  return (T * S).sum(), T, S, mu, nu


# --- input families ---------------------------------------------------------------------
def pair(kind, rng, r1=16, r2=16, c=64):
  """Two local feature maps; the structured kinds are DIML's use case (shared parts)."""
  if kind == "gaussian":
    return rng.normal(size=(r1, c)), rng.normal(size=(r2, c))
  if kind == "relu":  # non-negative, like CNN features
    return np.maximum(rng.normal(size=(r1, c)), 0), np.maximum(rng.normal(size=(r2, c)), 0)
  if kind == "moved parts":  # the same parts in other places, with noise
    x = rng.normal(size=(r1, c))
    return x, x[rng.permutation(r1)[:r2]] + 0.5 * rng.normal(size=(r2, c))
  if kind == "half shared":  # half of b's parts are noisy copies of a's
    x, y = rng.normal(size=(r1, c)), rng.normal(size=(r2, c))
    k = r2 // 2
    y[rng.permutation(r2)[:k]] = x[rng.permutation(r1)[:k]] + 0.3 * rng.normal(size=(k, c))
    return x, y
  if kind == "clustered":  # few part types, many near-ties
    proto = rng.normal(size=(4, c))
    return (proto[rng.integers(0, 4, r1)] + 0.6 * rng.normal(size=(r1, c)),
            proto[rng.integers(0, 4, r2)] + 0.6 * rng.normal(size=(r2, c)))
  raise ValueError(kind)


def batch(kind, n, seed, **shape):
  rng = np.random.default_rng(seed)
  xs, ys = zip(*[pair(kind, rng, **shape) for _ in range(n)])
  return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


def check_against_reference(m, xs, ys, sim_tol, flow_tol=None, marginals="cross"):
  for i in range(len(xs)):
    marg = marginals if isinstance(marginals, str) else (marginals[0][i], marginals[1][i])
    s, T, S, mu, nu = reference(xs[i], ys[i], marginals=marg)
    assert abs(float(m.similarity[i]) - s) < sim_tol, (i, float(m.similarity[i]), s)
    np.testing.assert_allclose(m.part_similarity[i], S, atol=1e-5)
    np.testing.assert_allclose(m.mu[i], mu, atol=1e-5)
    np.testing.assert_allclose(m.nu[i], nu, atol=1e-5)
    if flow_tol is not None:
      np.testing.assert_allclose(m.flow[i], T, atol=flow_tol)


def marginal_errors(m):
  flow = np.asarray(m.flow, np.float64)
  return (np.abs(flow.sum(-1) - m.mu).sum(-1), np.abs(flow.sum(-2) - m.nu).sum(-1))


# --- accuracy ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gaussian", "relu"])
@pytest.mark.parametrize("r1,r2", [(16, 16), (16, 9), (4, 25)])
def test_defaults_match_reference_on_typical_features(kind, r1, r2):
  xs, ys = batch(kind, 8, seed=r1 * r2, r1=r1, r2=r2)
  m = matching.match(xs, ys)
  check_against_reference(m, xs, ys, sim_tol=1e-4, flow_tol=5e-4)
  for err in marginal_errors(m):
    assert err.max() < 1e-3
  assert np.all(np.asarray(m.error) < 1e-3)


@pytest.mark.parametrize("kind", ["moved parts", "half shared", "clustered"])
def test_tight_threshold_matches_reference_on_structured_features(kind):
  xs, ys = batch(kind, 12, seed=7)
  m = matching.match(xs, ys, options=matching.SinkhornOptions(threshold=1e-4,
                                                          max_iterations=1000))
  check_against_reference(m, xs, ys, sim_tol=1e-4)
  for err in marginal_errors(m):
    assert err.max() < 1e-3
  assert np.all(np.asarray(m.iterations) <= 1000)


@pytest.mark.parametrize("kind", ["moved parts", "half shared", "clustered"])
def test_defaults_on_structured_features_report_their_error(kind):
  """With the published 100-iteration cap, slow pairs stop early; `error` says how far."""
  xs, ys = batch(kind, 12, seed=11)
  m = matching.match(xs, ys)
  check_against_reference(m, xs, ys, sim_tol=3e-3)
  row_err, col_err = marginal_errors(m)
  # The reported error is the L1 deviation of the column sums, the marginal OTT checks.
  np.testing.assert_allclose(m.error, col_err, atol=2e-6)
  assert row_err.max() < 3e-3
  converged = np.asarray(m.error) <= 1e-3
  assert np.all(np.asarray(m.iterations)[~converged] == 100)


FINE = matching.SinkhornOptions(threshold=1e-5)


def test_uniform_and_given_marginals_match_reference():
  xs, ys = batch("relu", 4, seed=3, r1=9, r2=16)
  m = matching.match(xs, ys, marginals="uniform", options=FINE)
  check_against_reference(m, xs, ys, sim_tol=1e-5, flow_tol=1e-5, marginals="uniform")
  rng = np.random.default_rng(0)
  mu, nu = rng.uniform(size=(4, 9)), rng.uniform(size=(4, 16))
  m = matching.match(xs, ys, marginals=(mu, nu), options=FINE)
  check_against_reference(m, xs, ys, sim_tol=1e-5, flow_tol=1e-5, marginals=(mu, nu))


def test_swapped_cross_form_matches_reference_and_needs_one_grid():
  """The published criteria's swapped marginals: match and rerank against the float64
  reference (the paper's form is checked throughout this file; the symmetric pairwise
  below runs both)."""
  xs, ys = batch("relu", 4, seed=21)
  swapped = matching.match(xs, ys, marginals="cross_swapped", options=FINE)
  check_against_reference(swapped, xs, ys, sim_tol=1e-5, flow_tol=1e-5,
                          marginals="cross_swapped")
  idx = np.array([[1, 3], [0, 2], [3, 3], [2, 0]])
  reranked = matching.rerank(xs, ys, indices=idx, marginals="cross_swapped", options=FINE)
  for i in range(4):
    for k in range(2):
      want = reference(xs[i], ys[idx[i, k]], marginals="cross_swapped")[0]
      assert abs(reranked[i, k] - want) < 1e-5
    # The paper's problem of the same pair: the marginals exchanged, another similarity.
    paper, _, _, mu, nu = reference(xs[i], ys[i])
    np.testing.assert_allclose(swapped.mu[i], nu, atol=1e-6)
    np.testing.assert_allclose(swapped.nu[i], mu, atol=1e-6)
    assert abs(float(swapped.similarity[i]) - paper) > 1e-3
  with pytest.raises(ValueError, match="r1=16 and r2=9: use the same grid"):
    matching.match(xs, ys[:, :9], marginals="cross_swapped")
  with pytest.raises(ValueError, match="same number of parts"):
    matching.pairwise(xs, ys[:, :9], marginals="cross_swapped")


def test_training_quantities_match_reference():
  xs, ys = batch("relu", 6, seed=5)
  rng = np.random.default_rng(1)
  gx, gy = rng.normal(size=(6, 64)), rng.normal(size=(6, 64))
  sim = matching.diml_similarity(xs, ys, gx, gy)
  dist = matching.diml_distance(xs, ys, gx, gy)
  for i in range(6):
    s, T, S, _, _ = reference(xs[i], ys[i], gx[i], gy[i])
    ga, gb = _unit(gx[i]), _unit(gy[i])
    assert abs(float(sim[i]) - (s + ga @ gb) / 2) < 1e-4
    xu, yu = _unit(xs[i].astype(np.float64)), _unit(ys[i].astype(np.float64))
    D = np.linalg.norm(xu[:, None] - yu[None], axis=-1)
    want = ((T * D).sum() + np.linalg.norm(ga - gb)) / 2
    assert abs(float(dist[i]) - want) < 1e-4


def test_distance_floors_are_the_published_criteria_ones():
  """Identical unit vectors: DIML's distance is sqrt(0 + 1e-6) in both its terms (the
  published criteria/margin_diml.py), a global one sqrt(0 + 1e-8) (criteria/margin.py)."""
  x = np.eye(4, dtype=np.float32)[:, None]  # [4, 1, 4]: one part each, exact unit vectors
  np.testing.assert_allclose(matching.diml_distance(x, x), 1e-3, rtol=1e-5)
  np.testing.assert_allclose(np.diag(matching.pairwise(x, x, quantity="distance")), 1e-3,
                             rtol=1e-5)
  np.testing.assert_allclose(matching.unit_distance(jnp.ones(4)), 1e-4, rtol=1e-5)


def test_contributions_decompose_the_similarity():
  xs, ys = batch("relu", 3, seed=2, r1=16, r2=9)
  m = matching.match(xs, ys)
  np.testing.assert_allclose(m.contributions.sum((-2, -1)), m.similarity, atol=1e-6)
  np.testing.assert_allclose(m.row_contributions.sum(-1), m.similarity, atol=1e-6)
  np.testing.assert_allclose(m.column_contributions.shape, (3, 9))


# --- the batched entry points -----------------------------------------------------------
def test_broadcasting_matches_pair_by_pair():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 1, 16, 32)).astype(np.float32)
  y = rng.normal(size=(1, 3, 9, 32)).astype(np.float32)
  m = matching.match(x, y)
  assert m.similarity.shape == (2, 3) and m.flow.shape == (2, 3, 16, 9)
  for i in range(2):
    for j in range(3):
      assert abs(float(m.similarity[i, j]) - reference(x[i, 0], y[0, j])[0]) < 1e-4


BLOCK16 = matching.SinkhornOptions(block_size=16)


def test_pairwise_and_rerank_agree_with_match_and_reference():
  rng = np.random.default_rng(6)
  xs = np.maximum(rng.normal(size=(10, 16, 32)), 0).astype(np.float32)
  ys = np.maximum(rng.normal(size=(7, 16, 32)), 0).astype(np.float32)
  # Tiny blocks, so the tiling, the padding and several row and column tiles all run.
  p = matching.pairwise(xs, ys, options=BLOCK16)
  assert p.shape == (10, 7)
  full = matching.match(xs[:, None], ys[None]).similarity
  np.testing.assert_allclose(p, full, atol=1e-5)
  for i, j in [(0, 0), (3, 6), (9, 2)]:
    assert abs(float(p[i, j]) - reference(xs[i], ys[j])[0]) < 1e-4
  cand = ys[rng.integers(0, 7, size=(10, 5))]  # [10, 5, 16, 32]
  rr = matching.rerank(xs, cand, options=BLOCK16)
  assert rr.shape == (10, 5)
  np.testing.assert_allclose(rr, matching.match(xs[:, None], cand).similarity, atol=1e-5)
  # Candidates as gallery indices, gathered tile by tile: the same scores.
  idx = rng.integers(0, 7, size=(10, 5))
  gys = rng.normal(size=(7, 32)).astype(np.float32)
  np.testing.assert_allclose(
      matching.rerank(xs, ys, gc=gys, indices=idx, quantity="similarity", options=BLOCK16),
      matching.rerank(xs, ys[idx], gc=gys[idx], quantity="similarity", options=BLOCK16),
      atol=1e-6)
  d = matching.pairwise(xs, ys, quantity="distance", options=BLOCK16)
  np.testing.assert_allclose(
      d, matching.diml_distance(xs[:, None], ys[None]), atol=1e-5)


# Tight enough that the ordered pairs (a, b) and (b, a) of the full path agree to 1e-5.
TIGHT = matching.SinkhornOptions(threshold=1e-6, max_iterations=2000)


@pytest.mark.parametrize("quantity,marginals,mass", [
    ("structural", "cross_swapped", 1.0),  # "cross", the default: the two tests below
    ("similarity", "uniform", 1.0),
    ("distance", "weights", 0.6),
])
def test_symmetric_pairwise_solves_each_unordered_pair_once_like_the_full_path(
    quantity, marginals, mass):
  """pairwise(xs) (ys=None) fills [i, j] and [j, i] from one solve of the pair i <= j."""
  rng = np.random.default_rng(12)
  xs = np.maximum(rng.normal(size=(11, 8, 16)), 0).astype(np.float32)  # 66 pairs
  gxs = rng.normal(size=(11, 16)).astype(np.float32)
  w = rng.uniform(size=(11, 8)).astype(np.float32)
  sym_m, full_m = (w, (w, w)) if marginals == "weights" else (marginals, marginals)
  # block_size 16: blocks of 3 items (the last one padded), 10 tiles of block pairs.
  kw = dict(quantity=quantity, mass=mass, options=TIGHT.replace(block_size=16))
  sym = np.asarray(jax.jit(lambda x, g: matching.pairwise(x, None, g, marginals=sym_m, **kw))(
      xs, gxs))
  full = np.asarray(matching.pairwise(xs, xs, gxs, gxs, marginals=full_m, **kw))
  assert sym.shape == (11, 11)
  np.testing.assert_array_equal(sym, sym.T)
  off = ~np.eye(11, dtype=bool)
  np.testing.assert_allclose(sym[off], full[off], atol=1e-5)
  # An image against itself: the distance sqrt(2 - 2 S_ii + 1e-6) of identical parts
  # turns the rounding of S_ii = 1 (which depends on the tile's shape) into ~1e-4.
  np.testing.assert_allclose(np.diag(sym), np.diag(full),
                             atol=1e-3 if quantity == "distance" else 1e-5)
  assert np.abs(full - full.T).max() > 0  # the full path solves both orders on its own
  if mass == 1.0 and quantity != "distance":
    for i, j in [(0, 0), (2, 9), (10, 4)]:
      ref = reference(xs[i], xs[j], gxs[i], gxs[j], marginals=marginals)[0]
      if quantity == "similarity":
        ref = 0.5 * (ref + _unit(gxs[i].astype(np.float64)) @ _unit(gxs[j].astype(np.float64)))
      assert abs(sym[i, j] - ref) < 1e-5


@pytest.mark.parametrize("n,block_size", [
    (2, 256),  # one item per block, two blocks
    (5, 4),  # 3 blocks of 2 (odd), the last one padded
    (8, 4),  # 4 blocks (even): the opposite blocks meet twice, once is kept
    (39, 4),  # 20 blocks: each block's 11 partners in 3 tiles of 4, one offset unused
    (41, 9),  # 14 blocks of 3: partners in 2 tiles of 4
])
def test_symmetric_pairwise_covers_every_pair_once_for_any_tiling(n, block_size):
  """Block I meets blocks I .. I + nb // 2 (cyclically): every pair, whatever the tiling."""
  rng = np.random.default_rng(n)
  xs = np.maximum(rng.normal(size=(n, 4, 8)), 0).astype(np.float32)
  kw = dict(options=TIGHT.replace(block_size=block_size))
  sym = np.asarray(matching.pairwise(xs, **kw))
  np.testing.assert_array_equal(sym, sym.T)
  np.testing.assert_allclose(sym, matching.pairwise(xs, xs, **kw), atol=1e-5)


def test_symmetric_pairwise_at_default_tolerance_and_for_one_item():
  xs, ys = batch("half shared", 7, seed=13)
  x = np.concatenate([xs, ys])
  sym = matching.pairwise(x)
  np.testing.assert_allclose(sym, matching.pairwise(x, x), atol=2e-3)
  np.testing.assert_array_equal(sym, sym.T)
  one = matching.pairwise(x[:1], quantity="similarity")
  assert one.shape == (1, 1)
  np.testing.assert_allclose(one, matching.pairwise(x[:1], x[:1], quantity="similarity"),
                             atol=1e-6)


@pytest.mark.parametrize("quantity", ["similarity", "distance"])
def test_symmetric_pairwise_gradient_equals_the_full_path(quantity):
  """Constant flow: the gradient flows through S and the global term of both orders."""
  rng = np.random.default_rng(14)
  xs = jnp.asarray(rng.normal(size=(6, 8, 16)), jnp.float32)
  gxs = jnp.asarray(rng.normal(size=(6, 16)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(6, 6)), jnp.float32)  # not symmetric
  if quantity == "distance":
    # An image against itself: D = sqrt(2 - 2 S + 1e-6) at S_ii = 1, whose slope ~1e3
    # turns the rounding of S_ii (which differs with the order of the contraction) into
    # gradient differences of ~3e-5; the losses mask that diagonal.
    weights = weights * (1.0 - jnp.eye(6))
  kw = dict(quantity=quantity, options=TIGHT.replace(block_size=8))
  sym = jax.grad(lambda x, g: jnp.sum(weights * matching.pairwise(x, None, g, **kw)),
                 argnums=(0, 1))(xs, gxs)
  full = jax.grad(lambda x, g: jnp.sum(weights * matching.pairwise(x, x, g, g, **kw)),
                  argnums=(0, 1))(xs, gxs)
  for a, b in zip(sym, full):
    assert np.abs(b).max() > 1e-3
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_result_of_a_pair_does_not_depend_on_its_block():
  """Converged pairs are frozen, so tiling (and sharding) cannot change a result."""
  xs, ys = batch("half shared", 24, seed=9)
  x = np.concatenate([xs, ys])  # hard pairs mixed with easy ones
  a = matching.pairwise(x, x, options=matching.SinkhornOptions(block_size=7))
  b = matching.pairwise(x, x, options=matching.SinkhornOptions(block_size=256))
  np.testing.assert_allclose(a, b, atol=2e-6)


def test_jit_vmap_and_fixed_iterations():
  xs, ys = batch("gaussian", 4, seed=8)
  m = jax.jit(lambda a, b: matching.match(
      a, b, options=matching.SinkhornOptions(threshold=None, max_iterations=30)))(xs, ys)
  assert np.all(np.asarray(m.iterations) == 30)
  v = jax.vmap(lambda a, b: matching.structural_similarity(a, b))(xs, ys)
  np.testing.assert_allclose(v, matching.match(xs, ys).similarity, atol=1e-5)


def test_log_domain_mode_agrees():
  xs, ys = batch("relu", 4, seed=12)
  a = matching.match(xs, ys, options=matching.SinkhornOptions(lse_mode=True)).similarity
  b = matching.match(xs, ys).similarity
  np.testing.assert_allclose(a, b, atol=1e-4)


def test_small_epsilon_stays_finite_in_kernel_mode():
  xs, ys = batch("gaussian", 4, seed=13)
  m = matching.match(xs, ys, options=matching.SinkhornOptions(epsilon=0.01,
                                                              max_iterations=300))
  assert np.all(np.isfinite(m.flow)) and np.all(np.isfinite(m.similarity))
  np.testing.assert_allclose(np.asarray(m.flow).sum((-2, -1)), 1.0, atol=1e-3)


# --- gradients --------------------------------------------------------------------------
def precise(gradient):
  return matching.SinkhornOptions(gradient=gradient, threshold=1e-5, max_iterations=2000,
                                  check_every=10)


def _directional(f, x, v, h=1e-5):
  return (f(x + h * v) - f(x - h * v)) / (2 * h)


def test_constant_gradient_is_the_paper_gradient():
  """Default: the flow is a constant, so d s = sum T dS (checked by finite differences)."""
  rng = np.random.default_rng(14)
  x, y = pair("relu", rng, c=32)
  v = rng.normal(size=x.shape)
  _, T, *_ = reference(x, y)
  frozen = lambda x_: (T * (_unit(x_) @ _unit(y.astype(np.float64)).T)).sum()
  want = _directional(frozen, x.astype(np.float64), v)
  g = jax.grad(lambda a: matching.structural_similarity(a, jnp.asarray(y, jnp.float32)))(
      jnp.asarray(x, jnp.float32))
  assert abs(float(jnp.vdot(g, v)) - want) < 1e-3 * max(1.0, abs(want))


@pytest.mark.parametrize("mode", ["implicit", "unroll"])
def test_solver_gradients_match_finite_differences(mode):
  """Through the solver, the gradient is that of the converged similarity itself."""
  rng = np.random.default_rng(15)
  x, y = pair("relu", rng, r1=9, r2=9, c=16)
  y64 = y.astype(np.float64)
  for k in range(2):
    v = rng.normal(size=x.shape)
    want = _directional(lambda a: reference(a, y64)[0], x.astype(np.float64), v)
    g = jax.grad(lambda a: matching.structural_similarity(
        a, jnp.asarray(y, jnp.float32), options=precise(mode)))(jnp.asarray(x, jnp.float32))
    assert abs(float(jnp.vdot(g, v)) - want) < 2e-3 * max(1.0, abs(want)), (k, want)


def test_gradients_are_finite_on_degenerate_inputs():
  zeros = jnp.zeros((16, 8))
  for mode in ["constant", "implicit", "unroll"]:
    g = jax.grad(lambda a: matching.diml_distance(
        a, zeros, options=matching.SinkhornOptions(gradient=mode)))(zeros)
    assert np.all(np.isfinite(g)), mode


# --- degenerate inputs and dtypes -------------------------------------------------------
def test_degenerate_inputs_are_finite_and_defined():
  rng = np.random.default_rng(16)
  x = rng.normal(size=(16, 8)).astype(np.float32)
  # All-zero maps: zero similarity, uniform marginals.
  m = matching.match(np.zeros_like(x), x)
  assert float(m.similarity) == 0.0
  np.testing.assert_allclose(m.mu, np.full(16, 1 / 16), atol=1e-7)
  # Identical images: equal marginals, and the reference value.
  m = matching.match(x, x)
  np.testing.assert_allclose(m.mu, m.nu, atol=1e-7)
  assert abs(float(m.similarity) - reference(x, x)[0]) < 1e-4
  # One part each: the flow is 1 and the similarity is the cosine.
  a, b = x[:1], x[1:2]
  m = matching.match(a, b)
  cos = float(_unit(a.astype(np.float64))[0] @ _unit(b.astype(np.float64))[0])
  assert abs(float(m.flow[0, 0]) - 1.0) < 1e-6 and abs(float(m.similarity) - cos) < 1e-6


def test_anti_correlated_parts_fall_back_to_uniform():
  rng = np.random.default_rng(17)
  gy = rng.normal(size=8)
  x = -np.abs(rng.normal(size=(16, 8))) * np.sign(gy)  # <x_i, g_y> < 0 for every i
  y = rng.normal(size=(16, 8))
  m = matching.match(x.astype(np.float32), y.astype(np.float32), gy=gy.astype(np.float32))
  np.testing.assert_allclose(m.mu, np.full(16, 1 / 16), atol=1e-7)
  assert np.isfinite(float(m.similarity))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_inputs_are_matched_in_float32(dtype):
  xs, ys = batch("relu", 4, seed=18)
  m = matching.match(jnp.asarray(xs, dtype), jnp.asarray(ys, dtype))
  assert m.similarity.dtype == jnp.float32 and m.flow.dtype == jnp.float32
  want = matching.match(jnp.asarray(xs, dtype).astype(jnp.float32),
                        jnp.asarray(ys, dtype).astype(jnp.float32)).similarity
  np.testing.assert_allclose(m.similarity, want, atol=1e-6)


# --- errors at the boundary -------------------------------------------------------------
@pytest.mark.parametrize("call,message", [
    (lambda: matching.match(np.ones(8), np.ones((4, 8))), "x must be local features"),
    (lambda: matching.match(np.ones((4, 8)), np.ones((4, 6))), "same feature size c"),
    (lambda: matching.match(np.ones((2, 4, 8)), np.ones((3, 4, 8))), "do not broadcast"),
    (lambda: matching.match(np.ones((2, 4, 8)), np.ones((2, 4, 8)), np.ones((3, 8))),
     "gx must have shape"),
    (lambda: matching.match(np.ones((4, 8)), np.ones((4, 8)), marginals="crosss"),
     "marginals must be"),
    (lambda: matching.SinkhornOptions(epsilon=0.0), "epsilon"),
    (lambda: matching.SinkhornOptions(gradient="exact"), "gradient"),
    (lambda: matching.SinkhornOptions(threshold=0.0), "threshold"),
    (lambda: matching.match(np.ones((4, 8)), np.ones((4, 8)), options={"epsilon": 0.1}),
     "options must be a matching.SinkhornOptions"),
    (lambda: matching.match(np.ones((4, 8), np.int32), np.ones((4, 8))), "floating-point"),
    (lambda: matching.pairwise(np.ones((2, 3, 4, 8)), np.ones((3, 4, 8))),
     r"xs must be local features \[n, r1, c\]"),
    (lambda: matching.pairwise(np.ones((2, 4, 8)), np.ones((3, 4, 6))), "pairwise needs"),
    (lambda: matching.rerank(np.ones((2, 4, 8)), np.ones((3, 5, 4, 8))), "rerank needs"),
    (lambda: matching.rerank(np.ones((2, 4, 8)), np.ones((3, 4, 8)), indices=np.ones((3, 5))),
     "rerank with indices needs"),
    (lambda: matching.pairwise(np.ones((2, 4, 8)), np.ones((3, 4, 8)), quantity="cosine"),
     "quantity must be"),
    (lambda: matching.pairwise(np.ones((2, 4, 8)), gys=np.ones((2, 8))), "takes its global"),
    (lambda: matching.pairwise(np.ones((2, 4, 8)), marginals=(np.ones((2, 4)),) * 2),
     r"one array of floating-point part weights \[n, r1\]"),
])
def test_bad_arguments_raise_clear_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_docstring_example_runs():
  import doctest
  result = doctest.testmod(matching.api, raise_on_error=False, verbose=False)
  assert result.attempted >= 4 and result.failed == 0


def test_transport_solves_given_problems_like_match():
  xs, ys = batch("relu", 4, seed=19, r1=9, r2=16)
  m = matching.match(xs, ys)
  flow, iterations, error = matching.transport(m.part_similarity, m.mu, 3 * m.nu)
  np.testing.assert_allclose(flow, m.flow, atol=1e-6)
  np.testing.assert_array_equal(iterations, m.iterations)
  with pytest.raises(ValueError, match="nu must have shape"):
    matching.transport(m.part_similarity, m.mu, m.nu[:, :3])


@pytest.mark.parametrize("mode", ["implicit", "unroll"])
def test_solver_gradients_are_finite_with_zero_mass_parts(mode):
  """Cross marginals are often zero on some parts; the solver's gradient must stay finite."""
  rng = np.random.default_rng(20)
  x, y = pair("gaussian", rng, r1=9, r2=9, c=16)
  m = matching.match(x.astype(np.float32), y.astype(np.float32))
  assert np.any(np.asarray(m.mu) == 0) and np.any(np.asarray(m.nu) == 0)
  g = jax.grad(lambda a: matching.structural_similarity(
      a, jnp.asarray(y, jnp.float32), options=matching.SinkhornOptions(gradient=mode)))(
          jnp.asarray(x, jnp.float32))
  assert np.all(np.isfinite(g))
  # And it is still the gradient of the converged similarity.
  v = rng.normal(size=x.shape)
  want = _directional(lambda a: reference(a, y.astype(np.float64))[0], x.astype(np.float64), v)
  g = jax.grad(lambda a: matching.structural_similarity(
      a, jnp.asarray(y, jnp.float32), options=precise(mode)))(jnp.asarray(x, jnp.float32))
  assert abs(float(jnp.vdot(g, v)) - want) < 5e-3 * max(1.0, abs(want)), want
