"""Partial similarity: structural matching in which only a fraction of the parts must match.

DIML's journal version (Zhao et al., TPAMI 2023, the extension to ViTs) compares two images
by a *partial* transport flow: only a fraction ``p`` (``mass``) of each image's part weight
is transported, so parts of one image that have no counterpart in the other (background,
an occluded or cropped-out part) need not be matched to anything. Without regularisation:

.. math::

  T = \\arg\\min_{T \\ge 0,\\; T \\mathbf{1} \\le \\mu,\\; T^\\top \\mathbf{1} \\le \\nu,\\;
      \\mathbf{1}^\\top T \\mathbf{1} = p} \\langle T, 1 - S \\rangle,
  \\qquad s_p(a, b) = \\sum_{ij} T_{ij} S_{ij}.

The flow here is the entropic one of the augmented problem below (its entropy also covers
the mass each part leaves unmatched); as ``epsilon -> 0`` it tends to the flow above (tested
against a linear program).

**Dummy-point construction** (Chapel, Alaya, Gasso, NeurIPS 2020): each side gets
one extra part holding mass ``1 - p``, and a balanced problem is solved on the augmented
``(r1 + 1) x (r2 + 1)`` similarities with :func:`diml_jax.matching.transport` (the solver of
:func:`~diml_jax.matching.match`, cost ``1 - S``):

- real part <-> dummy: one constant similarity, :data:`DUMMY_SIMILARITY` ``= 0``. The
  dummy column then receives mass ``1 - p`` at the same cost from any real part, so it is a
  sink that does not prefer any of them; which parts go there is decided by the real
  similarities alone. Any constant gives the same flow (it rescales the dummy row and
  column, which the Sinkhorn scalings absorb); 0 -- cost 1, the middle of the cosine cost
  range [0, 2] -- keeps the dummy's kernel entries within ``exp(+-1 / epsilon)`` of the real
  ones.
- dummy <-> dummy: similarity ``-inf`` (cost ``+inf``, kernel entry exactly 0). Dummy mass
  could otherwise flow to the other dummy and let every real part match in full; forbidding
  it forces the dummy column's ``1 - p`` to come from real parts (and the dummy row's to go
  to real parts), so exactly ``p`` moves between real parts. Chapel et al. need a finite
  cost ``A > 2 xi + max C`` for unregularised transport; with entropic regularisation any
  finite cost still leaks ``~exp(-A / epsilon)`` mass, an infinite one none.

``p = 1`` gives the dummies no mass, so the problem is :func:`~diml_jax.matching.match`'s;
it is then solved without them (parts without mass make the solver's ``"implicit"`` and
``"unroll"`` gradients NaN).

The published DIML code has no transformer part; public research code derived from it
(``utilities/diml.py``, ``Sinkhorn_partial`` with ``ot_part = p``) uses the same construction:
constant dummy kernel entries and a zero dummy-dummy kernel entry.

**Normalisation.** :attr:`PartialMatching.similarity` is ``sum_ij T_ij S_ij`` over the real
parts, unnormalised, as that code computes it (``sum(T[:R, :R] * S)``): it lies in
``[-p, p]``, so with small ``p`` it weighs little next to a global cosine in multi-scale
re-ranking (``structural + global``).
:attr:`PartialMatching.mean_similarity` divides by the transported mass: the average
similarity of the matched parts, in ``[-1, 1]`` like a cosine.
"""
from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from diml_jax import matching

__all__ = ["DUMMY_SIMILARITY", "PartialMatching", "partial_match", "partial_transport"]

# Similarity of a real part to the other image's dummy part (see the module docstring).
DUMMY_SIMILARITY = 0.0
# Below this total weight a marginal is taken as empty and replaced by the uniform one,
# as matching.match does.
_EMPTY_MASS = 1e-6


class PartialMatching(NamedTuple):
  """Result of :func:`partial_match` for a batch of image pairs ``[...]``.

  Attributes:
    similarity: partial similarity ``sum_ij T_ij S_ij`` over the real parts, ``[...]``;
      the flow carries mass ``p``, so it lies in ``[-p, p]``.
    flow: the partial flow ``T`` between the real parts, ``[..., r1, r2]``; row sums at most
      ``mu``, column sums at most ``nu``, total ``p``.
    part_similarity: cosine similarities ``S`` of the parts, ``[..., r1, r2]``.
    mu: normalised part weights of the first image, ``[..., r1]`` (sum 1).
    nu: normalised part weights of the second image, ``[..., r2]`` (sum 1).
    mass: mass the flow carries, ``sum T``, ``[...]``; ``p`` up to the solver's error.
    iterations: Sinkhorn iterations, ``[...]``.
    error: L1 deviation of the augmented flow's marginals after the last check, ``[...]``,
      in the units of ``mu`` (of the augmented problem's total ``2 - p``).
  """

  similarity: jax.Array
  flow: jax.Array
  part_similarity: jax.Array
  mu: jax.Array
  nu: jax.Array
  mass: jax.Array
  iterations: jax.Array
  error: jax.Array

  @property
  def mean_similarity(self) -> jax.Array:
    """``similarity / mass``: the flow-weighted mean similarity of the matched parts."""
    return self.similarity / self.mass

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


