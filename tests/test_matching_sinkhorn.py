"""The OTT-JAX pieces diml_jax.matching.sinkhorn drives directly, pinned.

The round driver calls OTT's step functions (``Sinkhorn.kernel_step``, ``lse_step``), its
state and momentum (``SinkhornState``, ``Momentum.lehmann``) and its geometry's marginals
outside OTT's own loop; ``pyproject.toml`` bounds ``ott-jax`` for that reason. If a new
release changes any of them, these tests fail with a message that says which.
"""
import inspect

import jax.numpy as jnp
import numpy as np
import pytest
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import acceleration, sinkhorn

from diml_jax.matching.sinkhorn import KernelGeometry

CHANGED = ("OTT-JAX changed {what}, which diml_jax.matching.sinkhorn calls directly: adapt "
           "the round driver to the new API, then raise the ott-jax bound in pyproject.toml.")


@pytest.mark.parametrize("name", ["kernel_step", "lse_step"])
def test_step_functions_keep_their_signature(name):
  params = list(inspect.signature(getattr(sinkhorn.Sinkhorn, name)).parameters)
  assert params == ["self", "ot_prob", "state", "iteration"], CHANGED.format(
      what=f"Sinkhorn.{name}{params}")


def test_state_momentum_and_marginals_keep_their_form():
  fields = sinkhorn.SinkhornState._fields
  assert fields[:2] == ("potentials", "errors"), CHANGED.format(what=f"SinkhornState{fields}")
  momentum = acceleration.Momentum(start=20, inner_iterations=10)
  # Lehmann et al.'s weight 2 / (1 + sqrt(1 - rho)), rho = (e1 / e0) ** (1 / 10).
  state = sinkhorn.SinkhornState((), errors=jnp.array([[1.0], [0.5]]))
  want = 2.0 / (1.0 + np.sqrt(1.0 - 0.5 ** 0.1))
  assert abs(float(momentum.lehmann(state)) - want) < 1e-5, CHANGED.format(
      what="Momentum.lehmann (its formula or where it reads the errors)")
  for name in ("marginal_from_scalings", "marginal_from_potentials"):
    params = list(inspect.signature(getattr(geometry.Geometry, name)).parameters)
    assert params[:4] == ["self", "f" if "potentials" in name else "u",
                          "g" if "potentials" in name else "v", "axis"], CHANGED.format(
        what=f"Geometry.{name}{params}")


def test_one_kernel_step_is_one_sinkhorn_iteration():
  """One step from (u, v) = 1 is v = b / K^T u, then u = a / K v (float64 NumPy)."""
  rng = np.random.default_rng(0)
  kernel = np.exp(-rng.uniform(size=(4, 5)) / 0.05).astype(np.float32)
  a, b = np.full(4, 0.25, np.float32), np.full(5, 0.2, np.float32)
  problem = linear_problem.LinearProblem(KernelGeometry(kernel_matrix=jnp.asarray(kernel),
                                                        epsilon=0.05), a=a, b=b)
  solver = sinkhorn.Sinkhorn(lse_mode=False, min_iterations=1, max_iterations=1,
                             inner_iterations=1, implicit_diff=None)
  state = solver.kernel_step(problem, sinkhorn.SinkhornState((jnp.ones(4), jnp.ones(5))), 0)
  k = kernel.astype(np.float64)
  v = b / (k.T @ np.ones(4))
  u = a / (k @ v)
  np.testing.assert_allclose(state.gv, v, rtol=1e-5, err_msg=CHANGED.format(
      what="Sinkhorn.kernel_step's update"))
  np.testing.assert_allclose(state.fu, u, rtol=1e-5, err_msg=CHANGED.format(
      what="Sinkhorn.kernel_step's update"))
  marginal = problem.geom.marginal_from_scalings(state.fu, state.gv, axis=0)
  np.testing.assert_allclose(marginal, (u[:, None] * k * v).sum(0), rtol=1e-5,
                             err_msg=CHANGED.format(what="Geometry.marginal_from_scalings"))
