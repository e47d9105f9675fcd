"""Partial similarity: p = 1 is ordinary matching, the dummy construction against a float64
Sinkhorn on the hand-built augmented problem and against exact partial transport (a linear
program), the flow's constraints, unmatched background, gradients, and bad arguments."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from diml_jax import matching

EPSILON = 0.05


def unit(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# Tests share shapes and options where they can: each combination compiles the solver anew.
def shared_parts(seed: int, r1: int = 6, r2: int = 8, c: int = 16, batch=(3,)):
  """Two part sets with some parts in common (moved), like two views of one object."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=batch + (r1, c))
  y = rng.normal(size=batch + (r2, c))
  k = r1 // 2
  y[..., :k, :] = x[..., : 2 * k : 2, :] + 0.3 * rng.normal(size=batch + (k, c))
  return x.astype(np.float32), y.astype(np.float32)


def sinkhorn_float64(s, mu, nu, p, epsilon=EPSILON):
  """Plain Sinkhorn on the augmented problem, built entry by entry, in float64."""
  r1, r2 = s.shape
  kernel = np.zeros((r1 + 1, r2 + 1))
  for i in range(r1 + 1):
    for j in range(r2 + 1):
      if i < r1 and j < r2:
        kernel[i, j] = np.exp(-(1.0 - s[i, j]) / epsilon)
      elif i < r1 or j < r2:  # a real part and a dummy: similarity 0, cost 1
        kernel[i, j] = np.exp(-1.0 / epsilon)
      # dummy-dummy: no flow (kernel 0)
  a = np.append(mu / mu.sum(), 1.0 - p)
  b = np.append(nu / nu.sum(), 1.0 - p)
  u, v = np.ones(r1 + 1), np.ones(r2 + 1)
  for _ in range(100_000):
    u = a / (kernel @ v)
    v = b / (kernel.T @ u)
    if np.abs(u * (kernel @ v) - a).sum() < 1e-13:
      break
  flow = u[:, None] * kernel * v[None, :]
  return flow[:r1, :r2]


def partial_lp(s, mu, nu, p):
  """Exact partial transport: max <T, S> s.t. T >= 0, T1 <= mu, T'1 <= nu, sum T = p."""
  r1, r2 = s.shape
  rows = np.kron(np.eye(r1), np.ones((1, r2)))
  cols = np.kron(np.ones((1, r1)), np.eye(r2))
  result = optimize.linprog(-s.ravel(), A_ub=np.vstack([rows, cols]),
                            b_ub=np.concatenate([mu, nu]), A_eq=np.ones((1, r1 * r2)),
                            b_eq=[p], method="highs")
  assert result.success
  return -result.fun, result.x.reshape(r1, r2)


# One problem set for the reduction and the float64 tests: x batched, y shared by the batch.
def problem():
  x, y = shared_parts(2, r1=5, r2=7, batch=(2,))
  rng = np.random.default_rng(3)
  return x, y[0], (rng.uniform(size=(2, 5)), rng.uniform(size=(7,)))


PRECISE = matching.SinkhornOptions(threshold=1e-6, max_iterations=5000)


