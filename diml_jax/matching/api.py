"""The public functions of :mod:`diml_jax.matching`: they check their arguments once, then
call a jitted core.

- :func:`match`: everything about a batch of pairs (flow, part similarities, marginals),
  ordinary (``mass=1``) or partial (``mass=p < 1``).
- :func:`structural_similarity`, :func:`diml_similarity`, :func:`diml_distance`: one number
  per pair.
- :func:`pairwise`: all pairs between two sets, or within one set; :func:`rerank`: each
  query against its own candidates.
- :func:`transport`: the solver alone, for given similarities and marginals.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from diml_jax.matching import partial, tiles
from diml_jax.matching.checks import (as_float32, check_globals, check_locals, check_mass,
                                      check_options, check_quantity, check_weights,
                                      marginal_kind)
from diml_jax.matching.problem import (combine, inner, local_weights, marginal_pair, prepare,
                                       probabilities)
from diml_jax.matching.types import (MARGINAL_KINDS, Marginals, Matching, Quantity,
                                     SinkhornOptions)

__all__ = [
    "diml_distance",
    "diml_similarity",
    "match",
    "pairwise",
    "rerank",
    "structural_similarity",
    "transport",
]


def match(
    x: jax.Array,
    y: jax.Array,
    gx: jax.Array | None = None,
    gy: jax.Array | None = None,
    *,
    marginals: Marginals = "cross",
    mass: float = 1.0,
    options: SinkhornOptions | None = None,
) -> Matching:
  """Structural matching of image pairs: the DIML flow and similarity.

  For each pair, with ``x`` and ``y`` the L2-normalised local features of the two images
  and ``g_x``, ``g_y`` their L2-normalised global vectors (DIML, ICCV 2021, Sec. 3.2-3.3):

  - part similarities ``S_ij = <x_i, y_j>`` and cost ``1 - S``;
  - marginals ``mu_i ∝ relu(<x_i, g_y>)``, ``nu_j ∝ relu(<y_j, g_x>)`` (``"cross"``),
    the published training criteria's ``mu_i ∝ relu(<y_i, g_x>)``,
    ``nu_j ∝ relu(<x_j, g_y>)`` (``"cross_swapped"``, ``r1 == r2``; see
    :func:`~diml_jax.matching.problem.marginal_pair`), ``1 / r`` (``"uniform"``) or
    given part weights, each summing to 1. A marginal
    without mass (every part anti-correlated with the other image) falls back to uniform
    (the published code would divide 0 by 1e-5 and return 0);
  - flow ``T = argmin <T, 1 - S> - epsilon H(T)`` s.t. ``T 1 = mu``, ``T^T 1 = nu``; with
    ``mass = p < 1`` the partial flow of total ``p`` (TPAMI 2023; the dummy-point
    construction of :mod:`diml_jax.matching.partial`);
  - structural similarity ``sum_ij T_ij S_ij / p``, with contributions ``T ⊙ S / p``.

  **Solver.** OTT-JAX's :class:`~ott.solvers.linear.sinkhorn.Sinkhorn` updates in kernel
  mode (as published), under ``vmap`` on blocks of pairs, in rounds of ``check_every``
  iterations with over-relaxation of slow pairs (:func:`diml_jax.matching.sinkhorn.rounds`).
  A pair stops once the L1 error of its flow's column sums is below ``threshold`` and is
  then left as it is, so its result does not depend on which other pairs share its block
  (or device). ``max_iterations`` caps the iterations (100, as published); the ``error``
  field reports each pair's final error. Kernel mode is safe for ``epsilon`` down to about
  0.01 with cosine costs; use ``lse_mode=True`` below that.

  **Gradients** (``options.gradient``). ``"constant"`` (default, as published): the flow
  is a constant in the backward pass, so gradients flow through ``S`` (and the global
  term) only. ``"implicit"``: OTT's implicit differentiation of the converged flow.
  ``"unroll"``: backpropagation through the iterations.

  Args:
    x: local features of the first images, ``[..., r1, c]``.
    y: local features of the second images, ``[..., r2, c]``; the batch dimensions
      ``...`` of ``x`` and ``y`` broadcast against each other.
    gx: global vectors of the first images, ``[..., c]`` (batch dims as ``x``); by
      default the mean of the raw local features (as the published code).
    gy: global vectors of the second images, ``[..., c]``; likewise.
    marginals: ``"cross"`` (default), ``"cross_swapped"``, ``"uniform"``, or a pair of
      arrays ``(mu [..., r1], nu [..., r2])`` of non-negative part weights (normalised here),
      e.g. a ViT's attention rollout.
    mass: ``p`` in ``(0, 1]``, the fraction of each image's part weight matched; 1 is
      ordinary matching.
    options: the solver's :class:`SinkhornOptions` (``None``: the published defaults).

  Returns:
    A :class:`Matching` with ``similarity [...]``, ``flow [..., r1, r2]``,
    ``part_similarity [..., r1, r2]``, ``mu [..., r1]``, ``nu [..., r2]``, ``mass [...]``,
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
    Zhao, Rao, Wang, Lu, Zhou. DIML: Deep Interpretable Metric Learning via Structural
    Matching. TPAMI 2023 (partial similarity for ViTs).
  """
  return _checked_match(x, y, gx, gy, marginals, mass, options)[0]


def _checked_match(x, y, gx, gy, marginals, mass, options):
  """:func:`match`'s checks, then its core: ``(Matching, global cosine [...])``."""
  kind = marginal_kind(marginals)
  mass = check_mass(mass)
  opts = check_options(options)
  x, y = check_locals("x", x), check_locals("y", y)
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
  gx = check_globals("gx", gx, x.shape[:-2] + x.shape[-1:])
  gy = check_globals("gy", gy, y.shape[:-2] + y.shape[-1:])
  weights = ()
  if kind == "weights":
    weights = []
    for name, m, r in (("mu", marginals[0], x.shape[-2]), ("nu", marginals[1], y.shape[-2])):
      m = jnp.asarray(m)
      try:
        jnp.broadcast_shapes(m.shape, batch + (r,))
      except ValueError:
        raise ValueError(
            f"marginal {name} must broadcast to {batch + (r,)}; got {m.shape}."
        ) from None
      weights.append(as_float32(m))
    weights = tuple(weights)
  return _match_core(x, y, gx, gy, weights, jnp.asarray(mass), marginals=kind,
                     full=mass == 1.0, opts=opts)


