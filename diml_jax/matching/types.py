"""The result of structural matching and the options of its solver."""
from __future__ import annotations

import dataclasses
import numbers
from typing import Literal, NamedTuple

import jax

__all__ = ["MARGINAL_KINDS", "Matching", "SinkhornOptions", "Marginals", "Gradient",
           "Quantity"]

# The marginals named by a string (see diml_jax.matching.problem.marginal_pair): the
# paper's cross-correlation, the published training criteria's swapped form of it, uniform.
MARGINAL_KINDS = ("cross", "cross_swapped", "uniform")
# One of those, or given part weights (mu, nu), e.g. a ViT's attention rollout.
Marginals = Literal["cross", "cross_swapped", "uniform"] | tuple[jax.Array, jax.Array]
Gradient = Literal["constant", "implicit", "unroll"]
Quantity = Literal["structural", "similarity", "distance"]
GRADIENTS = ("constant", "implicit", "unroll")
QUANTITIES = ("structural", "similarity", "distance")


class Matching(NamedTuple):
  """Result of :func:`~diml_jax.matching.match` for a batch of image pairs ``[...]``.

  **The similarity scale.** ``similarity`` is ``sum_ij T_ij S_ij / p``, with ``p`` the mass
  the flow carries (1 for ordinary matching, ``mass < 1`` for partial matching): the
  flow-weighted mean similarity of the matched parts, on the scale of a cosine whatever
  ``p``. :func:`~diml_jax.matching.pairwise`, :func:`~diml_jax.matching.rerank`, the losses
  and the report all use this scale.

  Attributes:
    similarity: structural similarity ``sum_ij T_ij S_ij / p``, ``[...]``.
    flow: the transport plan ``T`` between the parts, ``[..., r1, r2]``; total ``p``.
    part_similarity: cosine similarities ``S`` of the parts, ``[..., r1, r2]``.
    mu: normalised part weights of the first image, ``[..., r1]`` (sum 1).
    nu: normalised part weights of the second image, ``[..., r2]`` (sum 1).
    mass: ``p``, the mass the flow was asked to carry, ``[...]``.
    iterations: Sinkhorn iterations run for each pair, ``[...]``.
    error: L1 deviation of the flow's column sums from their target after the last check
      (for partial matching, of the augmented problem's flow), ``[...]``; at most the
      ``threshold`` unless ``max_iterations`` was hit.
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
  def contributions(self) -> jax.Array:
    """Part-to-part contributions ``T ⊙ S / p``, ``[..., r1, r2]``; they sum to ``similarity``."""
    return self.flow * self.part_similarity / self.mass[..., None, None]

  @property
  def row_contributions(self) -> jax.Array:
    """How much each part of the first image contributed, ``[..., r1]``."""
    return self.contributions.sum(-1)

  @property
  def column_contributions(self) -> jax.Array:
    """How much each part of the second image contributed, ``[..., r2]``."""
    return self.contributions.sum(-2)


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class SinkhornOptions:
  """How the flow is solved: one checked, hashable object from the config to the solver.

  The defaults are the published DIML code's (``epsilon = 0.05``, at most 100 iterations).
  The options are checked once, when the object is made; the jitted cores take it as a
  static argument.

  Attributes:
    epsilon: entropic regularisation; a Python number, as it is compiled in.
    threshold: L1 marginal error at which Sinkhorn stops, or ``None`` for exactly
      ``max_iterations`` iterations.
    max_iterations: iteration cap.
    check_every: iterations between convergence checks (the first round is also
      checked after ``check_every // 2``).
    lse_mode: log-domain Sinkhorn (slower; for very small ``epsilon``).
    gradient: ``"constant"`` (the flow is a constant in the backward pass, as published),
      ``"implicit"`` (OTT's implicit differentiation) or ``"unroll"`` (backpropagation
      through the iterations).
    block_size: pairs solved together (their first round; the pairs still running then
      go on in sub-blocks of ``block_size / 8``); ``None``: 256 on CPU, 16384 on
      accelerators (see :attr:`block`).
  """

  epsilon: float = 0.05
  threshold: float | None = 1e-3
  max_iterations: int = 100
  check_every: int = 10
  lse_mode: bool = False
  gradient: Gradient = "constant"
  block_size: int | None = None

  def __post_init__(self):
    if isinstance(self.epsilon, jax.core.Tracer) or not (
        isinstance(self.epsilon, (int, float)) and self.epsilon > 0):
      raise ValueError(
          f"epsilon must be a Python number > 0 (it is compiled in); got {self.epsilon!r}.")
    if self.threshold is not None and not (
        isinstance(self.threshold, (int, float)) and self.threshold > 0):
      raise ValueError(f"threshold must be > 0, or None for exactly max_iterations "
                       f"iterations; got {self.threshold!r}.")
    if not _is_int(self.max_iterations) or self.max_iterations < 1:
      raise ValueError(f"max_iterations must be an int >= 1, got {self.max_iterations!r}.")
    if self.threshold is not None and not (
        _is_int(self.check_every) and 1 <= self.check_every <= self.max_iterations):
      raise ValueError(f"check_every must be an int in [1, max_iterations="
                       f"{self.max_iterations}], got {self.check_every!r}.")
    if self.gradient not in GRADIENTS:
      raise ValueError(
          f"gradient must be 'constant', 'implicit' or 'unroll', got {self.gradient!r}.")
    if self.block_size is not None and not (
        _is_int(self.block_size) and self.block_size >= 1):
      raise ValueError(f"block_size must be an int >= 1 or None, got {self.block_size!r}.")
    # Hash and compare as the same numbers whatever the Python types given.
    object.__setattr__(self, "epsilon", float(self.epsilon))
    if self.threshold is not None:
      object.__setattr__(self, "threshold", float(self.threshold))
    object.__setattr__(self, "lse_mode", bool(self.lse_mode))
    for name in ("max_iterations", "check_every", "block_size"):
      if getattr(self, name) is not None:
        object.__setattr__(self, name, int(getattr(self, name)))

  def replace(self, **changes) -> SinkhornOptions:
    """A copy with ``changes`` (checked like a new object)."""
    return dataclasses.replace(self, **changes)

  @property
  def block(self) -> int:
    """``block_size``, or the default of the backend: on a CPU a block's kernels (256 x r1
    x r2 floats) stay in cache; accelerators want wide batches to fill their cores."""
    if self.block_size is not None:
      return self.block_size
    return 256 if jax.default_backend() == "cpu" else 16384
