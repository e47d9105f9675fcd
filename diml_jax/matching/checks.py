"""Argument checks at the public boundary of :mod:`diml_jax.matching` (one clear error each)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from diml_jax.matching.types import MARGINAL_KINDS, QUANTITIES, Quantity, SinkhornOptions

__all__ = [
    "as_float32",
    "check_globals",
    "check_locals",
    "check_mass",
    "check_options",
    "check_quantity",
    "check_weights",
    "marginal_kind",
]


def as_float32(x: jax.Array) -> jax.Array:
  """Half-precision inputs are matched in float32; float64 stays float64."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def check_options(options: Any) -> SinkhornOptions:
  """``options`` as a :class:`SinkhornOptions` (``None``: the defaults)."""
  if options is None:
    return SinkhornOptions()
  if not isinstance(options, SinkhornOptions):
    raise ValueError(f"options must be a matching.SinkhornOptions or None; got "
                     f"{type(options).__name__} {options!r}.")
  return options


def check_locals(name: str, x: Any, layout: str = "[..., r, c]") -> jax.Array:
  """Local features of the given ``layout`` (``"[..., r, c]"``: any batch dimensions)."""
  x = jnp.asarray(x)
  dims = [d for d in layout.strip("[]").split(", ") if d != "..."]
  if x.ndim < len(dims) or (layout[1] != "." and x.ndim != len(dims)):
    raise ValueError(f"{name} must be local features {layout}; got shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating-point array; got dtype {x.dtype}.")
  return x


def check_globals(name: str, g: Any, expected: tuple[int, ...]) -> jax.Array | None:
  """Global vectors of the ``expected`` shape, or ``None``."""
  if g is None:
    return None
  g = jnp.asarray(g)
  if g.shape != expected:
    raise ValueError(
        f"{name} must have shape {expected} (the batch dimensions of the local "
        f"features and c); got {g.shape}."
    )
  return g


def marginal_kind(marginals: Any) -> str:
  """One of :data:`MARGINAL_KINDS`, or ``"weights"`` for a pair of part weights ``(mu, nu)``."""
  if isinstance(marginals, str) and marginals in MARGINAL_KINDS:
    return marginals
  if isinstance(marginals, tuple) and len(marginals) == 2:
    return "weights"
  raise ValueError(
      f"marginals must be one of {MARGINAL_KINDS} or a pair of arrays (mu, nu); got "
      f"{marginals!r}."
  )


def check_quantity(quantity: Any) -> Quantity:
  if quantity not in QUANTITIES:
    raise ValueError(
        f"quantity must be 'structural', 'similarity' or 'distance'; got {quantity!r}."
    )
  return quantity


def check_mass(mass: Any) -> float:
  """``p``, the fraction of the part weight transported: a Python number in ``(0, 1]``."""
  if isinstance(mass, jax.core.Tracer) or not isinstance(mass, (int, float)) or not (
      0 < mass <= 1):
    raise ValueError(f"`mass` (the fraction p of mass transported) must be a Python number in"
                     f" (0, 1]; got {mass!r}.")
  return float(mass)


def check_weights(marginals: Any, shapes: tuple, layouts: tuple) -> tuple[jax.Array, ...]:
  """Per-item part weights ``(mu, nu)`` of the exact ``shapes``, or ``()`` for a string."""
  if marginal_kind(marginals) != "weights":
    return ()
  weights = []
  for name, m, shape, layout in zip(("mu", "nu"), marginals, shapes, layouts):
    m = jnp.asarray(m)
    if m.shape != shape or not jnp.issubdtype(m.dtype, jnp.floating):
      raise ValueError(f"marginal {name} must be floating-point part weights {layout} ="
                       f" {shape}; got {m.dtype}{list(m.shape)}.")
    weights.append(as_float32(m))
  return tuple(weights)
