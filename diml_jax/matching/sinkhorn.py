"""A flat batch of transport problems through OTT-JAX's Sinkhorn.

The entropic flow ``T = argmin <T, 1 - S> - epsilon H(T)`` s.t. ``T 1 = mu``,
``T^T 1 = nu`` of every problem of a batch, in kernel mode as in the published DIML code,
with OTT-JAX's :class:`~ott.solvers.linear.sinkhorn.Sinkhorn` updates under ``vmap``:

- :func:`solve` takes similarities ``[..., r1, r2]`` and marginals, solves the problems
  in blocks of ``block_size`` (:func:`blocked`), and returns the flows (or ``sum T ⊙ W``).
- With ``gradient="constant"`` (the published method) the blocks run :func:`rounds`, the
  round driver below; with ``"implicit"`` or ``"unroll"``, OTT's own solver loop, whose
  gradients OTT provides (:func:`native`).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import acceleration, implicit_differentiation, sinkhorn

from diml_jax.matching.problem import inner
from diml_jax.matching.types import SinkhornOptions

__all__ = ["KernelGeometry", "RoundState", "blocked", "native", "rounds", "solve"]

# Mass given to every part when differentiating through the solver (see solve_block).
_MASS_FLOOR = 1e-6
# Plain Sinkhorn iterations before over-relaxation (at least two rounds: the rate is
# measured over the last one).
_PLAIN_ITERATIONS = 15
# Sinkhorn steps unrolled in a round (all of them up to this many).
_UNROLL = 10
# Pairs still running after the first round are solved on in sub-blocks of this
# fraction of a block.
_STRAGGLER_FRACTION = 8
# exp(-2 / eps) is the smallest kernel entry for cosine costs in [0, 2]; it stays a
# normal float32 down to eps = 2 / 87.
_UNDERFLOW_EPSILON = 0.023
# Ridges for the implicit system, as OTT's docs advise: the kernel ridge fixes the free
# constant of balanced potentials; the identity ridge keeps it solvable when the flow is
# rank-deficient (parts with zero mass in a cross marginal, constant costs).
_IMPLICIT = implicit_differentiation.ImplicitDiff(
    solver_kwargs={"ridge_kernel": 1.0, "ridge_identity": 1e-6}
)


@jax.tree_util.register_pytree_node_class
class KernelGeometry(geometry.Geometry):
  """A dense OTT geometry whose kernel ``exp(-C / eps)`` is built once per problem.

  OTT's :class:`~ott.geometry.geometry.Geometry` re-derives its kernel inside every
  Sinkhorn iteration (``exp(-C / eps)`` from a cost, or ``K ** (eps0 / eps)`` for its
  epsilon schedule), which XLA does not hoist out of the loop. Epsilon is fixed here, so
  the stored kernel is applied as is: one matrix-vector product per half-iteration.
  """

  @property
  def kernel_matrix(self) -> jax.Array:
    return self._kernel_matrix

  def apply_kernel(self, vec, eps=None, axis=0):
    del eps  # no epsilon schedule: the kernel is exp(-C / epsilon) for the one epsilon
    return jnp.dot(self._kernel_matrix if axis == 1 else self._kernel_matrix.T, vec)


class Problems(NamedTuple):
  """A flat batch of ``p`` problems as the solver sees them."""

  data: jax.Array  # kernels exp(-C / eps) [p, r1, r2] (costs C in log mode)
  mu: jax.Array  # [p, r1]
  nu: jax.Array  # [p, r2]


class RoundState(NamedTuple):
  """The round driver's state for a flat batch of ``p`` problems."""

  fu: jax.Array  # scalings u (kernel mode) or potentials f (log mode), [p, r1]
  gv: jax.Array  # scalings v or potentials g, [p, r2]
  error: jax.Array  # L1 error of the column sums after the last check, [p]
  iterations: jax.Array  # iterations run, [p] int32


def solve(s, mu, nu, opts: SinkhornOptions, weights=None):
  """Solves every problem of ``s [..., r1, r2]`` in blocks of ``opts.block`` problems.

  Args:
    s: part similarities ``[..., r1, r2]`` (cost ``1 - s``).
    mu: marginals ``[..., r1]``, each summing to 1.
    nu: marginals ``[..., r2]``, likewise.
    opts: the solver's options.
    weights: ``W [..., r1, r2]`` or ``None``.

  Returns:
    ``(flow [..., r1, r2], iterations [...], error [...])``; with ``weights``,
    ``sum_ij T_ij W_ij`` ``[...]`` in place of the flow.
  """
  batch, (r1, r2) = s.shape[:-2], s.shape[-2:]
  num = math.prod(batch)
  args = [s.reshape(num, r1, r2), mu.reshape(num, r1), nu.reshape(num, r2)]
  if weights is not None:
    args.append(weights.reshape(num, r1, r2))
  out, iterations, error = blocked(
      lambda s, mu, nu, *w: solve_block(s, mu, nu, opts, *w), args, num, opts.block)
  shape = batch if weights is not None else s.shape
  return out.reshape(shape), iterations.reshape(batch), error.reshape(batch)


