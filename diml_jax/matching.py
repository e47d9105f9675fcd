"""Structural matching: DIML's optimal-transport similarity between the parts of two images.

Each image is a set of ``r`` local feature vectors (its parts) and one global vector. DIML
(Zhao et al., ICCV 2021, Sec. 3; TPAMI 2023, Sec. 3) compares two images ``a`` and ``b`` by
the optimal-transport flow ``T`` between their parts:

.. math::

  S_{ij} = \\langle x_i, y_j \\rangle, \\qquad
  T = \\arg\\min_{T \\mathbf{1} = \\mu,\\; T^\\top \\mathbf{1} = \\nu}
      \\langle T, 1 - S \\rangle - \\varepsilon H(T), \\qquad
  s(a, b) = \\sum_{ij} T_{ij} S_{ij},

with cross-correlation marginals ``mu_i ∝ relu(<x_i, g_b>)``, ``nu_j ∝ relu(<y_j, g_a>)``
(a part weighs as much as it resembles the *other* image as a whole) or uniform ones.
``T ⊙ S`` decomposes the similarity into part-to-part contributions: the explanation.

The flow is computed by OTT-JAX's :class:`~ott.solvers.linear.sinkhorn.Sinkhorn` in kernel
mode, configured for many small problems under ``vmap`` (see :func:`match`).

Public functions:

- :func:`match`: everything about a batch of pairs (flow, part similarities, marginals).
- :func:`structural_similarity`: ``sum T ⊙ S`` only.
- :func:`diml_similarity`, :func:`diml_distance`: the training-loss quantities
  ``(sum T⊙S + <g_a, g_b>) / 2`` and ``(sum T⊙D + ||g_a - g_b||) / 2``.
- :func:`pairwise`: all pairs between two sets, ``[n, m]``, memory-bounded; or within
  one set, ``[n, n]``, each unordered pair solved once.
- :func:`rerank`: each query against its own candidates, ``[q, k]``.
- :func:`transport`: the solver alone, for given similarities and marginals.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import acceleration, implicit_differentiation, sinkhorn

__all__ = [
    "Matching",
    "SinkhornOptions",
    "match",
    "structural_similarity",
    "diml_similarity",
    "diml_distance",
    "pairwise",
    "rerank",
    "transport",
    "normalize",
]

Marginals = Literal["cross", "uniform"] | tuple[jax.Array, jax.Array]
Gradient = Literal["constant", "implicit", "unroll"]
Quantity = Literal["structural", "similarity", "distance"]

# Below this total weight a cross-correlation marginal is taken as empty (every part
# anti-correlated with the other image) and replaced by the uniform marginal.
_EMPTY_MASS = 1e-6
# Added under the square root of local distances, as the reference margin loss does, so
# that identical parts give a finite gradient.
_DISTANCE_FLOOR = 1e-8


class Matching(NamedTuple):
  """Result of :func:`match` for a batch of image pairs ``[...]``.

  Attributes:
    similarity: structural similarity ``sum_ij T_ij S_ij``, ``[...]``.
    flow: the transport plan ``T``, ``[..., r1, r2]``.
    part_similarity: cosine similarities ``S`` of the parts, ``[..., r1, r2]``.
    mu: marginal over the parts of the first image, ``[..., r1]``.
    nu: marginal over the parts of the second image, ``[..., r2]``.
    iterations: Sinkhorn iterations run for each pair, ``[...]``.
    error: L1 deviation of the flow's row sums from ``mu`` after the last
      check, ``[...]``; at most the ``threshold`` unless ``max_iterations`` was hit.
  """

  similarity: jax.Array
  flow: jax.Array
  part_similarity: jax.Array
  mu: jax.Array
  nu: jax.Array
  iterations: jax.Array
  error: jax.Array

  @property
  def contributions(self) -> jax.Array:
    """Part-to-part contributions ``T ⊙ S``, ``[..., r1, r2]``; they sum to ``similarity``."""
    return self.flow * self.part_similarity

  @property
  def row_contributions(self) -> jax.Array:
    """How much each part of the first image contributed, ``[..., r1]``."""
    return self.contributions.sum(-1)

  @property
  def column_contributions(self) -> jax.Array:
    """How much each part of the second image contributed, ``[..., r2]``."""
    return self.contributions.sum(-2)


class SinkhornOptions(NamedTuple):
  """How the flow is solved; the defaults are DIML's (see :func:`match`)."""

  epsilon: float = 0.05
  threshold: float | None = 1e-3
  max_iterations: int = 100
  check_every: int = 10
  lse_mode: bool = False
  gradient: Gradient = "constant"
  block_size: int | None = None


# --------------------------------------------------------------------------------------
# Pieces shared by every entry point.


def normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """L2-normalises ``x`` along ``axis``; an all-zero vector stays zero (finite gradient)."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, 1e-12))


def _cross_marginal(weights: jax.Array) -> jax.Array:
  """``relu`` correlations ``[..., r]`` -> a probability vector; uniform if all are zero."""
  weights = jax.nn.relu(weights)
  mass = weights.sum(-1, keepdims=True)
  empty = mass < _EMPTY_MASS
  uniform = jnp.full_like(weights, 1.0 / weights.shape[-1])
  return jnp.where(empty, uniform, weights / jnp.where(empty, 1.0, mass))


@jax.tree_util.register_pytree_node_class
class _KernelGeometry(geometry.Geometry):
  """A dense OTT geometry whose kernel ``exp(-C / eps)`` is built once per problem.

  OTT's :class:`~ott.geometry.geometry.Geometry` re-derives its kernel inside every
  Sinkhorn iteration (``exp(-C / eps)`` from a cost, or ``K ** (eps0 / eps)`` for its
  epsilon schedule); XLA does not hoist that out of the loop, so each iteration paid two
  exponentiations of the whole matrix. Epsilon is fixed here, so the stored kernel is
  applied as is: one matrix-vector product per half-iteration.
  """

  @property
  def kernel_matrix(self) -> jax.Array:
    return self._kernel_matrix

  def apply_kernel(self, vec, eps=None, axis=0):
    del eps  # no epsilon schedule: the kernel is exp(-C / epsilon) for the one epsilon
    return jnp.dot(self._kernel_matrix if axis == 1 else self._kernel_matrix.T, vec)


# Mass given to every part when differentiating through the solver (see _transport).
_MASS_FLOOR = 1e-6
# Plain Sinkhorn iterations before over-relaxation (at least two rounds: the rate is
# measured over the last one).
_PLAIN_ITERATIONS = 15
# Sinkhorn steps unrolled in a round (all of them up to this many).
_UNROLL = 10
# A tile of pairwise holds up to this many blocks (block_size pairs each) of pairs, whose
# part similarities come from one matrix product: on a 2-core CPU a [256 x 1024] product
# runs about 1.5x faster per entry than a [256 x 256] one (XLA gives it both cores).
_TILE_BLOCKS = 4
# Pairs still running after the first round are solved on in sub-blocks of this
# fraction of a block.
_STRAGGLER_FRACTION = 8
# exp(-2 / eps) is the smallest kernel entry for cosine costs in [0, 2]; it stays a
# normal float32 down to eps = 2 / 87.
_UNDERFLOW_EPSILON = 0.023


def _transport(
    s: jax.Array, mu: jax.Array, nu: jax.Array, opts: SinkhornOptions,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Flows for a flat batch of problems: ``s [p, r1, r2]`` -> ``(T, iterations, error)``.

  With ``weights [p, r1, r2]`` (``S`` or ``D``), returns ``sum_ij T_ij W_ij`` ``[p]`` in
  place of ``T``: in kernel mode that is ``u^T (K ⊙ W) v``, contracted without forming
  ``T`` (as a reduction of ``K u v W`` it cost more than the Sinkhorn iterations).
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
    make = lambda k: _KernelGeometry(kernel_matrix=k, epsilon=eps)

  # The solver's state: potentials (f, g) in log mode, scalings (u, v) in kernel mode.
  def flow(d, fu, gv):
    geom = make(d)
    if opts.lse_mode:
      return geom.transport_from_potentials(fu, gv)
    return geom.transport_from_scalings(fu, gv)

  if opts.gradient == "constant":
    fu, gv, iterations, error = _sinkhorn_rounds(data, make, mu, nu, opts)
  else:
    fu, gv, iterations, error = _sinkhorn_native(data, make, mu, nu, opts)
  if weights is None:
    return jax.vmap(flow)(data, fu, gv), iterations, error
  if opts.lse_mode:
    return _inner(jax.vmap(flow)(data, fu, gv), weights), iterations, error
  return jnp.einsum("prs,pr,ps->p", data * weights, fu, gv), iterations, error


def _sinkhorn_rounds(data, make, mu, nu, opts: SinkhornOptions):
  """OTT's Sinkhorn in rounds of ``check_every`` iterations, with adaptive over-relaxation.

  Under ``vmap``, OTT's own convergence loop has a per-pair (batched) stopping condition,
  which JAX turns into selects on every step: all pairs pay for every iteration and for
  an error computation at each one. A round here is ``check_every`` of OTT's Sinkhorn
  updates (``Sinkhorn.kernel_step``, or ``lse_step`` in log mode) unrolled, from the
  solver's own state (scalings in kernel mode: no conversion to potentials and back
  between rounds), then OTT's ``solution_error``; driving the steps directly, rather
  than through OTT's fixed-count loop, saves a condition and a loop step per iteration,
  which on a CPU cost more than the iteration's two matrix-vector products. The loop
  over rounds stops on one scalar, the block's largest error. A pair that has converged
  keeps its solution, so each pair's result is the same whatever block it is solved in
  (sharded and single-device runs agree exactly).

  The first round is also checked halfway (after ``check_every // 2`` iterations): on
  CNN-like features most pairs have converged by then (93% of the benchmark's ReLU
  pairs after 5 iterations). Then the pairs still running (the stragglers) are gathered
  into sub-blocks of ``block_size / 8`` pairs and only those are solved on: a block no
  longer iterates all its pairs until its slowest one has converged. If more than a
  sub-block's worth of pairs is still running at the halfway check, the whole block
  finishes its first round before they are gathered. Every pair is checked after the
  same iterations (``check_every // 2``, ``check_every``, then every ``check_every``)
  whether it is gathered or not, so this too leaves every result as it was.

  Parts that are shared or moved between images (DIML's use case) make Sinkhorn converge
  slowly at ``epsilon = 0.05``. After ``_PLAIN_ITERATIONS`` plain iterations (at least
  two rounds), each unconverged
  pair measures its convergence rate ``rho`` and is over-relaxed with OTT's momentum at
  Lehmann et al.'s weight ``2 / (1 + sqrt(1 - rho))`` (reset to 1 if the error grows
  tenfold), which cut the iterations on such inputs three- to fourfold in our tests and
  leaves inputs that converge in a few rounds untouched. Gradients do not flow through
  the solver here (the flow is a constant), so no custom VJP is needed.

  References:
    Lehmann, von Renesse, Sambale, Uschmajew. A note on overrelaxation in the Sinkhorn
    algorithm. Optimization Letters, 2022.
  """
  fixed = opts.threshold is None
  n = opts.max_iterations if fixed else opts.check_every
  half = 0 if fixed else n // 2  # iterations before the first round's halfway check

  def solve_round(data, mu, nu, fu, gv, omega, steps=n):
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
      # L1 deviation of the columns' marginal; written out because OTT's own takes the
      # norm's order as an array, which costs two powers per entry.
      geom = problem.geom
      marginal = (geom.marginal_from_potentials if opts.lse_mode else
                  geom.marginal_from_scalings)(state.fu, state.gv, axis=0)
      return state.fu, state.gv, jnp.sum(jnp.abs(marginal - b))

    w = jnp.ones_like(mu[:, 0]) if omega is None else omega
    return jax.vmap(one)(data, mu, nu, fu, gv, w)

  def advance(data, mu, nu, state, omega, steps=n):
    """``steps`` more iterations for the running pairs; converged pairs keep theirs."""
    f, g, error, iterations = state
    new_f, new_g, new_error = solve_round(data, mu, nu, f, g, omega, steps)
    done = error <= opts.threshold
    keep = lambda old, new: jnp.where(done[:, None], old, new)
    return (keep(f, new_f), keep(g, new_g), jnp.where(done, error, new_error),
            jnp.where(done, iterations, iterations + steps))

  start = (jnp.zeros_like(mu), jnp.zeros_like(nu)) if opts.lse_mode else (
      jnp.ones_like(mu), jnp.ones_like(nu))
  f, g, error = solve_round(data, mu, nu, *start, None, half or n)
  state = (f, g, error, jnp.full(mu.shape[:1], half or n, jnp.int32))
  if fixed:
    return f, g, state[3], error
  max_rounds = -(-opts.max_iterations // n)

  def finish_first(data, mu, nu, state):
    """The second half of the first round, unless every pair converged at its middle."""
    if not half:
      return state
    return jax.lax.cond(jnp.max(state[2]) > opts.threshold,
                        lambda s: advance(data, mu, nu, s, None, n - half), lambda s: s, state)

  def more_rounds(data, mu, nu, state):
    """Rounds after the first, until every pair has converged or the cap."""

    def step(carry, omega):
      k, *state = carry[:5]
      return (k + 1, *advance(data, mu, nu, state, omega))

    def running(limit):
      return lambda c: (c[0] < limit) & (jnp.max(c[3]) > opts.threshold)

    # Plain rounds, remembering the error before the last one to measure the rate.
    k, f, g, error, iterations, previous = jax.lax.while_loop(
        running(min(max(2, -(-_PLAIN_ITERATIONS // n)), max_rounds)),
        lambda c: (*step(c, None), c[3]),
        (1, *state, jnp.full_like(state[2], jnp.inf)),
    )
    ratio = error / jnp.where(previous > 0, previous, jnp.inf)
    rho = jnp.minimum(ratio ** (1.0 / n), 0.99)
    omega = jnp.where(ratio < 1.0, 2.0 / (1.0 + jnp.sqrt(1.0 - rho)), 1.0)

    def accelerated(c):
      k, f, g, error, iterations, omega, start = c
      k, f, g, error, iterations = step((k, f, g, error, iterations), omega)
      return k, f, g, error, iterations, jnp.where(error > 10 * start, 1.0, omega), start

    _, f, g, error, iterations, _, _ = jax.lax.while_loop(
        running(max_rounds), accelerated, (k, f, g, error, iterations, omega, error),
    )
    return f, g, error, iterations

  p = mu.shape[0]
  sub = max(1, opts.block_size // _STRAGGLER_FRACTION)
  if p <= sub or max_rounds == 1:
    f, g, error, iterations = more_rounds(data, mu, nu, finish_first(data, mu, nu, state))
    return f, g, iterations, error

  # Most pairs converge in the first round; the others (the stragglers) are gathered
  # into sub-blocks so that the later rounds run on them only, not on whole blocks
  # waiting for their slowest pair. Padding pairs count as converged.
  pad = -p % sub
  padded = lambda a, value=0: jnp.pad(
      a, [(0, pad)] + [(0, 0)] * (a.ndim - 1), constant_values=value)

  def gathered(state, first_pending):
    f, g, error, iterations = state
    problems = tuple(map(padded, (data, mu, nu)))
    f, g, iterations = map(padded, (f, g, iterations))
    error = padded(error, 0.0)
    running = error > opts.threshold
    # Stragglers first, in order: the indices of the running pairs, then the others
    # (a stable partition; cheaper than sorting).
    first, second = jnp.cumsum(running), jnp.cumsum(~running)
    stragglers = first[-1]
    position = jnp.where(running, first - 1, stragglers + second - 1)
    order = jnp.zeros_like(position).at[position].set(
        jnp.arange(position.size, dtype=position.dtype), unique_indices=True)

    def sub_block(i, state):
      idx = jax.lax.dynamic_slice_in_dim(order, i * sub, sub)
      problem = tuple(a[idx] for a in problems)
      local = tuple(a[idx] for a in state)
      if first_pending:
        local = finish_first(*problem, local)
      new = more_rounds(*problem, local)
      return tuple(a.at[idx].set(b) for a, b in zip(state, new))

    f, g, error, iterations = jax.lax.fori_loop(
        0, (stragglers + sub - 1) // sub, sub_block, (f, g, error, iterations))
    return f[:p], g[:p], iterations[:p], error[:p]

  if not half:
    return gathered(state, False)
  # Few stragglers at the halfway check: gather them now; many: the block finishes its
  # first round first (gathering most of a block would only cost time).
  return jax.lax.cond(
      jnp.sum(state[2] > opts.threshold) <= sub, lambda s: gathered(s, True),
      lambda s: gathered(finish_first(data, mu, nu, s), False), state)


# Ridges for the implicit system, as OTT's docs advise: the kernel ridge fixes the free
# constant of balanced potentials; the identity ridge keeps it solvable when the flow is
# rank-deficient (parts with zero mass in a cross marginal, constant costs).
_IMPLICIT = implicit_differentiation.ImplicitDiff(
    solver_kwargs={"ridge_kernel": 1.0, "ridge_identity": 1e-6}
)


def _sinkhorn_native(data, make, mu, nu, opts: SinkhornOptions):
  """OTT's Sinkhorn with its own convergence loop, for gradients through the solver.

  ``"implicit"`` uses OTT's implicit differentiation at the solution; ``"unroll"`` its
  checkpointed backpropagation through the iterations.
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
      return out.f, out.g, out.n_iters, last
    return (geom.scaling_from_potential(out.f), geom.scaling_from_potential(out.g),
            out.n_iters, last)

  return jax.vmap(one)(data, mu, nu)


def _blocked(fn, args: Sequence[jax.Array], num: int, block: int):
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


def _options(**kwargs: Any) -> SinkhornOptions:
  """Checked, hashable Sinkhorn options (they are static arguments of the jitted cores)."""
  opts = SinkhornOptions(**kwargs)
  if isinstance(opts.epsilon, jax.core.Tracer) or not opts.epsilon > 0:
    raise ValueError(
        f"epsilon must be a Python number > 0 (it is compiled in); got {opts.epsilon!r}."
    )
  if opts.threshold is not None and not opts.threshold > 0:
    raise ValueError(
        f"threshold must be > 0, or None for exactly max_iterations iterations; "
        f"got {opts.threshold!r}."
    )
  if int(opts.max_iterations) < 1:
    raise ValueError(f"max_iterations must be >= 1, got {opts.max_iterations!r}.")
  if opts.threshold is not None and not 1 <= opts.check_every <= opts.max_iterations:
    raise ValueError(
        f"check_every must be in [1, max_iterations={opts.max_iterations}], "
        f"got {opts.check_every!r}."
    )
  if opts.gradient not in ("constant", "implicit", "unroll"):
    raise ValueError(
        f"gradient must be 'constant', 'implicit' or 'unroll', got {opts.gradient!r}."
    )
  if opts.block_size is not None and opts.block_size < 1:
    raise ValueError(f"block_size must be >= 1 or None, got {opts.block_size!r}.")
  # On a CPU a block's kernels (256 x r1 x r2 floats) stay in cache; accelerators want
  # wide batches to fill their cores.
  default_block = 256 if jax.default_backend() == "cpu" else 16384
  return opts._replace(
      epsilon=float(opts.epsilon),
      threshold=None if opts.threshold is None else float(opts.threshold),
      max_iterations=int(opts.max_iterations),
      check_every=int(opts.check_every),
      block_size=int(opts.block_size or default_block),
  )


def _check_locals(name: str, x: Any, layout: str = "[..., r, c]") -> jax.Array:
  x = jnp.asarray(x)
  dims = [d for d in layout.strip("[]").split(", ") if d != "..."]
  if x.ndim < len(dims) or (layout[1] != "." and x.ndim != len(dims)):
    raise ValueError(f"{name} must be local features {layout}; got shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating-point array; got dtype {x.dtype}.")
  return x


def _check_globals(name: str, g: Any, expected: tuple[int, ...]) -> jax.Array | None:
  if g is None:
    return None
  g = jnp.asarray(g)
  if g.shape != expected:
    raise ValueError(
        f"{name} must have shape {expected} (the batch dimensions of the local "
        f"features and c); got {g.shape}."
    )
  return g


def _check_kind(marginals: Any) -> str:
  if isinstance(marginals, str) and marginals in ("cross", "uniform"):
    return marginals
  if isinstance(marginals, tuple) and len(marginals) == 2:
    return "given"
  raise ValueError(
      f"marginals must be 'cross', 'uniform' or a pair of arrays (mu, nu); got "
      f"{marginals!r}."
  )


def _check_quantity(quantity: Any) -> Quantity:
  if quantity not in ("structural", "similarity", "distance"):
    raise ValueError(
        f"quantity must be 'structural', 'similarity' or 'distance'; got {quantity!r}."
    )
  return quantity


def _float32(x: jax.Array) -> jax.Array:
  """Half-precision inputs are matched in float32; float64 stays float64."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _prepare(x: jax.Array, g: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Normalised local features and global vectors (by default the mean of the locals)."""
  x = normalize(_float32(x))
  g = normalize(x.mean(-2)) if g is None else normalize(_float32(g))
  return x, g


def _marginal_pair(marginals: str, x_gy: jax.Array, y_gx: jax.Array):
  """``(mu, nu)`` from the correlations ``<x_i, g_y>`` ``[..., r1]`` and ``<y_j, g_x>``."""
  if marginals == "cross":
    return _cross_marginal(x_gy), _cross_marginal(y_gx)
  return (
      jnp.full_like(x_gy, 1.0 / x_gy.shape[-1]),
      jnp.full_like(y_gx, 1.0 / y_gx.shape[-1]),
  )


def _distance(similarity: jax.Array) -> jax.Array:
  """Euclidean distance between unit vectors from their cosine similarity."""
  return jnp.sqrt(jnp.maximum(2.0 - 2.0 * similarity, 0.0) + _DISTANCE_FLOOR)


def _local_weights(quantity: Quantity, s: jax.Array) -> jax.Array:
  """What the flow weighs for ``quantity``: ``S``, or ``D`` for the distance."""
  return _distance(s) if quantity == "distance" else s


def _quantity(quantity: Quantity, transported: jax.Array, global_sim: jax.Array,
              mass: float = 1.0) -> jax.Array:
  """Combines ``sum T ⊙ W`` (``W`` from :func:`_local_weights`) with the global term.

  For a partial flow of total ``mass = p < 1`` the structural term is divided by ``p``:
  the flow-weighted mean over the matched parts, on the scale of a cosine (or of a
  distance between unit vectors) whatever ``p``, so that the losses' margins and
  thresholds and the ``structural + global`` re-ranking keep their meaning; ``p = 1``
  divides by one (exactly the ordinary quantities).
  """
  transported = transported / mass
  if quantity == "structural":
    return transported
  if quantity == "similarity":
    return 0.5 * (transported + global_sim)
  return 0.5 * (transported + _distance(global_sim))


def _inner(a: jax.Array, b: jax.Array) -> jax.Array:
  """``sum_ij a_ij b_ij`` over the last two axes."""
  return jnp.sum(a * b, (-2, -1))


def _transported(s, mu, nu, weights, mass: float, opts: SinkhornOptions) -> jax.Array:
  """``sum T ⊙ weights`` for the flow ``T`` of ``(s, mu, nu)``, or for ``mass < 1`` the
  partial flow of :mod:`diml_jax.partial`."""
  if mass == 1.0:
    return _flat_transported(s, mu, nu, weights, opts)
  # diml_jax.partial solves its augmented problem with this module's transport, so it is
  # imported here, not at the top (a cycle).
  from diml_jax import partial  # pylint: disable=g-import-not-at-top
  flow, _, _ = partial._partial_flow(s, mu, nu, jnp.asarray(mass, s.dtype), opts._asdict(),
                                     full=False)
  return _inner(flow, weights)


def _check_mass(mass: Any) -> float:
  if isinstance(mass, jax.core.Tracer) or not isinstance(mass, (int, float)) or not (
      0 < mass <= 1):
    raise ValueError(f"`mass` (the fraction p of mass transported) must be a Python number in"
                     f" (0, 1]; got {mass!r}.")
  return float(mass)


def _check_weights(marginals: Any, shapes: tuple, layouts: tuple) -> tuple[jax.Array, ...]:
  """Per-item part weights ``(mu, nu)`` of the exact ``shapes``, or ``()`` for a string."""
  if _check_kind(marginals) != "given":
    return ()
  weights = []
  for name, m, shape, layout in zip(("mu", "nu"), marginals, shapes, layouts):
    m = jnp.asarray(m)
    if m.shape != shape or not jnp.issubdtype(m.dtype, jnp.floating):
      raise ValueError(f"marginal {name} must be floating-point part weights {layout} ="
                       f" {shape}; got {m.dtype}{list(m.shape)}.")
    weights.append(_float32(m))
  return tuple(weights)


def _flat_transport(s, mu, nu, opts: SinkhornOptions):
  """Solves every problem of ``s [..., r1, r2]`` in blocks; returns arrays shaped ``[...]``."""
  batch, (r1, r2) = s.shape[:-2], s.shape[-2:]
  num = math.prod(batch)
  flow, iterations, error = _blocked(
      lambda s, mu, nu: _transport(s, mu, nu, opts),
      (s.reshape(num, r1, r2), mu.reshape(num, r1), nu.reshape(num, r2)),
      num, opts.block_size,
  )
  return flow.reshape(s.shape), iterations.reshape(batch), error.reshape(batch)


def _flat_transported(s, mu, nu, weights, opts: SinkhornOptions) -> jax.Array:
  """``sum_ij T_ij W_ij`` for every problem of ``s [..., r1, r2]``, in blocks: ``[...]``."""
  batch, (r1, r2) = s.shape[:-2], s.shape[-2:]
  num = math.prod(batch)
  total, _, _ = _blocked(
      lambda s, mu, nu, w: _transport(s, mu, nu, opts, weights=w),
      (s.reshape(num, r1, r2), mu.reshape(num, r1), nu.reshape(num, r2),
       weights.reshape(num, r1, r2)),
      num, opts.block_size,
  )
  return total.reshape(batch)


# --------------------------------------------------------------------------------------
# Jitted cores: the public functions check their arguments, then call one of these.


@functools.partial(jax.jit, static_argnames=("marginals", "opts"))
def _match_core(x, y, gx, gy, given, *, marginals: str, opts: SinkhornOptions):
  x, gx = _prepare(x, gx)
  y, gy = _prepare(y, gy)
  dtype = jnp.promote_types(x.dtype, y.dtype)
  x, y, gx, gy = (a.astype(dtype) for a in (x, y, gx, gy))
  batch = jnp.broadcast_shapes(x.shape[:-2], y.shape[:-2])
  r1, r2 = x.shape[-2], y.shape[-2]
  s = jnp.broadcast_to(jnp.einsum("...rc,...sc->...rs", x, y), batch + (r1, r2))
  if marginals == "given":
    mu = _cross_marginal(jnp.broadcast_to(given[0].astype(dtype), batch + (r1,)))
    nu = _cross_marginal(jnp.broadcast_to(given[1].astype(dtype), batch + (r2,)))
  else:
    mu, nu = _marginal_pair(
        marginals,
        jnp.broadcast_to(jnp.einsum("...rc,...c->...r", x, gy), batch + (r1,)),
        jnp.broadcast_to(jnp.einsum("...sc,...c->...s", y, gx), batch + (r2,)),
    )
  flow, iterations, error = _flat_transport(s, mu, nu, opts)
  matching = Matching(
      similarity=jnp.sum(flow * s, (-2, -1)), flow=flow, part_similarity=s, mu=mu,
      nu=nu, iterations=iterations, error=error,
  )
  return matching, jnp.broadcast_to(jnp.sum(gx * gy, -1), batch)


def _tile_marginals(marginals, x_gy, y_gx, wx, wy):
  """``(mu, nu)`` of a tile of pairs ``[..., r1]``, ``[..., r2]``: from the correlations, or
  from the per-item weights ``wx``/``wy`` (broadcast to the pairs) for ``"given"``."""
  if marginals == "given":
    return (_cross_marginal(jnp.broadcast_to(wx, x_gy.shape)),
            _cross_marginal(jnp.broadcast_to(wy, y_gx.shape)))
  return _marginal_pair(marginals, x_gy, y_gx)


def _pair_tile(xa, ga, wa, yb, gb, wb, *, quantity, marginals, mass, opts: SinkhornOptions):
  """Every pair of ``xa [q, r1, c]``, ``ga [q, c]`` and ``yb [k, r2, c]``, ``gb [k, c]`` ->
  ``[q, k]``; ``wa``/``wb`` hold the items' part weights for ``"given"`` marginals (else
  empty). The tile's part similarities come from one matrix product."""
  s = jnp.einsum("arc,bsc->abrs", xa, yb)
  # <y_j, g_a> as [b, s, a] (the large operand yb on the left, as the product for S
  # has it), so that yb is not transposed in every tile.
  y_ga = jnp.einsum("bsc,ac->bsa", yb, ga).transpose(2, 0, 1)
  mu, nu = _tile_marginals(
      marginals, jnp.einsum("arc,bc->abr", xa, gb), y_ga,
      wa[0][:, None] if wa else None, wb[0][None] if wb else None,
  )
  total = _transported(s, mu, nu, _local_weights(quantity, s), mass, opts)
  return _quantity(quantity, total, ga @ gb.T, mass)


# Weights of "given" marginals travel through the tiles as optional trailing arguments
# (``*w``: none for "cross" and "uniform").
@functools.partial(jax.jit, static_argnames=("quantity", "marginals", "mass", "opts"))
def _pairwise_core(xs, ys, gxs, gys, weights, *, quantity, marginals, mass,
                   opts: SinkhornOptions):
  xs, gxs = _prepare(xs, gxs)
  ys, gys = _prepare(ys, gys)
  n, m = xs.shape[0], ys.shape[0]
  cols = min(m, opts.block_size)
  rows = max(1, _TILE_BLOCKS * opts.block_size // cols)
  wxs, wys = ((weights[0],), (weights[1],)) if weights else ((), ())
  tile = functools.partial(_pair_tile, quantity=quantity, marginals=marginals, mass=mass,
                           opts=opts)

  def row_tile(xa, ga, *wa):  # [q, r1, c], [q, c] -> [q, m]
    return _blocked(lambda yb, gb, *wb: tile(xa, ga, wa, yb, gb, wb).T, (ys, gys, *wys),
                    m, cols).T

  return _blocked(row_tile, (xs, gxs, *wxs), n, rows)


@functools.partial(jax.jit, static_argnames=("quantity", "marginals", "mass", "opts"))
def _symmetric_core(xs, gxs, weights, *, quantity, marginals, mass, opts: SinkhornOptions):
  """All pairs within one set, each unordered pair solved once: ``[n, r, c]`` -> ``[n, n]``.

  The problem of ``(b, a)`` is the transpose of that of ``(a, b)`` (``S^T``, ``mu`` and
  ``nu`` swapped), whose flow is ``T^T``: the same quantity. The set is cut into ``nb``
  blocks of ``q`` items, and block ``I`` is matched with the blocks ``I, I + 1, ...,
  I + nb // 2`` (cyclically): every unordered pair of blocks once (the opposite blocks
  of an even ``nb`` twice, one of them dropped), and the same number of block pairs for
  every block, so the work comes in tiles of one shape: block ``I`` against
  ``_TILE_BLOCKS`` consecutive blocks of its range, solved by :func:`_pair_tile` (one
  matrix product for the tile's part similarities). A block against itself solves its
  ``q (q - 1) / 2`` pairs below the diagonal too (they are dropped), so about
  ``n (n + q) / 2`` problems are solved in all. Each value of a pair fills both
  ``[i, j]`` and ``[j, i]``.
  """
  xs, gxs = _prepare(xs, gxs)
  n = xs.shape[0]
  # q^2 pairs per block pair (at most block_size), and at least four blocks, so that the
  # diagonal blocks' extra pairs stay a small share (q / n) of the whole.
  q = max(1, min(math.isqrt(opts.block_size), -(-n // 4)))
  nb = -(-n // q)
  width = nb // 2 + 1  # blocks I, ..., I + nb // 2
  chunk = max(1, min(width, _TILE_BLOCKS * opts.block_size // (q * q)))
  # Padding items are zero (uniform marginals, S = 0): finite, and dropped below.
  blocks = [jnp.pad(a, [(0, nb * q - n)] + [(0, 0)] * (a.ndim - 1)).reshape(
      (nb, q) + a.shape[1:]) for a in (xs, gxs, *weights)]
  tile = functools.partial(_pair_tile, quantity=quantity, marginals=marginals, mass=mass,
                           opts=opts)
  # Tile t: block bi[t] against blocks (bi[t] + w) % nb for w in offsets[t] (static).
  bi, start = (a.ravel() for a in np.meshgrid(
      np.arange(nb), np.arange(0, width, chunk), indexing="ij"))
  offsets = start[:, None] + np.arange(chunk)  # [tiles, chunk]; w >= width are dropped

  def row_tile(args):  # -> [q, chunk * q]
    i, w = args
    (xa, ga, *wa) = (b[i] for b in blocks)
    (yb, gb, *wb) = (b[(i + w) % nb].reshape((chunk * q,) + b.shape[2:]) for b in blocks)
    return tile(xa, ga, wa, yb, gb, wb)

  values = jax.lax.map(row_tile, (jnp.asarray(bi), jnp.asarray(offsets)))
  # Static: where each value goes, and which values are each unordered pair of real
  # items once.
  t, a, m = np.meshgrid(np.arange(bi.size), np.arange(q), np.arange(chunk * q),
                        indexing="ij")
  w, b = offsets[t, m // q], m % q
  rows, cols = bi[t] * q + a, (bi[t] + w) % nb * q + b
  keep = ((w < width) & (rows < n) & (cols < n) & ((w > 0) | (a <= b))
          & ~((2 * w == nb) & (bi[t] >= w)))
  values = values.reshape(-1)[np.flatnonzero(keep)]
  rows, cols = rows[keep], cols[keep]
  return jnp.zeros((n, n), values.dtype).at[rows, cols].set(values).at[cols, rows].set(values)


@functools.partial(jax.jit, static_argnames=("quantity", "marginals", "mass", "opts"))
def _rerank_core(queries, candidates, gq, gc, indices, weights, *, quantity, marginals, mass,
                 opts):
  queries, gq = _prepare(queries, gq)
  wq, wc = weights if weights else (None, None)
  # Candidates are normalised (and, with indices, gathered from the gallery, with their
  # weights) tile by tile: each tile's features are read once from memory and then stay
  # in cache. ``per_query`` holds what is split into tiles along with the queries.
  if indices is None:
    per_query = {"candidates": candidates, "gc": gc, "wc": wc}
  else:
    per_query = {"indices": indices}
  per_query["wq"] = wq
  per_query = {name: a for name, a in per_query.items() if a is not None}
  k = (candidates if indices is None else indices).shape[1]

  def tile(xq, gxq, t):  # [t, r1, c], [t, c], this tile's per_query -> [t, k]
    if indices is None:  # [t, k, r2, c], [t, k, c] and [t, k, r2] if given
      yc, gyc = _prepare(t["candidates"], t.get("gc"))
      wyc = t.get("wc")
    else:
      idx = t["indices"]
      yc, gyc = _prepare(candidates[idx], None if gc is None else gc[idx])
      wyc = None if wc is None else wc[idx]
    s = jnp.einsum("qrc,qksc->qkrs", xq, yc)
    mu, nu = _tile_marginals(
        marginals,
        jnp.einsum("qrc,qkc->qkr", xq, gyc), jnp.einsum("qksc,qc->qks", yc, gxq),
        t["wq"][:, None] if wq is not None else None, wyc,
    )
    total = _transported(s, mu, nu, _local_weights(quantity, s), mass, opts)
    return _quantity(quantity, total, jnp.einsum("qc,qkc->qk", gxq, gyc), mass)

  return _blocked(tile, (queries, gq, per_query), queries.shape[0],
                  max(1, opts.block_size // k))


# --------------------------------------------------------------------------------------
# Public API.


def match(
    x: jax.Array,
    y: jax.Array,
    gx: jax.Array | None = None,
    gy: jax.Array | None = None,
    *,
    marginals: Marginals = "cross",
    epsilon: float = 0.05,
    threshold: float | None = 1e-3,
    max_iterations: int = 100,
    check_every: int = 10,
    lse_mode: bool = False,
    gradient: Gradient = "constant",
    block_size: int | None = None,
) -> Matching:
  """Structural matching of image pairs: the DIML flow and similarity.

  For each pair, with ``x`` and ``y`` the L2-normalised local features of the two images
  and ``g_x``, ``g_y`` their L2-normalised global vectors (DIML, ICCV 2021, Sec. 3.2-3.3;
  MISSION.md steps 2-5):

  - part similarities ``S_ij = <x_i, y_j>`` and cost ``1 - S``;
  - marginals ``mu_i ∝ relu(<x_i, g_y>)``, ``nu_j ∝ relu(<y_j, g_x>)`` (``"cross"``) or
    ``1 / r`` (``"uniform"``), each summing to 1. If every part of an image is
    anti-correlated with the other image, its cross marginal has no mass and falls back
    to uniform (the published code would divide 0 by 1e-5 and return 0);
  - flow ``T = argmin <T, 1 - S> - epsilon H(T)`` s.t. ``T 1 = mu``, ``T^T 1 = nu``;
  - structural similarity ``sum_ij T_ij S_ij`` with contributions ``T ⊙ S``.

  **Solver.** OTT-JAX's :class:`~ott.solvers.linear.sinkhorn.Sinkhorn` updates in kernel
  mode (as published), under ``vmap`` on blocks of ``block_size`` pairs, in rounds of
  ``check_every`` iterations, the first of them also checked halfway (at the defaults,
  checks after 5, 10, 20, 30, ... iterations). A pair stops once the L1 error of its
  flow's column sums is below ``threshold``, and is then left as it is, so its result
  does not depend on which other pairs share its block (or device); after the first
  check with few pairs left running (or after the first round), those pairs are
  gathered into smaller sub-blocks, each of which stops when all its pairs have. After
  15 plain iterations (two rounds at the default ``check_every``), pairs still running
  are over-relaxed at the rate-adapted weight of Lehmann et al. (see
  ``_sinkhorn_rounds``). ``max_iterations`` caps the iterations (100, as published).
  ``threshold=None`` runs exactly ``max_iterations`` iterations with no checks (a fixed
  cost). A check costs about as much as an iteration on a CPU, hence not one each.

  *Accuracy of the defaults* (float64 reference, 16x16 parts): on unstructured
  features (Gaussian, ReLU-like, shared component) the similarity is within 1e-4 of the
  converged value after 10-30 iterations. When parts are shared or moved between the two
  images (DIML's use case) Sinkhorn at ``epsilon = 0.05`` converges slowly and the
  100-iteration cap leaves errors up to about 3e-3 on clustered parts, 4e-4 on moved or
  half-shared ones (the published code, without over-relaxation, up to 1e-2);
  ``threshold=1e-4, max_iterations=1000`` brings every case we tested within 3e-5. The ``error`` field reports each pair's final error.
  Kernel mode is safe for ``epsilon`` down to about 0.01 with cosine costs (below 0.023
  each kernel row is shifted to a maximum of 1); use ``lse_mode=True`` below that.

  **Gradients.** ``"constant"`` (default, as published): the flow is a constant in the
  backward pass, so gradients flow through ``S`` (and the global term) only.
  ``"implicit"``: OTT's implicit differentiation of the converged flow with respect to
  the cost and the marginals. ``"unroll"``: backpropagation through the iterations.

  Args:
    x: local features of the first images, ``[..., r1, c]``.
    y: local features of the second images, ``[..., r2, c]``; the batch dimensions
      ``...`` of ``x`` and ``y`` broadcast against each other.
    gx: global vectors of the first images, ``[..., c]`` (batch dims as ``x``); by
      default the mean of the normalised local vectors.
    gy: global vectors of the second images, ``[..., c]``; likewise.
    marginals: ``"cross"`` (default), ``"uniform"``, or a pair of arrays
      ``(mu [..., r1], nu [..., r2])`` of non-negative weights (normalised here), e.g. a
      ViT's attention rollout.
    epsilon: entropic regularisation (0.05 as published); a Python number, as it
      is compiled in.
    threshold: L1 marginal error at which Sinkhorn stops, or ``None`` for exactly
      ``max_iterations`` iterations.
    max_iterations: iteration cap.
    check_every: iterations between convergence checks (the first round is also
      checked after ``check_every // 2``).
    lse_mode: log-domain Sinkhorn (slower; for very small ``epsilon``).
    gradient: ``"constant"``, ``"implicit"`` or ``"unroll"`` (see above).
    block_size: pairs solved together (their first round; the pairs still running
      then go on in sub-blocks of ``block_size / 8``); default 256 on CPU, 16384 on
      accelerators.

  Returns:
    A :class:`Matching` with ``similarity [...]``, ``flow [..., r1, r2]``,
    ``part_similarity [..., r1, r2]``, ``mu [..., r1]``, ``nu [..., r2]``,
    ``iterations [...]`` and ``error [...]``; all float32 (bf16/f16 inputs are matched
    in float32), or float64 for float64 inputs.

  Raises:
    ValueError: shapes that do not fit, or an invalid option.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from diml_jax import matching
    >>> ka, kb = jax.random.split(jax.random.key(0))
    >>> a = jax.random.normal(ka, (16, 128))    # a 4x4 grid of 128-d parts
    >>> b = jax.random.normal(kb, (2, 9, 128))  # two images with 3x3 grids
    >>> m = matching.match(a, b)                 # a broadcasts against both
    >>> m.similarity.shape, m.flow.shape
    ((2,), (2, 16, 9))
    >>> bool(jnp.allclose(m.contributions.sum((-2, -1)), m.similarity, atol=1e-6))
    True

  References:
    Zhao, Rao, Wang, Lu, Zhou. Towards Interpretable Deep Metric Learning with
    Structural Matching. ICCV 2021, Sec. 3.2-3.3.
  """
  opts = _options(
      epsilon=epsilon, threshold=threshold, max_iterations=max_iterations,
      check_every=check_every, lse_mode=lse_mode, gradient=gradient,
      block_size=block_size,
  )
  return _checked_match(x, y, gx, gy, marginals, opts)[0]


def _checked_match(x, y, gx, gy, marginals, opts: SinkhornOptions):
  kind = _check_kind(marginals)
  x, y = _check_locals("x", x), _check_locals("y", y)
  if x.shape[-1] != y.shape[-1]:
    raise ValueError(
        f"x and y must have the same feature size c; got x {x.shape} (c={x.shape[-1]}) "
        f"and y {y.shape} (c={y.shape[-1]})."
    )
  try:
    batch = jnp.broadcast_shapes(x.shape[:-2], y.shape[:-2])
  except ValueError:
    raise ValueError(
        f"the batch dimensions of x {x.shape[:-2]} and y {y.shape[:-2]} do not "
        f"broadcast (x is [..., r1, c], y is [..., r2, c])."
    ) from None
  gx = _check_globals("gx", gx, x.shape[:-2] + x.shape[-1:])
  gy = _check_globals("gy", gy, y.shape[:-2] + y.shape[-1:])
  given = None
  if kind == "given":
    given = []
    for name, m, r in (("mu", marginals[0], x.shape[-2]), ("nu", marginals[1], y.shape[-2])):
      m = jnp.asarray(m)
      try:
        jnp.broadcast_shapes(m.shape, batch + (r,))
      except ValueError:
        raise ValueError(
            f"marginal {name} must broadcast to {batch + (r,)}; got {m.shape}."
        ) from None
      given.append(_float32(m))
    given = tuple(given)
  return _match_core(x, y, gx, gy, given, marginals=kind, opts=opts)


def transport(
    similarity: jax.Array, mu: jax.Array, nu: jax.Array, **options
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The entropic flow for given part similarities and marginals: DIML's solver, bare.

  For variants that build their own problem (augmented with dummy parts for partial
  transport, or with marginals from attention), solved exactly as :func:`match` solves
  its own: cost ``1 - similarity``, OTT-JAX's Sinkhorn with the options of :func:`match`.

  Args:
    similarity: part similarities ``S`` ``[..., r1, r2]`` (cost ``1 - S``).
    mu: non-negative weights ``[..., r1]``, normalised to sum 1 (uniform if all zero).
    nu: non-negative weights ``[..., r2]``, likewise.
    **options: Sinkhorn options of :func:`match` (``epsilon``, ``threshold``, ...).

  Returns:
    ``(flow [..., r1, r2], iterations [...], error [...])``.
  """
  opts = _options(**options)
  similarity = jnp.asarray(similarity)
  if similarity.ndim < 2 or not jnp.issubdtype(similarity.dtype, jnp.floating):
    raise ValueError(
        f"similarity must be a floating-point array [..., r1, r2]; got shape "
        f"{similarity.shape} and dtype {similarity.dtype}."
    )
  batch, (r1, r2) = similarity.shape[:-2], similarity.shape[-2:]
  for name, m, r in (("mu", mu, r1), ("nu", nu, r2)):
    if jnp.shape(m) != batch + (r,):
      raise ValueError(f"{name} must have shape {batch + (r,)}; got {jnp.shape(m)}.")
  return _transport_core(similarity, jnp.asarray(mu), jnp.asarray(nu), opts=opts)


@functools.partial(jax.jit, static_argnames=("opts",))
def _transport_core(s, mu, nu, *, opts: SinkhornOptions):
  s = _float32(s)
  return _flat_transport(
      s, _cross_marginal(mu.astype(s.dtype)), _cross_marginal(nu.astype(s.dtype)), opts
  )


def structural_similarity(x, y, gx=None, gy=None, *, marginals="cross", **options):
  """``sum_ij T_ij S_ij`` for pairs ``x [..., r1, c]``, ``y [..., r2, c]`` -> ``[...]``.

  Same arguments as :func:`match`, of which this is the ``similarity`` field.
  """
  return _checked_match(x, y, gx, gy, marginals, _options(**options))[0].similarity


def diml_similarity(x, y, gx=None, gy=None, *, marginals="cross", **options):
  """DIML's training similarity ``(sum T ⊙ S + <g_x, g_y>) / 2``, ``[...]``.

  The mean of the structural and the global cosine similarity, as the multi-similarity
  loss with DIML uses it (MISSION.md step 5). Arguments as :func:`match`.
  """
  m, global_sim = _checked_match(x, y, gx, gy, marginals, _options(**options))
  return _quantity("similarity", m.similarity, global_sim)


def diml_distance(x, y, gx=None, gy=None, *, marginals="cross", **options):
  """DIML's training distance ``(sum T ⊙ D + ||g_x - g_y||) / 2``, ``[...]``.

  ``D_ij = ||x_i - y_j||`` between the normalised local vectors; the flow is the one of
  :func:`match` (cost ``1 - S``). The margin loss with DIML uses it (MISSION.md step 5).
  Arguments as :func:`match`.
  """
  m, global_sim = _checked_match(x, y, gx, gy, marginals, _options(**options))
  return _quantity("distance", _inner(m.flow, _distance(m.part_similarity)), global_sim)


def pairwise(
    xs: jax.Array,
    ys: jax.Array | None = None,
    gxs: jax.Array | None = None,
    gys: jax.Array | None = None,
    *,
    quantity: Quantity = "structural",
    marginals: Marginals = "cross",
    mass: float = 1.0,
    **options,
) -> jax.Array:
  """One DIML quantity for every pair of two sets: ``xs [n, r1, c]``, ``ys [m, r2, c]`` -> ``[n, m]``.

  Works in tiles of about ``block_size`` pairs, so memory stays bounded for any ``n`` and
  ``m``; each tile's part similarities come from one matrix product.

  **All pairs within one set** (``ys=None``, ``gys=None``): ``[n, n]``, with each
  unordered pair solved once, ``n (n + 1) / 2`` problems instead of ``n²``. The quantities
  are symmetric: the problem of ``(b, a)`` is that of ``(a, b)`` transposed (``S^T``,
  marginals swapped), whose flow is ``T^T``. The result is exactly symmetric and equals
  ``pairwise(xs, xs)`` within the Sinkhorn tolerance (each ordered pair there is solved
  on its own, so ``[a, b]`` and ``[b, a]`` differ by up to about the ``threshold``).
  Differentiable like the two-set form (the gradient of ``[a, b]`` and ``[b, a]`` flows
  through the one solved pair).

  Args:
    xs: local features of the first set, ``[n, r1, c]``.
    ys: local features of the second set, ``[m, r2, c]``, or ``None`` for all pairs
      within ``xs`` (see above).
    gxs: global vectors ``[n, c]`` (default: mean of the local vectors).
    gys: global vectors ``[m, c]`` (default: mean of the local vectors); ``None`` when
      ``ys`` is.
    quantity: ``"structural"`` (``sum T ⊙ S``), ``"similarity"`` (its mean with the
      global cosine) or ``"distance"`` (see :func:`diml_distance`).
    marginals: ``"cross"``, ``"uniform"``, or each item's part weights
      ``(mu [n, r1], nu [m, r2])`` (non-negative, normalised here), e.g. a ViT's
      truncated attention rollout pooled to the grid: pair ``(a, b)`` is matched with
      marginals ``mu[a]`` and ``nu[b]``. With ``ys=None``, one array ``[n, r1]`` of
      part weights (each item has one set of weights, as either image of a pair).
    mass: ``p`` in ``(0, 1]``: the partial flow of :func:`diml_jax.partial.partial_match`
      moves only ``p`` of the weight, and the structural terms are divided by ``p``
      (``partial_match(...).similarity / p``: the mean over the matched parts). 1 is
      ordinary matching.
    **options: Sinkhorn options of :func:`match`.

  Returns:
    ``[n, m]`` float32.
  """
  opts = _options(**options)
  if ys is None:
    return _symmetric_pairwise(xs, gxs, gys, quantity, marginals, mass, opts)
  xs, ys = _check_locals("xs", xs, "[n, r1, c]"), _check_locals("ys", ys, "[m, r2, c]")
  if xs.shape[-1] != ys.shape[-1]:
    raise ValueError(
        f"pairwise needs xs [n, r1, c] and ys [m, r2, c] with the same c; got xs "
        f"{xs.shape} and ys {ys.shape}."
    )
  weights = _check_weights(marginals, (xs.shape[:2], ys.shape[:2]), ("[n, r1]", "[m, r2]"))
  return _pairwise_core(
      xs, ys,
      _check_globals("gxs", gxs, xs.shape[:1] + xs.shape[-1:]),
      _check_globals("gys", gys, ys.shape[:1] + ys.shape[-1:]), weights,
      quantity=_check_quantity(quantity), marginals=_check_kind(marginals),
      mass=_check_mass(mass), opts=opts,
  )


def _symmetric_pairwise(xs, gxs, gys, quantity, marginals, mass, opts) -> jax.Array:
  """:func:`pairwise` with ``ys=None``: arguments checked, then :func:`_symmetric_core`."""
  xs = _check_locals("xs", xs, "[n, r1, c]")
  if gys is not None:
    raise ValueError("pairwise with ys=None (all pairs within xs) takes its global vectors "
                     "as gxs; got gys as well.")
  if isinstance(marginals, str):
    kind, weights = _check_kind(marginals), ()
  else:
    w = jnp.asarray(marginals) if not isinstance(marginals, tuple) else None
    if w is None or w.shape != xs.shape[:2] or not jnp.issubdtype(w.dtype, jnp.floating):
      raise ValueError(
          f"pairwise with ys=None (all pairs within xs) takes marginals 'cross', 'uniform' "
          f"or one array of floating-point part weights [n, r1] = {xs.shape[:2]}; got "
          f"{marginals if w is None else f'{w.dtype}{list(w.shape)}'}.")
    kind, weights = "given", (_float32(w),)
  return _symmetric_core(
      xs, _check_globals("gxs", gxs, xs.shape[:1] + xs.shape[-1:]), weights,
      quantity=_check_quantity(quantity), marginals=kind, mass=_check_mass(mass), opts=opts,
  )


def rerank(
    queries: jax.Array,
    candidates: jax.Array,
    gq: jax.Array | None = None,
    gc: jax.Array | None = None,
    *,
    indices: jax.Array | None = None,
    quantity: Quantity = "structural",
    marginals: Marginals = "cross",
    mass: float = 1.0,
    **options,
) -> jax.Array:
  """One DIML quantity between each query and its own candidates -> ``[q, k]``.

  The re-ranking step of multi-scale retrieval (MISSION.md step 6): after ranking a
  gallery by global cosine, each query's top ``k`` are matched structurally. Ranking by
  ``quantity="similarity"`` (``(structural + global) / 2``) orders exactly as
  ``structural + global``.

  The candidates are given either as features ``[q, k, r2, c]``, or as a gallery
  ``[n, r2, c]`` with ``indices [q, k]`` into it: then each tile of queries gathers its
  own candidates, and no ``[q, k, r2, c]`` array is formed (faster on a CPU, where the
  features of ``q * k`` candidates do not fit in cache).

  Args:
    queries: local features ``[q, r1, c]``.
    candidates: local features of each query's candidates ``[q, k, r2, c]``, or of a
      gallery ``[n, r2, c]`` when ``indices`` is given.
    gq: global vectors ``[q, c]`` (default: mean of the local vectors).
    gc: global vectors ``[q, k, c]``, or ``[n, c]`` with ``indices`` (default: mean of
      the local vectors).
    indices: gallery indices of each query's candidates ``[q, k]`` int, or ``None``.
    quantity: as in :func:`pairwise`.
    marginals: ``"cross"``, ``"uniform"``, or part weights ``(mu [q, r1], nu [q, k, r2])``
      of the queries and of their candidates (with ``indices``: ``nu [n, r2]``, the
      gallery's); see :func:`pairwise`.
    mass: ``p``, the partial mass (see :func:`pairwise`).
    **options: Sinkhorn options of :func:`match`.

  Returns:
    ``[q, k]`` float32.
  """
  opts = _options(**options)
  queries = _check_locals("queries", queries, "[q, r1, c]")
  if indices is None:
    candidates = _check_locals("candidates", candidates, "[q, k, r2, c]")
    if candidates.shape[0] != queries.shape[0] or candidates.shape[-1] != queries.shape[-1]:
      raise ValueError(
          f"rerank needs queries [q, r1, c] and candidates [q, k, r2, c] with the same q "
          f"and c; got queries {queries.shape} and candidates {candidates.shape}."
      )
    gc_shape = candidates.shape[:2] + candidates.shape[-1:]
    weight_layouts = (candidates.shape[:3], "[q, k, r2]")
  else:
    candidates = _check_locals("candidates", candidates, "[n, r2, c]")
    indices = jnp.asarray(indices)
    if (indices.ndim != 2 or indices.shape[0] != queries.shape[0]
        or not jnp.issubdtype(indices.dtype, jnp.integer)
        or candidates.shape[-1] != queries.shape[-1]):
      raise ValueError(
          f"rerank with indices needs queries [q, r1, c], a gallery [n, r2, c] with the "
          f"same c and int indices [q, k]; got queries {queries.shape}, candidates "
          f"{candidates.shape} and indices {indices.dtype} {indices.shape}."
      )
    gc_shape = candidates.shape[:1] + candidates.shape[-1:]
    weight_layouts = (candidates.shape[:2], "[n, r2]")
  weights = _check_weights(marginals, (queries.shape[:2], weight_layouts[0]),
                           ("[q, r1]", weight_layouts[1]))
  return _rerank_core(
      queries, candidates,
      _check_globals("gq", gq, queries.shape[:1] + queries.shape[-1:]),
      _check_globals("gc", gc, gc_shape), indices, weights,
      quantity=_check_quantity(quantity), marginals=_check_kind(marginals),
      mass=_check_mass(mass), opts=opts,
  )