_check_mass = matching._check_mass  # pylint: disable=protected-access


def _check_locals(name: str, x: Any) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim < 2 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"`{name}` must be floating-point local features [..., r, c]; got shape"
                     f" {x.shape} and dtype {x.dtype}.")
  return x


def _probabilities(weights: jax.Array) -> jax.Array:
  """Non-negative weights ``[..., r]`` -> a probability vector; uniform if all are zero."""
  weights = jax.nn.relu(weights)
  total = weights.sum(-1, keepdims=True)
  empty = total < _EMPTY_MASS
  return jnp.where(empty, 1.0 / weights.shape[-1], weights / jnp.where(empty, 1.0, total))


def _augment(s: jax.Array, mu: jax.Array, nu: jax.Array, mass: jax.Array):
  """Adds the dummy part to each side: ``[..., r1 + 1, r2 + 1]``, ``[..., r1 + 1]``, ..."""
  batch = s.shape[:-2]
  dummy = jnp.asarray(DUMMY_SIMILARITY, s.dtype)
  column = jnp.broadcast_to(dummy, s.shape[:-1] + (1,))
  row = jnp.concatenate([jnp.broadcast_to(dummy, batch + (1, s.shape[-1])),
                         jnp.full(batch + (1, 1), -jnp.inf, s.dtype)], -1)
  augmented = jnp.concatenate([jnp.concatenate([s, column], -1), row], -2)
  sink = lambda m: jnp.concatenate([m, jnp.broadcast_to(1.0 - mass, m.shape[:-1] + (1,))], -1)
  return augmented, sink(mu), sink(nu)


def _partial_flow(s, mu, nu, mass: jax.Array, options: dict, full: bool):
  """Real-part flow of the augmented problem: ``(T [..., r1, r2], iterations, error)``.

  ``full`` (``p = 1``): the dummies would get no mass; the problem is solved without them.
  """
  if full:
    return matching.transport(s, mu, nu, **options)
  augmented, mu, nu = _augment(s, mu, nu, mass)
  flow, iterations, error = matching.transport(augmented, mu, nu, **options)
  # transport normalises the augmented marginals to total 1; ours total 2 - p.
  scale = 2.0 - mass
  return flow[..., :-1, :-1] * scale, iterations, error * scale