def test_full_mass_is_ordinary_matching():
  x, y, marginals = problem()
  theirs = matching.match(x, y, marginals=marginals, options=PRECISE)
  ours = matching.match(x, y, mass=1.0, marginals=marginals, options=PRECISE)
  np.testing.assert_allclose(ours.similarity, theirs.similarity, atol=1e-6)
  np.testing.assert_allclose(ours.flow, theirs.flow, atol=1e-6)
  np.testing.assert_allclose(ours.mu, theirs.mu, atol=1e-7)
  np.testing.assert_allclose(ours.flow.sum((-2, -1)), 1.0, atol=1e-5)
  # Through the dummy parts, the flow tends to the same as p -> 1.
  almost = matching.match(x, y, mass=1.0 - 1e-4, marginals=marginals, options=PRECISE)
  np.testing.assert_allclose(almost.similarity, theirs.similarity, atol=2e-4)
  np.testing.assert_allclose(almost.flow, theirs.flow, atol=2e-4)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_matches_float64_sinkhorn_on_the_augmented_problem(p):
  x, y, (mu, nu) = problem()
  ours = matching.match(x, y, mass=p, marginals=(mu, nu), options=PRECISE)
  assert ours.flow.shape == (2, 5, 7) and ours.nu.shape == (2, 7)
  for k in range(2):
    s = unit(x[k].astype(np.float64)) @ unit(y.astype(np.float64)).T
    flow = sinkhorn_float64(s, mu[k], nu, p)
    np.testing.assert_allclose(ours.flow[k], flow, atol=3e-6)
    # The similarity scale of Matching: sum T*S divided by the mass p.
    np.testing.assert_allclose(ours.similarity[k] * p, (flow * s).sum(), atol=3e-6)
    np.testing.assert_allclose(ours.flow[k].sum(), p, atol=3e-6)
    assert float(ours.mass[k]) == np.float32(p)
  # The bare solver on the same similarities and weights gives the same flow.
  s = jnp.einsum("brc,sc->brs", matching.normalize(x), matching.normalize(y))
  flow, _, _ = matching.transport(s, mu, np.broadcast_to(nu, (2, 7)), mass=p, options=PRECISE)
  np.testing.assert_allclose(ours.flow, flow, atol=1e-6)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_small_epsilon_solves_exact_partial_transport(p):
  x, y = shared_parts(4, r1=6, r2=7, batch=())
  rng = np.random.default_rng(5)
  mu, nu = unit(rng.uniform(size=6)) ** 2, unit(rng.uniform(size=7)) ** 2  # sum 1
  s = unit(x.astype(np.float64)) @ unit(y.astype(np.float64)).T
  value, _ = partial_lp(s, mu, nu, p)
  flow, _, _ = matching.transport(s.astype(np.float32), mu, nu, mass=p, options=matching.SinkhornOptions(
      epsilon=0.003, lse_mode=True, threshold=1e-5, max_iterations=20_000))
  assert abs(float((flow * s).sum()) - value) < 2e-4
  assert abs(float(flow.sum()) - p) < 1e-4
  # Scaling the full flow by p would give far less: the best parts were chosen.
  assert value - p * partial_lp(s, mu, nu, 1.0)[0] > 0.05


def test_flow_respects_the_partial_constraints():
  x, y = shared_parts(6)
  m = matching.match(x, y, mass=0.3)
  # The cross-correlation marginal: mu_i ∝ relu(<x_i, g_y>), g_y the mean of y's raw parts.
  xn = unit(x.astype(np.float64))
  mu = np.maximum(np.einsum("brc,bc->br", xn, unit(y.astype(np.float64).mean(1))), 0.0)
  np.testing.assert_allclose(m.mu, mu / mu.sum(-1, keepdims=True), atol=1e-6)
  np.testing.assert_allclose(m.flow.sum((-2, -1)), 0.3, atol=1e-3)
  assert np.all(np.asarray(m.flow.sum(-1)) <= np.asarray(m.mu) + 1e-3)
  assert np.all(np.asarray(m.flow.sum(-2)) <= np.asarray(m.nu) + 1e-3)
  np.testing.assert_allclose(m.contributions.sum((-2, -1)), m.similarity, rtol=1e-5)
  np.testing.assert_allclose(m.row_contributions.sum(-1), m.similarity, rtol=1e-5)
  np.testing.assert_allclose(m.column_contributions.sum(-1), m.similarity, rtol=1e-5)
  np.testing.assert_allclose(m.similarity * 0.3, (m.flow * m.part_similarity).sum((-2, -1)),
                             rtol=1e-5)
  assert m.flow.shape == (3, 6, 8) and m.similarity.shape == m.error.shape == (3,)


def test_background_parts_need_not_match():
  rng = np.random.default_rng(7)
  y = unit(rng.normal(size=(8, 32)))
  x = np.concatenate([y[[3, 0, 6, 1]] + 0.05 * rng.normal(size=(4, 32)),  # the object
                      -y[:4] + 0.05 * rng.normal(size=(4, 32))])  # background: unlike y
  half = matching.match(x, y, mass=0.4, marginals="uniform")  # the object has 0.5
  background = np.asarray(half.flow[4:]).sum()
  assert background < 1e-3, background
  assert float(half.similarity) > 0.95  # only the object's parts are matched


def test_constant_gradient_treats_the_flow_as_fixed():
  x, y = shared_parts(11)
  flow = matching.match(x, y, mass=0.4).flow
  grad = jax.grad(lambda a: matching.match(a, y, mass=0.4).similarity.sum())(x)
  fixed = jax.grad(lambda a: jnp.sum(flow * jnp.einsum(
      "brc,bsc->brs", matching.normalize(a), matching.normalize(jnp.asarray(y)))) / 0.4)(x)
  np.testing.assert_allclose(grad, fixed, rtol=1e-4, atol=1e-6)