def blocked(fn: Callable, args: Sequence, num: int, block: int):
  """Maps ``fn`` over blocks of ``block`` along the leading axis (length ``num``) of ``args``
  (arrays, or pytrees of arrays).

  Small blocks keep a block's kernels in cache for all Sinkhorn iterations and let each
  block stop as soon as its own problems have converged.
  """
  if num <= block:
    return fn(*args)
  nblocks = -(-num // block)
  pad = nblocks * block - num
  padded = jax.tree.map(
      lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(
          (nblocks, block) + a.shape[1:]),
      list(args),
  )
  out = jax.lax.map(lambda xs: fn(*xs), padded)
  return jax.tree.map(lambda o: o.reshape((nblocks * block,) + o.shape[2:])[:num], out)


def solve_block(s, mu, nu, opts: SinkhornOptions, weights=None):
  """Flows for one block of problems: ``s [p, r1, r2]`` -> ``(T, iterations, error)``.

  With ``weights [p, r1, r2]`` (``S`` or ``D``), returns ``sum_ij T_ij W_ij`` ``[p]`` in
  place of ``T``: in kernel mode that is ``u^T (K ⊙ W) v``, contracted without forming
  ``T``.
  """
  eps = opts.epsilon
  if opts.gradient == "constant":
    # The published method treats the flow as a constant in the backward pass.
    s, mu, nu = jax.lax.stop_gradient((s, mu, nu))
  else:
    # A part with zero mass has a potential of -inf, whose derivative is NaN in OTT's
    # backward pass; a floor of 1e-6 per part (about 1e-6 on the similarity) keeps the
    # solver differentiable. Cross marginals have zero-mass parts often.
    mu, nu = ((m + _MASS_FLOOR) / (1.0 + m.shape[-1] * _MASS_FLOOR) for m in (mu, nu))
  cost = 1.0 - s
  if opts.lse_mode:
    data, make = cost, lambda c: geometry.Geometry(cost_matrix=c, epsilon=eps)
  else:
    if eps < _UNDERFLOW_EPSILON:
      # Subtracting each row's smallest cost rescales the kernel's rows, which the row
      # scalings absorb: the same flow, but no row of the kernel can underflow to 0.
      cost = cost - jax.lax.stop_gradient(cost.min(-1, keepdims=True))
    data = jnp.exp(-cost / eps)  # once per problem, not once per iteration
    make = lambda k: KernelGeometry(kernel_matrix=k, epsilon=eps)

  def flow(d, fu, gv):
    geom = make(d)
    if opts.lse_mode:
      return geom.transport_from_potentials(fu, gv)
    return geom.transport_from_scalings(fu, gv)

  problems = Problems(data, mu, nu)
  state = (rounds if opts.gradient == "constant" else native)(problems, make, opts)
  if weights is None:
    return jax.vmap(flow)(data, state.fu, state.gv), state.iterations, state.error
  if opts.lse_mode:
    total = inner(jax.vmap(flow)(data, state.fu, state.gv), weights)
  else:
    total = jnp.einsum("prs,pr,ps->p", data * weights, state.fu, state.gv)
  return total, state.iterations, state.error


def rounds(problems: Problems, make, opts: SinkhornOptions) -> RoundState:
  """OTT's Sinkhorn in rounds of ``check_every`` iterations, with adaptive over-relaxation.

  Under ``vmap``, OTT's own convergence loop has a per-pair (batched) stopping condition,
  which JAX turns into selects on every step: all pairs pay for every iteration and for
  an error computation at each one. A round here is ``check_every`` of OTT's Sinkhorn
  updates (``Sinkhorn.kernel_step``, or ``lse_step`` in log mode) unrolled, from the
  solver's own state (scalings in kernel mode), then the solution error. The loop over
  rounds stops on one scalar, the block's largest error. A pair that has converged
  keeps its solution, so each pair's result is the same whatever block it is solved in
  (sharded and single-device runs agree exactly).

  The first round is also checked halfway (after ``check_every // 2`` iterations). Then
  the pairs still running (the stragglers) are gathered into sub-blocks of
  ``block_size / 8`` pairs and only those are solved on: a block does not iterate all its
  pairs until its slowest one has converged. If more than a sub-block's worth of pairs is
  still running at the halfway check, the whole block finishes its first round before
  they are gathered. Every pair is checked after the same iterations (``check_every //
  2``, ``check_every``, then every ``check_every``) whether it is gathered or not, so
  this leaves every result as it was.

  After ``_PLAIN_ITERATIONS`` plain iterations (at least two rounds), each unconverged
  pair measures its convergence rate over the last round and is over-relaxed with OTT's
  :class:`~ott.solvers.linear.acceleration.Momentum` at Lehmann et al.'s weight (OTT's
  ``Momentum.lehmann``), reset to 1 if the error grows tenfold. Gradients do not flow
  through the solver here (the flow is a constant), so no custom VJP is needed.

  Args:
    problems: kernels (or costs) and marginals of ``p`` problems.
    make: builds a problem's OTT geometry from its ``data``.
    opts: the solver's options.

  Returns:
    The final :class:`RoundState`.

  References:
    Lehmann, von Renesse, Sambale, Uschmajew. A note on overrelaxation in the Sinkhorn
    algorithm. Optimization Letters, 2022.
  """
  fixed = opts.threshold is None
  n = opts.max_iterations if fixed else opts.check_every
  half = 0 if fixed else n // 2  # iterations before the first round's halfway check
  converged = lambda error: error <= opts.threshold

  def solve_round(problems: Problems, fu, gv, omega, steps):
    """``steps`` of OTT's updates for every problem -> ``(fu, gv, error)``."""
    def one(d, a, b, fu, gv, w):
      solver = sinkhorn.Sinkhorn(
          lse_mode=opts.lse_mode, min_iterations=steps, max_iterations=steps,
          inner_iterations=steps, implicit_diff=None,
          momentum=None if omega is None else acceleration.Momentum(value=w),
      )
      problem = linear_problem.LinearProblem(make(d), a=a, b=b)
      step = solver.lse_step if opts.lse_mode else solver.kernel_step
      state = jax.lax.fori_loop(
          0, steps, lambda i, state: step(problem, state, i),
          sinkhorn.SinkhornState((fu, gv)), unroll=min(steps, _UNROLL),
      )
      # OTT's solution error for these updates (the last one equalises the rows): the
      # L1 deviation of the columns' marginal, written out because OTT's own takes the
      # norm's order as an array (two powers per entry).
      geom = problem.geom
      marginal = (geom.marginal_from_potentials if opts.lse_mode else
                  geom.marginal_from_scalings)(state.fu, state.gv, axis=0)
      return state.fu, state.gv, jnp.sum(jnp.abs(marginal - b))

    w = jnp.ones_like(problems.mu[:, 0]) if omega is None else omega
    return jax.vmap(one)(*problems, fu, gv, w)

  def advance(problems: Problems, state: RoundState, omega=None, steps=n) -> RoundState:
    """``steps`` more iterations for the running pairs; converged pairs keep theirs."""
    fu, gv, error = solve_round(problems, state.fu, state.gv, omega, steps)
    done = converged(state.error)
    keep = lambda old, new: jnp.where(done[:, None], old, new)
    return RoundState(keep(state.fu, fu), keep(state.gv, gv),
                      jnp.where(done, state.error, error),
                      jnp.where(done, state.iterations, state.iterations + steps))

  mu, nu = problems.mu, problems.nu
  start = (jnp.zeros_like(mu), jnp.zeros_like(nu)) if opts.lse_mode else (
      jnp.ones_like(mu), jnp.ones_like(nu))
  first = half or n
  state = RoundState(*solve_round(problems, *start, None, first),
                     jnp.full(mu.shape[:1], first, jnp.int32))
  if fixed:
    return state
  max_rounds = -(-opts.max_iterations // n)
  plain_rounds = min(max(2, -(-_PLAIN_ITERATIONS // n)), max_rounds)
  momentum = acceleration.Momentum(start=2 * n, inner_iterations=n)

  def lehmann(previous, error):
    """OTT's Lehmann weight for a pair whose error went from ``previous`` to ``error``.

    OTT caps the error ratio at 0.99 before taking its ``n``-th root (the rate per
    iteration); here the rate itself is capped at 0.99 (the ratio at ``0.99 ** n``): a
    gentler weight, with which the accuracy at the 100-iteration cap on shared parts
    stays as tests/test_matching.py states it.
    """
    ratio = jnp.minimum(error / previous, 0.99 ** n)
    errors = jnp.stack([jnp.ones_like(ratio), ratio])[:, None]  # rows: checks, as OTT's
    return momentum.lehmann(sinkhorn.SinkhornState((), errors=errors))

  def finish_first(problems: Problems, state: RoundState) -> RoundState:
    """The second half of the first round, unless every pair converged at its middle."""
    if not half:
      return state
    return jax.lax.cond(jnp.max(state.error) > opts.threshold,
                        lambda s: advance(problems, s, steps=n - half), lambda s: s, state)

  class Plain(NamedTuple):
    round: jax.Array
    state: RoundState
    previous: jax.Array  # each pair's error before the last round

  class Relaxed(NamedTuple):
    round: jax.Array
    state: RoundState
    omega: jax.Array  # each pair's over-relaxation weight
    start: jax.Array  # each pair's error when over-relaxation began

  def running(limit):
    return lambda c: (c.round < limit) & (jnp.max(c.state.error) > opts.threshold)

  def more_rounds(problems: Problems, state: RoundState) -> RoundState:
    """Rounds after the first, until every pair has converged or the cap."""
    plain = jax.lax.while_loop(
        running(plain_rounds),
        lambda c: Plain(c.round + 1, advance(problems, c.state), c.state.error),
        Plain(jnp.asarray(1), state, jnp.full_like(state.error, jnp.inf)))
    error = plain.state.error
    previous = jnp.where(plain.previous > 0, plain.previous, jnp.inf)
    omega = jnp.where(error < previous, jax.vmap(lehmann)(previous, error), 1.0)

    def relaxed(c: Relaxed) -> Relaxed:
      state = advance(problems, c.state, c.omega)
      return c._replace(round=c.round + 1, state=state,
                        omega=jnp.where(state.error > 10 * c.start, 1.0, c.omega))

    return jax.lax.while_loop(running(max_rounds), relaxed,
                              Relaxed(plain.round, plain.state, omega, error)).state

  p = mu.shape[0]
  sub = max(1, opts.block // _STRAGGLER_FRACTION)
  if p <= sub or max_rounds == 1:
    return more_rounds(problems, finish_first(problems, state))

  # Most pairs converge in the first round; the others (the stragglers) are gathered
  # into sub-blocks so that the later rounds run on them only. Padding pairs count as
  # converged.
  pad = -p % sub
  padded = lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))

  def gathered(state: RoundState, first_pending: bool) -> RoundState:
    all_problems = Problems(*map(padded, problems))
    state = RoundState(*map(padded, state))
    running = ~converged(state.error)
    # Stragglers first, in order: the indices of the running pairs, then the others
    # (a stable partition; cheaper than sorting).
    first, second = jnp.cumsum(running), jnp.cumsum(~running)
    stragglers = first[-1]
    position = jnp.where(running, first - 1, stragglers + second - 1)
    order = jnp.zeros_like(position).at[position].set(
        jnp.arange(position.size, dtype=position.dtype), unique_indices=True)

    def sub_block(i, state: RoundState) -> RoundState:
      idx = jax.lax.dynamic_slice_in_dim(order, i * sub, sub)
      local_problems = Problems(*(a[idx] for a in all_problems))
      local = RoundState(*(a[idx] for a in state))
      if first_pending:
        local = finish_first(local_problems, local)
      new = more_rounds(local_problems, local)
      return RoundState(*(a.at[idx].set(b) for a, b in zip(state, new)))

    state = jax.lax.fori_loop(0, (stragglers + sub - 1) // sub, sub_block, state)
    return RoundState(*(a[:p] for a in state))

  if not half:
    return gathered(state, False)
  # Few stragglers at the halfway check: gather them now; many: the block finishes its
  # first round first (gathering most of a block would only cost time).
  return jax.lax.cond(
      jnp.sum(~converged(state.error)) <= sub, lambda s: gathered(s, True),
      lambda s: gathered(finish_first(problems, s), False), state)


def native(problems: Problems, make, opts: SinkhornOptions) -> RoundState:
  """OTT's Sinkhorn with its own convergence loop, for gradients through the solver.

  ``"implicit"`` uses OTT's implicit differentiation at the solution; ``"unroll"`` its
  backpropagation through the iterations.
  """
  fixed = opts.threshold is None
  solver = sinkhorn.Sinkhorn(
      lse_mode=opts.lse_mode,
      threshold=0.0 if fixed else opts.threshold,
      min_iterations=opts.max_iterations if fixed else 0,
      max_iterations=opts.max_iterations,
      inner_iterations=opts.max_iterations if fixed else opts.check_every,
      implicit_diff=_IMPLICIT if opts.gradient == "implicit" else None,
  )

  def one(d, a, b):
    geom = make(d)
    out = solver(linear_problem.LinearProblem(geom, a=a, b=b))
    # Unrun checks hold -1; the checks that ran fill the front of the array.
    last = out.errors[jnp.maximum(jnp.sum(out.errors != -1) - 1, 0)]
    if opts.lse_mode:
      return RoundState(out.f, out.g, last, out.n_iters)
    return RoundState(geom.scaling_from_potential(out.f), geom.scaling_from_potential(out.g),
                      last, out.n_iters)

  return jax.vmap(one)(*problems)
