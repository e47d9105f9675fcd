"""Many pairs in tiles: all pairs of two sets, all pairs within one set, per-query candidates.

Each tile's part similarities come from one matrix product; tiles are mapped one after
the other (:func:`diml_jax.matching.sinkhorn.blocked`), so memory stays bounded. The
public functions of :mod:`diml_jax.matching.api` check their arguments and call one of the
jitted cores here.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from diml_jax.matching import partial
from diml_jax.matching.problem import combine, local_weights, marginal_pair, prepare
from diml_jax.matching.sinkhorn import blocked
from diml_jax.matching.types import SinkhornOptions

__all__ = ["pair_tile", "pairwise_core", "rerank_core", "symmetric_core"]

# A tile holds up to this many blocks (block_size pairs each) of pairs, whose part
# similarities come from one matrix product: a wider product keeps more CPU cores busy.
_TILE_BLOCKS = 4


def pair_tile(xa, ga, wa, yb, gb, wb, *, quantity, marginals, mass, opts: SinkhornOptions):
  """Every pair of ``xa [q, r1, c]``, ``ga [q, c]`` and ``yb [k, r2, c]``, ``gb [k, c]`` ->
  ``[q, k]`` (features normalised); ``wa``/``wb`` hold the items' part weights for
  ``"weights"`` marginals (else empty)."""
  s = jnp.einsum("arc,bsc->abrs", xa, yb)
  # <y_j, g_a> as [b, s, a] (the large operand yb on the left, as the product for S
  # has it), so that yb is not transposed in every tile.
  y_ga = jnp.einsum("bsc,ac->bsa", yb, ga).transpose(2, 0, 1)
  mu, nu = marginal_pair(marginals, jnp.einsum("arc,bc->abr", xa, gb), y_ga,
                         wa[0][:, None] if wa else None, wb[0][None] if wb else None)
  total = partial.transported(s, mu, nu, local_weights(quantity, s), mass, opts)
  return combine(quantity, total, ga @ gb.T, mass)


@functools.partial(jax.jit, static_argnames=("quantity", "marginals", "mass", "opts"))
def pairwise_core(xs, ys, gxs, gys, weights, *, quantity, marginals, mass,
                  opts: SinkhornOptions):
  """All pairs of ``xs [n, r1, c]`` and ``ys [m, r2, c]`` -> ``[n, m]``."""
  xs, gxs = prepare(xs, gxs)
  ys, gys = prepare(ys, gys)
  n, m = xs.shape[0], ys.shape[0]
  cols = min(m, opts.block)
  rows = max(1, _TILE_BLOCKS * opts.block // cols)
  wxs, wys = ((weights[0],), (weights[1],)) if weights else ((), ())
  tile = functools.partial(pair_tile, quantity=quantity, marginals=marginals, mass=mass,
                           opts=opts)

  def row_tile(xa, ga, *wa):  # [q, r1, c], [q, c] -> [q, m]
    return blocked(lambda yb, gb, *wb: tile(xa, ga, wa, yb, gb, wb).T, (ys, gys, *wys),
                   m, cols).T

  return blocked(row_tile, (xs, gxs, *wxs), n, rows)


@functools.partial(jax.jit, static_argnames=("quantity", "marginals", "mass", "opts"))
def symmetric_core(xs, gxs, weights, *, quantity, marginals, mass, opts: SinkhornOptions):
  """All pairs within one set, each unordered pair solved once: ``[n, r, c]`` -> ``[n, n]``.

  The problem of ``(b, a)`` is the transpose of that of ``(a, b)`` (``S^T``, ``mu`` and
  ``nu`` swapped), whose flow is ``T^T``: the same quantity. The set is cut into ``nb``
  blocks of ``q`` items, and block ``I`` is matched with the blocks ``I, I + 1, ...,
  I + nb // 2`` (cyclically): every unordered pair of blocks once (the opposite blocks
  of an even ``nb`` twice, one of them dropped), and the same number of block pairs for
  every block, so the work comes in tiles of one shape: block ``I`` against
  ``_TILE_BLOCKS`` consecutive blocks of its range, solved by :func:`pair_tile`. A block
  against itself solves its ``q (q - 1) / 2`` pairs below the diagonal too (they are
  dropped), so about ``n (n + q) / 2`` problems are solved in all. Each value of a pair
  fills both ``[i, j]`` and ``[j, i]``.
  """
  xs, gxs = prepare(xs, gxs)
  n = xs.shape[0]
  # q^2 pairs per block pair (at most block_size), and at least four blocks, so that the
  # diagonal blocks' extra pairs stay a small share (q / n) of the whole.
  q = max(1, min(math.isqrt(opts.block), -(-n // 4)))
  nb = -(-n // q)
  width = nb // 2 + 1  # blocks I, ..., I + nb // 2
  chunk = max(1, min(width, _TILE_BLOCKS * opts.block // (q * q)))
  # Padding items are zero (uniform marginals, S = 0): finite, and dropped below.
  blocks = [jnp.pad(a, [(0, nb * q - n)] + [(0, 0)] * (a.ndim - 1)).reshape(
      (nb, q) + a.shape[1:]) for a in (xs, gxs, *weights)]
  tile = functools.partial(pair_tile, quantity=quantity, marginals=marginals, mass=mass,
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
def rerank_core(queries, candidates, gq, gc, indices, weights, *, quantity, marginals, mass,
                opts: SinkhornOptions):
  """Each query ``[q, r1, c]`` against its own ``k`` candidates -> ``[q, k]``.

  The candidates are ``[q, k, r2, c]``, or a gallery ``[n, r2, c]`` with ``indices
  [q, k]``: each tile of queries then gathers (and normalises) its own candidates, and no
  ``[q, k, r2, c]`` array is formed.
  """
  queries, gq = prepare(queries, gq)
  wq, wc = weights if weights else (None, None)
  # ``per_query`` holds what is split into tiles along with the queries.
  if indices is None:
    per_query = {"candidates": candidates, "gc": gc, "wc": wc}
  else:
    per_query = {"indices": indices}
  per_query["wq"] = wq
  per_query = {name: a for name, a in per_query.items() if a is not None}
  k = (candidates if indices is None else indices).shape[1]

  def tile(xq, gxq, t):  # [t, r1, c], [t, c], this tile's per_query -> [t, k]
    if indices is None:  # [t, k, r2, c], [t, k, c] and [t, k, r2] if given
      yc, gyc = prepare(t["candidates"], t.get("gc"))
      wyc = t.get("wc")
    else:
      idx = t["indices"]
      yc, gyc = prepare(candidates[idx], None if gc is None else gc[idx])
      wyc = None if wc is None else wc[idx]
    s = jnp.einsum("qrc,qksc->qkrs", xq, yc)
    mu, nu = marginal_pair(
        marginals, jnp.einsum("qrc,qkc->qkr", xq, gyc), jnp.einsum("qksc,qc->qks", yc, gxq),
        t["wq"][:, None] if wq is not None else None, wyc)
    total = partial.transported(s, mu, nu, local_weights(quantity, s), mass, opts)
    return combine(quantity, total, jnp.einsum("qc,qkc->qk", gxq, gyc), mass)

  return blocked(tile, (queries, gq, per_query), queries.shape[0], max(1, opts.block // k))