def test_implicit_gradient_through_the_solver_is_finite():
  # The dummy-dummy similarity is -inf: differentiating the solver must not produce NaN.
  # (Uniform marginals: matching's own solver gives NaN gradients in this mode for parts
  # with zero cross-correlation weight.) The loss is sum T*S (similarity * p): OTT's
  # implicit linear solve (lineax, which raises when it does not converge) fails on this
  # problem for some scalings of the cotangent, e.g. 2.5 sum T*S, before and after the
  # similarity scale was divided by p.
  x, y = shared_parts(12)
  grad = jax.grad(lambda a: matching.match(
      a, y, mass=0.4, marginals="uniform",
      options=matching.SinkhornOptions(gradient="implicit")).similarity.sum() * 0.4)(x)
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


@pytest.mark.parametrize("mass", [0.0, 1.5, -0.2, "0.5", None])
def test_mass_must_be_a_fraction(mass):
  x, y = shared_parts(13)
  with pytest.raises(ValueError, match=r"`mass` \(the fraction p of mass transported\) must"):
    matching.match(x, y, mass=mass)
  with pytest.raises(ValueError, match="must be a Python number in"):
    matching.transport(np.zeros((2, 3)), np.ones(2), np.ones(3), mass=mass)


def test_bad_shapes_and_options_raise_value_error():
  x, y = shared_parts(14, batch=(2,))  # nothing is solved here
  cases = [
      (lambda: matching.match(x, y[..., :8], mass=0.5), "same feature size c"),
      (lambda: matching.match(x, np.concatenate([y, y, y]), mass=0.5), "do not broadcast"),
      (lambda: matching.match(x[0, 0], y, mass=0.5), r"\[\.\.\., r, c\]; got shape \(16,\)"),
      (lambda: matching.match(x, y, np.zeros((2, 8)), mass=0.5),
       r"gx must have shape \(2, 16\) .*; got \(2, 8\)"),
      (lambda: matching.match(x, y, mass=0.5, marginals=(np.ones(5), np.ones(8))),
       r"marginal mu must broadcast to \(2, 6\); got \(5,\)"),
      (lambda: matching.match(x, y, mass=0.5, marginals="rollout"), "marginals must be"),
      (lambda: matching.SinkhornOptions(epsilon=0.0), "epsilon must be"),
      (lambda: matching.transport(np.zeros((2, 3)), np.ones(3), np.ones(3), mass=0.5),
       r"mu must have shape \(2,\); got \(3,\)"),
      (lambda: matching.transport(np.zeros(3), np.ones(3), np.ones(3), mass=0.5),
       r"\[\.\.\., r1, r2\]; got shape \(3,\)"),
  ]
  for call, message in cases:
    with pytest.raises(ValueError, match=message):
      call()


def test_pairwise_and_rerank_with_part_weights_equal_match_with_mass():
  """matching.pairwise / rerank with per-item part weights and mass p (what the losses and
  re-ranking use) equal match(mass=p) pair by pair, on the one similarity scale."""
  rng = np.random.default_rng(5)
  xs, ys = shared_parts(6, r1=5, r2=7, batch=(4,))
  wx, wy = rng.uniform(size=(4, 5)), rng.uniform(size=(4, 7))
  wx[1] = 0.0  # an image without weight: uniform, as match does
  cand = np.array([[0, 1, 3], [2, 2, 0], [3, 1, 0], [1, 0, 2]])
  gx, gy = unit(xs.mean(1)), unit(ys.mean(1))
  for p in (0.4, 1.0):
    expected = np.zeros((4, 4))
    for a in range(4):
      for b in range(4):
        m = matching.match(xs[a], ys[b], mass=p, marginals=(wx[a], wy[b]))
        expected[a, b] = (float(m.similarity) + gx[a] @ gy[b]) / 2
    got = matching.pairwise(xs, ys, quantity="similarity", marginals=(wx, wy), mass=p,
                            options=matching.SinkhornOptions(block_size=3))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    got = matching.rerank(xs, ys[cand], quantity="similarity", marginals=(wx, wy[cand]),
                          mass=p, options=matching.SinkhornOptions(block_size=5))
    np.testing.assert_allclose(got, np.take_along_axis(expected, cand, 1), atol=1e-6)
  with pytest.raises(ValueError, match=r"marginal nu must be floating-point part weights"):
    matching.pairwise(xs, ys, marginals=(wx, wy[:, :3]))
  with pytest.raises(ValueError, match="mass"):
    matching.rerank(xs, ys[cand], mass=1.5)
