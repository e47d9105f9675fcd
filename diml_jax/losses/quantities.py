"""The matrices metric losses are computed on: global cosine / distance, or DIML's quantities.

Global: :func:`cosine_similarity` and :func:`euclidean_distance` of L2-normalised
embeddings. Structural (DIML, ICCV 2021, Sec. 3.3): :func:`structural_matrix` gives one DIML
quantity for all pairs of the batch (``[b, b]``, or ``[b, m]`` against other part sets such
as spatial proxies), :func:`structural_partners` only for picked pairs (``[b, k]``, each
anchor against its own ``k`` partners), both through :mod:`diml_jax.matching`.

How pairs are matched (marginals, partial mass, solver options) and where (a device mesh)
travels as one :class:`StructuralOptions`.

**Sharded.** With its ``mesh`` and ``axis_name`` the batch is split along ``axis_name``: each
device matches its own rows against the all-gathered batch (``jax.shard_map`` with
``jax.lax.all_gather``), so the ``O(b²)`` matching work is divided among the devices and
the result (and its gradient, whose all-gather transposes to a reduce-scatter) equals the
single-device one: :mod:`diml_jax.matching` solves each pair to the same result whichever
block or device holds it. Call these inside the jitted training step; the matrix comes
back sharded by rows and the losses of :mod:`diml_jax.losses` run on it unchanged.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diml_jax import matching, miners

__all__ = [
    "check_batch",
    "check_class_similarity",
    "check_embeddings",
    "cosine_similarity",
    "euclidean_distance",
    "inner_product",
    "replicated",
    "StructuralOptions",
    "structural_matrix",
    "structural_partners",
]

Quantity = Literal["structural", "similarity", "distance"]
# A kind of matching.MARGINAL_KINDS, or part weights [b, r] (a pair of them against other
# part sets).
Marginals = (Literal["cross", "cross_swapped", "uniform"] | jax.Array
             | tuple[jax.Array, jax.Array])


def check_embeddings(name: str, x) -> jax.Array:
  """``x`` as float embeddings ``[b, d]``; a ``ValueError`` naming ``name`` otherwise."""
  x = jnp.asarray(x)
  if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be float embeddings [b, d]; got {x.dtype}{list(x.shape)}.")
  return x


def check_class_similarity(similarity, labels) -> tuple[jax.Array, jax.Array]:
  """``(similarity [b, n_classes], labels [b])`` of a proxy or classifier loss, checked."""
  return miners.check_rows("similarity", similarity, labels, "[b, n_classes]")


def replicated(x: jax.Array) -> jax.Array:
  """``x`` made whole on every device if its type carries an explicit sharding.

  Under a mesh with ``AxisType.Explicit`` axes (``jax.make_mesh``'s default) a batch
  sharded by rows must be gathered before ``x @ x.T``, whose result could otherwise be
  sharded along both dimensions; elsewhere (automatic sharding, one device) a no-op.
  """
  sharding = jax.typeof(x).sharding
  if not isinstance(sharding, NamedSharding) or all(a is None for a in sharding.spec):
    return x
  return jax.sharding.reshard(x, NamedSharding(sharding.mesh, P()))


def cosine_similarity(x: jax.Array, y: jax.Array | None = None) -> jax.Array:
  """Cosine similarities of embeddings ``x [b, d]`` and ``y [m, d]`` (default ``x``) -> ``[b, m]``.

  With the batch sharded by rows the result is too (``y`` is gathered first under an
  explicit-sharding mesh).
  """
  x = matching.normalize(check_embeddings("x", x))
  y = replicated(x if y is None else matching.normalize(check_embeddings("y", y)))
  if y.shape[1] != x.shape[1]:
    raise ValueError(f"x [b, d] and y [m, d] need the same d; got {x.shape} and {y.shape}.")
  return x @ y.T


def inner_product(x: jax.Array, y: jax.Array | None = None) -> jax.Array:
  """Inner products of unnormalised embeddings ``x [b, d]`` and ``y [m, d]`` (default
  ``x``) -> ``[b, m]`` (the N-pair and angular losses' similarity)."""
  x = check_embeddings("x", x)
  y = replicated(x if y is None else check_embeddings("y", y))
  if y.shape[1] != x.shape[1]:
    raise ValueError(f"x [b, d] and y [m, d] need the same d; got {x.shape} and {y.shape}.")
  return x @ y.T


def euclidean_distance(x: jax.Array, y: jax.Array | None = None, *,
                       normalize: bool = True) -> jax.Array:
  """Euclidean distances of the L2-normalised ``x [b, d]`` and ``y [m, d]`` -> ``[b, m]``.

  ``sqrt(2 - 2 cos + 1e-8)``: the distance between unit vectors, with the floor of the
  published margin loss on global embeddings (``criteria/margin.py``), which keeps the
  gradient finite for identical embeddings (``matching.diml_distance`` adds the published
  DIML criterion's 1e-6 instead). ``normalize=False``: between the embeddings as they
  are (the lifted-structure loss's), ``sqrt(|x|² + |y|² - 2 <x, y> + 1e-8)``.
  """
  if normalize:
    return matching.unit_distance(cosine_similarity(x, y))
  x = check_embeddings("x", x)
  y = x if y is None else check_embeddings("y", y)
  squared = (jnp.sum(x * x, axis=1)[:, None] + replicated(jnp.sum(y * y, axis=1))[None, :]
             - 2.0 * inner_product(x, y))
  return jnp.sqrt(jnp.maximum(squared, 0.0) + matching.DISTANCE_FLOOR)


def check_locals(name: str, x) -> jax.Array:
  """Float local features ``[b, r, c]``."""
  x = jnp.asarray(x)
  if x.ndim != 3 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
        f"{name} must be float local features [b, r, c]; got {x.dtype}{list(x.shape)}."
    )
  return x


def check_batch(local_features, labels) -> tuple[jax.Array, jax.Array]:
  """``(local_features [b, r, c], labels [b])`` of a DIML loss, checked against each other."""
  local_features = check_locals("local_features", local_features)
  return local_features, miners.check_labels(labels, local_features.shape[0])


def global_vectors(name: str, g, x: jax.Array) -> jax.Array:
  """The global vectors ``[b, c]`` of local features ``x [b, r, c]``; by default
  :func:`matching.default_global` (the mean of the raw local features)."""
  if g is None:
    return matching.default_global(x)
  g = jnp.asarray(g)
  if g.shape != (x.shape[0], x.shape[2]):
    raise ValueError(
        f"{name} must be global vectors [{x.shape[0]}, {x.shape[2]}] for local features "
        f"{list(x.shape)}; got {list(g.shape)}."
    )
  return g


@dataclasses.dataclass(frozen=True)
class StructuralOptions:
  """How the structural quantities match pairs and split the batch: one object from the
  config (:class:`diml_jax.losses.registry.PairQuantities`) to every DIML quantity.

  Attributes:
    marginals: ``"cross"`` (default), ``"cross_swapped"`` (the published criteria's, see
      :func:`matching.match`), ``"uniform"``, or each image's part weights
      ``[b, r]`` (e.g. a ViT's truncated attention rollout pooled to the grid; split and
      gathered with the batch), or against other part sets ``y`` a pair ``(weights of x
      [b, r], weights of y [m, r2])``.
    mass: ``p`` in ``(0, 1]``, partial similarity: only ``p`` of the weight is matched
      and the structural terms are on the scale of :class:`matching.Matching` (means
      over the matched parts); 1 is ordinary matching.
    solver: the solver's :class:`matching.SinkhornOptions` (``None``: the defaults).
    mesh: a device mesh to split the batch's rows over, or ``None`` for no explicit
      sharding.
    axis_name: the mesh axis (or axes) the batch is split along.
  """

  marginals: Marginals = "cross"
  mass: float = 1.0
  solver: matching.SinkhornOptions | None = None
  mesh: Mesh | None = None
  axis_name: str | tuple[str, ...] = "data"

  def __post_init__(self):
    object.__setattr__(self, "mass", matching.check_mass(self.mass))
    object.__setattr__(self, "solver", matching.check_options(self.solver))
    if self.mesh is None:
      return
    if not isinstance(self.mesh, Mesh):
      raise ValueError(
          f"mesh must be a jax.sharding.Mesh or None; got {type(self.mesh).__name__}.")
    missing = [a for a in self.axes if a not in self.mesh.axis_names]
    if missing:
      raise ValueError(
          f"axis_name {self.axis_name!r} must name axes of the mesh {self.mesh.axis_names}; "
          f"{missing} are not."
      )

  @property
  def axes(self) -> tuple[str, ...]:
    """:attr:`axis_name` as a tuple of axis names."""
    return self.axis_name if isinstance(self.axis_name, tuple) else (self.axis_name,)

  def replace(self, **changes) -> StructuralOptions:
    """A copy with ``changes`` (checked again)."""
    return dataclasses.replace(self, **changes)


def _check_structural(structural) -> StructuralOptions:
  if not isinstance(structural, StructuralOptions):
    raise ValueError(f"structural must be a losses.StructuralOptions; got "
                     f"{type(structural).__name__} {structural!r}.")
  return structural


def _gatherer(structural: StructuralOptions, b: int):
  """A function that all-gathers a per-device shard of the batch along the mesh axis (the
  identity on one shard); checks that the batch ``b`` divides over the shards."""
  if structural.mesh is None:
    return lambda a: a
  n = math.prod(structural.mesh.shape[a] for a in structural.axes)
  if b % n:
    raise ValueError(
        f"the batch (b={b}) must divide evenly over the {n} devices of mesh axis "
        f"{structural.axis_name!r}."
    )
  return lambda a: jax.lax.all_gather(a, structural.axis_name, tiled=True) if n > 1 else a


def _check_weights(name: str, w, x: jax.Array) -> jax.Array:
  """Part weights ``[b, r]`` of local features ``x [b, r, c]``."""
  w = jnp.asarray(w)
  if w.shape != x.shape[:2] or not jnp.issubdtype(w.dtype, jnp.floating):
    raise ValueError(
        f"{name} must be float part weights {list(x.shape[:2])} for local features "
        f"{list(x.shape)}; got {w.dtype}{list(w.shape)}."
    )
  return w


def _marginal_weights(marginals, x: jax.Array, y: jax.Array | None):
  """``(kind, weights)``: a string kind and no weights, or ``"given"`` and ``(wx, wy)``.

  Part weights are ``[b, r]`` for the batch's own pairs, or a pair ``(wx [b, r], wy [m,
  r2])`` against other part sets ``y``.
  """
  if isinstance(marginals, str):
    if marginals not in matching.MARGINAL_KINDS:
      raise ValueError(f"marginals must be one of {matching.MARGINAL_KINDS} or part "
                       f"weights; got {marginals!r}.")
    return marginals, None
  if y is None:
    return "given", (_check_weights("marginals", marginals, x),)
  if not (isinstance(marginals, tuple) and len(marginals) == 2):
    raise ValueError(f"against other part sets y, marginals must be one of "
                     f"{matching.MARGINAL_KINDS} or a pair of part weights (weights of x "
                     f"[b, r], weights of y [m, r2]).")
  return "given", (_check_weights("marginals[0]", marginals[0], x),
                   _check_weights("marginals[1]", marginals[1], y))


def _rows(fn, args: tuple, specs: tuple, structural: StructuralOptions) -> jax.Array:
  """``fn(*args)``; with a mesh, each device runs ``fn`` on its shards (``specs``) and the
  result ``[b, ...]`` comes back sharded by rows."""
  if structural.mesh is None:
    return fn(*args)
  # check_vma=False: OTT's Sinkhorn has a lax.cond whose branches differ in their
  # varying-manual-axes types under shard_map, which the checker rejects. Gradients are
  # unaffected (tests/test_losses_sharded.py compares them with a single device).
  return jax.shard_map(fn, mesh=structural.mesh, in_specs=specs,
                       out_specs=P(structural.axis_name, None), check_vma=False)(*args)


def structural_matrix(
    x: jax.Array,
    g: jax.Array | None = None,
    y: jax.Array | None = None,
    gy: jax.Array | None = None,
    *,
    quantity: Quantity = "similarity",
    structural: StructuralOptions = StructuralOptions(),
) -> jax.Array:
  """One DIML quantity for every pair of the batch, or of the batch and other part sets.

  Args:
    x: local features of the batch, ``[b, r, c]``.
    g: global vectors ``[b, c]``; by default the mean of the (unnormalised) local
      features, as the published DIML losses.
    y: local features ``[m, r2, c]`` to compare against (e.g. spatial proxies); by
      default the batch itself.
    gy: global vectors of ``y``, ``[m, c]``; by default the mean of its local features.
    quantity: ``"similarity"`` (``(sum T⊙S + <g_a, g_b>) / 2``, the multi-similarity
      loss's), ``"distance"`` (``(sum T⊙D + ||g_a - g_b||) / 2``, the margin loss's) or
      ``"structural"`` (``sum T⊙S``); see :func:`matching.pairwise`.
    structural: marginals, partial mass, solver options and mesh
      (:class:`StructuralOptions`; by default cross-correlation marginals, whole mass,
      the default solver, no mesh).

  Returns:
    ``[b, m]`` (``m = b`` by default); with a mesh, sharded by rows along ``axis_name``.
    Without a given ``y`` the diagonal holds each image against itself.

  Raises:
    ValueError: shapes that do not fit, or a batch that does not divide over the mesh.
  """
  o = _check_structural(structural)
  x = check_locals("x", x)
  g = global_vectors("g", g, x)
  own = y is None
  if not own:
    y = check_locals("y", y)
    gy = global_vectors("gy", gy, y)
  kind, weights = _marginal_weights(o.marginals, x, y)
  gather = _gatherer(o, x.shape[0])

  def rows(xl, gl, *rest):
    if own:  # every device needs the whole batch as columns
      yb, gb = gather(xl), gather(gl)
      wl = wb = rest[0] if rest else None
      wb = None if wb is None else gather(wb)
    else:
      yb, gb, *w = rest
      wl, wb = w if w else (None, None)
    pair_marginals = kind if wl is None else (wl, wb)
    return matching.pairwise(xl, yb, gl, gb, quantity=quantity, marginals=pair_marginals,
                             mass=o.mass, options=o.solver)

  split = P(o.axis_name)
  args = (x, g) if own else (x, g, y, gy)
  specs = (split, split) + (() if own else (P(), P()))
  if weights:
    args += weights
    specs += (split,) + ((P(),) if len(weights) == 2 else ())
  return _rows(rows, args, specs, o)


def structural_partners(
    x: jax.Array,
    partners: jax.Array,
    g: jax.Array | None = None,
    *,
    quantity: Quantity = "distance",
    structural: StructuralOptions = StructuralOptions(),
) -> jax.Array:
  """One DIML quantity between each image and ``k`` partners picked from the batch.

  All ``b * k`` pairs are matched in one batched call (:func:`matching.rerank`): the
  margin loss with DIML needs the distance of only the ``2 b`` (anchor, positive) and
  (anchor, negative) pairs its miner picked, not the ``b²`` of the whole batch.

  Args:
    x: local features of the batch, ``[b, r, c]``.
    partners: indices into the (global) batch, ``[b, k]`` int.
    g: global vectors ``[b, c]``; by default the mean of the unnormalised local features.
    quantity: ``"distance"`` (default), ``"similarity"`` or ``"structural"``.
    structural: as :func:`structural_matrix` (part weights ``[b, r]`` only: the
      partners are images of the batch); with a mesh the anchors are split.

  Returns:
    ``[b, k]``: entry ``[i, j]`` is the quantity between image ``i`` and image
    ``partners[i, j]``; with a mesh, sharded by rows.

  Raises:
    ValueError: as :func:`structural_matrix`, or ``partners`` not ``[b, k]`` integers.
  """
  o = _check_structural(structural)
  x = check_locals("x", x)
  g = global_vectors("g", g, x)
  partners = jnp.asarray(partners)
  if (partners.ndim != 2 or partners.shape[0] != x.shape[0]
      or not jnp.issubdtype(partners.dtype, jnp.integer)):
    raise ValueError(
        f"partners must be int indices [{x.shape[0]}, k]; got "
        f"{partners.dtype}{list(partners.shape)}."
    )
  kind, weights = _marginal_weights(o.marginals, x, None)
  gather = _gatherer(o, x.shape[0])

  def rows(xl, gl, pl, *wl):  # each anchor's partners, gathered from the batch by rerank
    pair_marginals = (wl[0], gather(wl[0])) if wl else kind
    return matching.rerank(
        xl, gather(xl), gl, gather(gl), indices=pl, quantity=quantity,
        marginals=pair_marginals, mass=o.mass, options=o.solver)

  args = (x, g, partners) + (weights or ())
  return _rows(rows, args, (P(o.axis_name),) * len(args), o)