def partial_transport(similarity: jax.Array, mu: jax.Array, nu: jax.Array, *, mass: float,
                      **options) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The partial flow for given part similarities and part weights.

  Args:
    similarity: part similarities ``S``, ``[..., r1, r2]`` (cost ``1 - S``).
    mu: non-negative part weights of the first image ``[..., r1]``, normalised here to sum 1
      (uniform if all zero).
    nu: likewise for the second image, ``[..., r2]``.
    mass: ``p`` in ``(0, 1]``, the fraction of the weight transported.
    **options: Sinkhorn options of :func:`diml_jax.matching.match` (``epsilon``,
      ``threshold``, ``max_iterations``, ``gradient``, ...).

  Returns:
    ``(flow [..., r1, r2], iterations [...], error [...])``: the flow between the real
    parts (total ``p``), and the solver's iterations and final marginal error.

  Raises:
    ValueError: an invalid ``mass``, shapes that do not fit, or an invalid option.
  """
  mass = _check_mass(mass)
  similarity = jnp.asarray(similarity)
  if similarity.ndim < 2 or not jnp.issubdtype(similarity.dtype, jnp.floating):
    raise ValueError(f"`similarity` must be a floating-point array [..., r1, r2]; got shape"
                     f" {similarity.shape} and dtype {similarity.dtype}.")
  batch, (r1, r2) = similarity.shape[:-2], similarity.shape[-2:]
  for name, m, r in (("mu", mu, r1), ("nu", nu, r2)):
    if jnp.shape(m) != batch + (r,):
      raise ValueError(f"`{name}` must have shape {batch + (r,)}; got {jnp.shape(m)}.")
  dtype = jnp.promote_types(similarity.dtype, jnp.float32)
  return _partial_flow(similarity.astype(dtype), _probabilities(jnp.asarray(mu, dtype)),
                       _probabilities(jnp.asarray(nu, dtype)), jnp.asarray(mass, dtype),
                       options, mass == 1.0)


def partial_match(
    x: jax.Array,
    y: jax.Array,
    gx: jax.Array | None = None,
    gy: jax.Array | None = None,
    *,
    mass: float,
    marginals: Literal["cross", "uniform"] | tuple[jax.Array, jax.Array] = "cross",
    **options,
) -> PartialMatching:
  """Partial structural matching of image pairs: only a fraction ``mass`` of the parts match.

  As :func:`diml_jax.matching.match` (normalised local features, cosine part similarities,
  cost ``1 - S``, entropic flow by the same solver), except that the flow carries only mass
  ``p``: each image keeps ``1 - p`` of its part weight unmatched, taken first from the parts
  that resemble nothing in the other image (see the module docstring for the construction).

  Args:
    x: local features of the first images, ``[..., r1, c]``.
    y: local features of the second images, ``[..., r2, c]``; batch dimensions broadcast.
    gx: global vectors of the first images ``[..., c]`` (batch dims as ``x``), used by the
      cross marginal; by default the mean of the normalised local vectors.
    gy: likewise for ``y``.
    mass: ``p`` in ``(0, 1]``; 1 is ordinary matching.
    marginals: part weights: ``"cross"`` (``relu(<x_i, g_y>)``, as :func:`match`),
      ``"uniform"``, or a pair of non-negative arrays ``(mu [..., r1], nu [..., r2])``
      broadcasting against the batch, e.g. truncated attention rollouts
      (:func:`diml_jax.models.rollout.pool_relevance`).
    **options: Sinkhorn options of :func:`diml_jax.matching.match`.

  Returns:
    A :class:`PartialMatching`; float32 (float64 for float64 inputs).

  Raises:
    ValueError: an invalid ``mass``, shapes that do not fit, or an invalid option.

  References:
    Zhao, Rao, Wang, Lu, Zhou. DIML: Deep Interpretable Metric Learning via Structural
    Matching. TPAMI 2023 (partial similarity for ViTs).
    Chapel, Alaya, Gasso. Partial Optimal Transport with Applications on Positive-Unlabeled
    Learning. NeurIPS 2020.
  """
  mass = _check_mass(mass)
  x, y = _check_locals("x", x), _check_locals("y", y)
  if x.shape[-1] != y.shape[-1]:
    raise ValueError(f"`x` and `y` must have the same feature size c; got x {x.shape} and y"
                     f" {y.shape}.")
  try:
    batch = jnp.broadcast_shapes(x.shape[:-2], y.shape[:-2])
  except ValueError:
    raise ValueError(f"the batch dimensions of `x` {x.shape[:-2]} and `y` {y.shape[:-2]} do"
                     " not broadcast (x is [..., r1, c], y is [..., r2, c]).") from None
  for name, g, like in (("gx", gx, x), ("gy", gy, y)):
    if g is not None and jnp.shape(g) != like.shape[:-2] + like.shape[-1:]:
      raise ValueError(f"`{name}` must have shape {like.shape[:-2] + like.shape[-1:]}; got"
                       f" {jnp.shape(g)}.")
  if isinstance(marginals, tuple) and len(marginals) == 2:
    given = []
    for name, m, r in (("mu", marginals[0], x.shape[-2]), ("nu", marginals[1], y.shape[-2])):
      try:
        jnp.broadcast_shapes(jnp.shape(m), batch + (r,))
      except ValueError:
        raise ValueError(f"marginal {name} must broadcast to {batch + (r,)}; got"
                         f" {jnp.shape(m)}.") from None
      given.append(jnp.asarray(m))
    kind, given = "given", tuple(given)
  elif isinstance(marginals, str) and marginals in ("cross", "uniform"):
    kind, given = marginals, None
  else:
    raise ValueError(f"`marginals` must be 'cross', 'uniform' or a pair of arrays (mu, nu);"
                     f" got {marginals!r}.")
  # transport checks the options while this is traced.
  return _partial_match_core(x, y, gx, gy, given, mass, kind=kind, full=mass == 1.0,
                             options=tuple(sorted(options.items())))


# The mass is an argument, not a constant: an ablation over p compiles once.
@functools.partial(jax.jit, static_argnames=("kind", "full", "options"))
def _partial_match_core(x, y, gx, gy, given, mass, *, kind: str, full: bool, options: tuple):
  dtype = functools.reduce(jnp.promote_types, (x.dtype, y.dtype, jnp.float32))
  x, y = matching.normalize(x.astype(dtype)), matching.normalize(y.astype(dtype))
  gx = matching.normalize(x.mean(-2) if gx is None else gx.astype(dtype))
  gy = matching.normalize(y.mean(-2) if gy is None else gy.astype(dtype))
  batch = jnp.broadcast_shapes(x.shape[:-2], y.shape[:-2])
  r1, r2 = x.shape[-2], y.shape[-2]
  s = jnp.broadcast_to(jnp.einsum("...rc,...sc->...rs", x, y), batch + (r1, r2))
  if kind == "cross":
    mu = jnp.einsum("...rc,...c->...r", x, gy)
    nu = jnp.einsum("...sc,...c->...s", y, gx)
  elif kind == "uniform":
    mu, nu = jnp.ones(batch + (r1,), dtype), jnp.ones(batch + (r2,), dtype)
  else:
    mu, nu = (m.astype(dtype) for m in given)
  mu = _probabilities(jnp.broadcast_to(mu, batch + (r1,)))
  nu = _probabilities(jnp.broadcast_to(nu, batch + (r2,)))
  flow, iterations, error = _partial_flow(s, mu, nu, jnp.asarray(mass, dtype), dict(options),
                                          full)
  return PartialMatching(
      similarity=jnp.sum(flow * s, (-2, -1)), flow=flow, part_similarity=s, mu=mu, nu=nu,
      mass=flow.sum((-2, -1)), iterations=iterations, error=error)
