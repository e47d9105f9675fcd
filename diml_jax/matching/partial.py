"""Partial transport: only a fraction ``p`` (``mass``) of each image's part weight is matched.

DIML's journal version (Zhao et al., TPAMI 2023, the extension to ViTs) compares two images
by a *partial* transport flow, so parts of one image that have no counterpart in the other
(background, an occluded or cropped-out part) need not be matched to anything. Without
regularisation:

.. math::

  T = \\arg\\min_{T \\ge 0,\\; T \\mathbf{1} \\le \\mu,\\; T^\\top \\mathbf{1} \\le \\nu,\\;
      \\mathbf{1}^\\top T \\mathbf{1} = p} \\langle T, 1 - S \\rangle.

The flow here is the entropic one of the augmented problem below (its entropy also covers
the mass each part leaves unmatched); as ``epsilon -> 0`` it tends to the flow above.

**Dummy-point construction** (Chapel, Alaya, Gasso, NeurIPS 2020): each side gets one
extra part holding mass ``1 - p``, and a balanced problem is solved on the augmented
``(r1 + 1) x (r2 + 1)`` similarities by the solver of :mod:`diml_jax.matching.sinkhorn`:

- real part <-> dummy: one constant similarity, :data:`DUMMY_SIMILARITY` ``= 0``. The dummy
  column then receives mass ``1 - p`` at the same cost from any real part, so which parts
  go there is decided by the real similarities alone. Any constant gives the same flow (it
  rescales the dummy row and column, which the Sinkhorn scalings absorb); 0 -- cost 1, the
  middle of the cosine cost range [0, 2] -- keeps the dummy's kernel entries within
  ``exp(+-1 / epsilon)`` of the real ones.
- dummy <-> dummy: similarity ``-inf`` (cost ``+inf``, kernel entry exactly 0), so that the
  dummies' mass cannot flow to each other and exactly ``p`` moves between real parts. Chapel
  et al. need a finite cost ``A > 2 xi + max C`` for unregularised transport; with entropic
  regularisation a finite cost still leaks ``~exp(-A / epsilon)`` mass, an infinite one none.

``p = 1`` gives the dummies no mass; the problem is then solved without them (parts without
mass make the solver's ``"implicit"`` and ``"unroll"`` gradients NaN).

The published DIML code has no transformer part; public research code derived from it
(``utilities/diml.py``, ``Sinkhorn_partial`` with ``ot_part = p``) uses the same
construction.

References:
  Chapel, Alaya, Gasso. Partial Optimal Transport with Applications on Positive-Unlabeled
  Learning. NeurIPS 2020.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diml_jax.matching import sinkhorn
from diml_jax.matching.problem import inner, probabilities
from diml_jax.matching.types import SinkhornOptions

__all__ = ["DUMMY_SIMILARITY", "augment", "flow", "transported"]

# Similarity of a real part to the other image's dummy part (see the module docstring).
DUMMY_SIMILARITY = 0.0


def augment(s: jax.Array, mu: jax.Array, nu: jax.Array, mass: jax.Array):
  """Adds the dummy part to each side, with marginals scaled to total 1.

  Args:
    s: part similarities ``[..., r1, r2]``.
    mu: marginal ``[..., r1]`` (sum 1).
    nu: marginal ``[..., r2]`` (sum 1).
    mass: ``p``, a scalar.

  Returns:
    ``(s [..., r1 + 1, r2 + 1], mu [..., r1 + 1], nu [..., r2 + 1])``; the marginals are
    those of the construction (total ``2 - p``) divided by ``2 - p``.
  """
  batch = s.shape[:-2]
  dummy = jnp.asarray(DUMMY_SIMILARITY, s.dtype)
  column = jnp.broadcast_to(dummy, s.shape[:-1] + (1,))
  row = jnp.concatenate([jnp.broadcast_to(dummy, batch + (1, s.shape[-1])),
                         jnp.full(batch + (1, 1), -jnp.inf, s.dtype)], -1)
  augmented = jnp.concatenate([jnp.concatenate([s, column], -1), row], -2)
  sink = lambda m: jnp.concatenate(
      [m, jnp.broadcast_to(1.0 - mass, m.shape[:-1] + (1,)).astype(m.dtype)], -1)
  return augmented, probabilities(sink(mu)), probabilities(sink(nu))


def flow(s, mu, nu, mass, opts: SinkhornOptions, *, full: bool):
  """The (partial) flow between the real parts: ``(T [..., r1, r2], iterations, error)``.

  Args:
    s: part similarities ``[..., r1, r2]``.
    mu: marginal ``[..., r1]`` (sum 1).
    nu: marginal ``[..., r2]`` (sum 1).
    mass: ``p``, a scalar (an array: an ablation over ``p`` compiles once).
    opts: the solver's options.
    full: ``p == 1``, a Python bool: the problem is solved without the dummies.

  Returns:
    The flow (total ``p``), iterations ``[...]`` and the final L1 marginal error ``[...]``
    (for ``p < 1``, of the augmented flow, in the units of ``mu``).
  """
  if full:
    return sinkhorn.solve(s, mu, nu, opts)
  augmented, mu, nu = augment(s, mu, nu, mass)
  t, iterations, error = sinkhorn.solve(augmented, mu, nu, opts)
  scale = 2.0 - mass
  return t[..., :-1, :-1] * scale, iterations, error * scale


def transported(s, mu, nu, weights, mass: float, opts: SinkhornOptions) -> jax.Array:
  """``sum T ⊙ weights`` ``[...]`` for the flow of mass ``p`` of ``(s, mu, nu)``."""
  if mass == 1.0:
    return sinkhorn.solve(s, mu, nu, opts, weights)[0]
  t, _, _ = flow(s, mu, nu, jnp.asarray(mass, s.dtype), opts, full=False)
  return inner(t, weights)