# The mass is an argument, not a constant: an ablation over p compiles once.
@functools.partial(jax.jit, static_argnames=("marginals", "full", "opts"))
def _match_core(x, y, gx, gy, weights, mass, *, marginals: str, full: bool,
                opts: SinkhornOptions):
  x, gx = prepare(x, gx)
  y, gy = prepare(y, gy)
  dtype = jnp.promote_types(x.dtype, y.dtype)
  x, y, gx, gy = (a.astype(dtype) for a in (x, y, gx, gy))
  batch = jnp.broadcast_shapes(x.shape[:-2], y.shape[:-2])
  r1, r2 = x.shape[-2], y.shape[-2]
  s = jnp.broadcast_to(jnp.einsum("...rc,...sc->...rs", x, y), batch + (r1, r2))
  mu, nu = marginal_pair(
      marginals,
      jnp.broadcast_to(jnp.einsum("...rc,...c->...r", x, gy), batch + (r1,)),
      jnp.broadcast_to(jnp.einsum("...sc,...c->...s", y, gx), batch + (r2,)),
      *weights)
  mass = mass.astype(dtype)
  flow, iterations, error = partial.flow(s, mu, nu, mass, opts, full=full)
  matching = Matching(
      similarity=inner(flow, s) / mass, flow=flow, part_similarity=s, mu=mu, nu=nu,
      mass=jnp.broadcast_to(mass, batch), iterations=iterations, error=error,
  )
  return matching, jnp.broadcast_to(jnp.sum(gx * gy, -1), batch)


