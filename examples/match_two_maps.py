"""Structural matching of two part grids, as one would call it from another JAX pipeline.

Image B holds four of image A's parts, moved to other cells and slightly perturbed;
the rest of B is unrelated. DIML's flow finds where each of A's parts went.

  python examples/match_two_maps.py
"""
import jax
import jax.numpy as jnp
import numpy as np

from diml_jax import matching

GRID, C = 4, 128
rng = np.random.default_rng(0)
a = rng.normal(size=(GRID * GRID, C))
b = rng.normal(size=(GRID * GRID, C))
moves = {0: 15, 5: 10, 6: 3, 12: 9}  # part of A (cell index) -> its cell in B
for src, dst in moves.items():
  b[dst] = a[src] + 0.3 * rng.normal(size=C)

m = jax.jit(matching.match)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
global_cos = float(matching.normalize(jnp.asarray(a.mean(0))) @ matching.normalize(jnp.asarray(b.mean(0))))
print(f"global cosine {global_cos:.3f}; structural similarity {float(m.similarity):.3f} "
      f"({int(m.iterations)} Sinkhorn iterations, marginal error {float(m.error):.1e})")
print("similarity = sum of part-to-part contributions T * S; the largest:")
contrib = np.asarray(m.contributions)
for flat in np.argsort(contrib, axis=None)[::-1][:6]:
  i, j = np.unravel_index(flat, contrib.shape)
  mark = "  <- a moved part" if moves.get(int(i)) == int(j) else ""
  print(f"  A cell ({i // GRID},{i % GRID}) -> B cell ({j // GRID},{j % GRID}): "
        f"flow {m.flow[i, j]:.3f} x cos {m.part_similarity[i, j]:+.3f} = {contrib[i, j]:.4f}{mark}")
found = {int(i): int(np.argmax(m.flow[i])) for i in moves}
print("every moved part found:", found == moves)