def transport(
    similarity: jax.Array, mu: jax.Array, nu: jax.Array, *, mass: float = 1.0,
    options: SinkhornOptions | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The entropic (or, with ``mass < 1``, partial) flow for given similarities and weights.

  For variants that build their own problem, solved exactly as :func:`match` solves its
  own: cost ``1 - similarity``, the same solver and options.

  Args:
    similarity: part similarities ``S`` ``[..., r1, r2]`` (cost ``1 - S``).
    mu: non-negative weights ``[..., r1]``, normalised to sum 1 (uniform if all zero).
    nu: non-negative weights ``[..., r2]``, likewise.
    mass: ``p`` in ``(0, 1]``, the fraction of the weight transported.
    options: the solver's :class:`SinkhornOptions`.

  Returns:
    ``(flow [..., r1, r2], iterations [...], error [...])``: the flow (total ``p``), the
    solver's iterations and final marginal error.

  Raises:
    ValueError: an invalid ``mass``, shapes that do not fit, or an invalid option.
  """
  mass = check_mass(mass)
  opts = check_options(options)
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
  return _transport_core(similarity, jnp.asarray(mu), jnp.asarray(nu), jnp.asarray(mass),
                         full=mass == 1.0, opts=opts)


@functools.partial(jax.jit, static_argnames=("full", "opts"))
def _transport_core(s, mu, nu, mass, *, full: bool, opts: SinkhornOptions):
  s = as_float32(s)
  return partial.flow(s, probabilities(mu.astype(s.dtype)), probabilities(nu.astype(s.dtype)),
                      mass.astype(s.dtype), opts, full=full)


def structural_similarity(x, y, gx=None, gy=None, *, marginals: Marginals = "cross",
                          mass: float = 1.0, options: SinkhornOptions | None = None):
  """``sum_ij T_ij S_ij / p`` for pairs ``x [..., r1, c]``, ``y [..., r2, c]`` -> ``[...]``.

  Same arguments as :func:`match`, of which this is the ``similarity`` field.
  """
  return _checked_match(x, y, gx, gy, marginals, mass, options)[0].similarity


def diml_similarity(x, y, gx=None, gy=None, *, marginals: Marginals = "cross",
                    mass: float = 1.0, options: SinkhornOptions | None = None):
  """DIML's training similarity ``(sum T ⊙ S / p + <g_x, g_y>) / 2``, ``[...]``.

  The mean of the structural and the global cosine similarity, as the multi-similarity
  loss with DIML uses it (the published ``criteria/multisimilarity_diml.py``). Arguments
  as :func:`match`.
  """
  m, global_sim = _checked_match(x, y, gx, gy, marginals, mass, options)
  return combine("similarity", inner(m.flow, m.part_similarity), global_sim, m.mass)


def diml_distance(x, y, gx=None, gy=None, *, marginals: Marginals = "cross",
                  mass: float = 1.0, options: SinkhornOptions | None = None):
  """DIML's training distance ``(sum T ⊙ D / p + ||g_x - g_y||) / 2``, ``[...]``.

  ``D_ij = ||x_i - y_j||`` between the normalised local vectors; the flow is the one of
  :func:`match` (cost ``1 - S``). The margin loss with DIML uses it (the published
  ``criteria/margin_diml.py``). Arguments as :func:`match`.
  """
  m, global_sim = _checked_match(x, y, gx, gy, marginals, mass, options)
  return combine("distance", inner(m.flow, local_weights("distance", m.part_similarity)),
                 global_sim, m.mass)


def pairwise(
    xs: jax.Array,
    ys: jax.Array | None = None,
    gxs: jax.Array | None = None,
    gys: jax.Array | None = None,
    *,
    quantity: Quantity = "structural",
    marginals: Marginals = "cross",
    mass: float = 1.0,
    options: SinkhornOptions | None = None,
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
    gxs: global vectors ``[n, c]`` (default: mean of the raw local features).
    gys: global vectors ``[m, c]`` (likewise); ``None`` when ``ys`` is.
    quantity: ``"structural"`` (``sum T ⊙ S / p``), ``"similarity"`` (its mean with the
      global cosine) or ``"distance"`` (see :func:`diml_distance`).
    marginals: ``"cross"``, ``"cross_swapped"``, ``"uniform"``, or each item's part weights
      ``(mu [n, r1], nu [m, r2])`` (non-negative, normalised here), e.g. a ViT's
      truncated attention rollout pooled to the grid: pair ``(a, b)`` is matched with
      marginals ``mu[a]`` and ``nu[b]``. With ``ys=None``, one array ``[n, r1]`` of
      part weights (each item has one set of weights, as either image of a pair).
    mass: ``p`` in ``(0, 1]``, partial matching (see :func:`match`); the structural terms
      are on the scale of :class:`Matching` (divided by ``p``).
    options: the solver's :class:`SinkhornOptions`.

  Returns:
    ``[n, m]`` float32.
  """
  opts = check_options(options)
  if ys is None:
    return _symmetric_pairwise(xs, gxs, gys, quantity, marginals, mass, opts)
  xs, ys = check_locals("xs", xs, "[n, r1, c]"), check_locals("ys", ys, "[m, r2, c]")
  if xs.shape[-1] != ys.shape[-1]:
    raise ValueError(
        f"pairwise needs xs [n, r1, c] and ys [m, r2, c] with the same c; got xs "
        f"{xs.shape} and ys {ys.shape}."
    )
  weights = check_weights(marginals, (xs.shape[:2], ys.shape[:2]), ("[n, r1]", "[m, r2]"))
  return tiles.pairwise_core(
      xs, ys,
      check_globals("gxs", gxs, xs.shape[:1] + xs.shape[-1:]),
      check_globals("gys", gys, ys.shape[:1] + ys.shape[-1:]), weights,
      quantity=check_quantity(quantity), marginals=marginal_kind(marginals),
      mass=check_mass(mass), opts=opts,
  )


def _symmetric_pairwise(xs, gxs, gys, quantity, marginals, mass, opts) -> jax.Array:
  """:func:`pairwise` with ``ys=None``: arguments checked, then the symmetric core."""
  xs = check_locals("xs", xs, "[n, r1, c]")
  if gys is not None:
    raise ValueError("pairwise with ys=None (all pairs within xs) takes its global vectors "
                     "as gxs; got gys as well.")
  if isinstance(marginals, str):
    kind, weights = marginal_kind(marginals), ()
  else:
    w = jnp.asarray(marginals) if not isinstance(marginals, tuple) else None
    if w is None or w.shape != xs.shape[:2] or not jnp.issubdtype(w.dtype, jnp.floating):
      raise ValueError(
          f"pairwise with ys=None (all pairs within xs) takes marginals of {MARGINAL_KINDS} "
          f"or one array of floating-point part weights [n, r1] = {xs.shape[:2]}; got "
          f"{marginals if w is None else f'{w.dtype}{list(w.shape)}'}.")
    kind, weights = "weights", (as_float32(w),)
  return tiles.symmetric_core(
      xs, check_globals("gxs", gxs, xs.shape[:1] + xs.shape[-1:]), weights,
      quantity=check_quantity(quantity), marginals=kind, mass=check_mass(mass), opts=opts,
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
    options: SinkhornOptions | None = None,
) -> jax.Array:
  """One DIML quantity between each query and its own candidates -> ``[q, k]``.

  The re-ranking step of multi-scale retrieval (DIML, ICCV 2021, Sec. 3.4): after ranking
  a gallery by global cosine, each query's top ``k`` are matched structurally. Ranking by
  ``quantity="similarity"`` (``(structural + global) / 2``) orders exactly as
  ``structural + global``.

  The candidates are given either as features ``[q, k, r2, c]``, or as a gallery
  ``[n, r2, c]`` with ``indices [q, k]`` into it: then each tile of queries gathers its
  own candidates, and no ``[q, k, r2, c]`` array is formed.

  Args:
    queries: local features ``[q, r1, c]``.
    candidates: local features of each query's candidates ``[q, k, r2, c]``, or of a
      gallery ``[n, r2, c]`` when ``indices`` is given.
    gq: global vectors ``[q, c]`` (default: mean of the raw local features).
    gc: global vectors ``[q, k, c]``, or ``[n, c]`` with ``indices`` (likewise).
    indices: gallery indices of each query's candidates ``[q, k]`` int, or ``None``.
    quantity: as in :func:`pairwise`.
    marginals: a string kind as in :func:`pairwise`, or part weights
      ``(mu [q, r1], nu [q, k, r2])``
      of the queries and of their candidates (with ``indices``: ``nu [n, r2]``, the
      gallery's); see :func:`pairwise`.
    mass: ``p``, the partial mass (see :func:`pairwise`).
    options: the solver's :class:`SinkhornOptions`.

  Returns:
    ``[q, k]`` float32.
  """
  opts = check_options(options)
  queries = check_locals("queries", queries, "[q, r1, c]")
  if indices is None:
    candidates = check_locals("candidates", candidates, "[q, k, r2, c]")
    if candidates.shape[0] != queries.shape[0] or candidates.shape[-1] != queries.shape[-1]:
      raise ValueError(
          f"rerank needs queries [q, r1, c] and candidates [q, k, r2, c] with the same q "
          f"and c; got queries {queries.shape} and candidates {candidates.shape}."
      )
    gc_shape = candidates.shape[:2] + candidates.shape[-1:]
    weight_layouts = (candidates.shape[:3], "[q, k, r2]")
  else:
    candidates = check_locals("candidates", candidates, "[n, r2, c]")
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
  weights = check_weights(marginals, (queries.shape[:2], weight_layouts[0]),
                          ("[q, r1]", weight_layouts[1]))
  return tiles.rerank_core(
      queries, candidates,
      check_globals("gq", gq, queries.shape[:1] + queries.shape[-1:]),
      check_globals("gc", gc, gc_shape), indices, weights,
      quantity=check_quantity(quantity), marginals=marginal_kind(marginals),
      mass=check_mass(mass), opts=opts,
  )
