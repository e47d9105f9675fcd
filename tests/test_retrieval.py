"""diml_jax.retrieval against brute-force dense rankings and per-pair matching.

tests/conftest.py gives 8 CPU devices, so every chunk here is split 8 ways; sizes are
chosen so that the last chunk is padded.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diml_jax import matching, retrieval


def brute_ranking(queries, gallery, self_index=None):
  """Dense float64 cosine ranking, stable by index, each query's own item removed."""
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
  s = q.astype(np.float64) @ g.T.astype(np.float64)
  ranks = []
  for i, row in enumerate(s):
    order = sorted(range(len(row)), key=lambda j: (-row[j], j))
    if self_index is not None:
      order.remove(self_index[i])
    ranks.append(order)
  return np.array(ranks), s


def tied_vectors(rng, n, d=16):
  """+-1 entries: after normalisation every entry is +-1/4, every cosine a multiple of
  1/8 computed exactly in float32 in any summation order: many exact ties."""
  return rng.choice([-1.0, 1.0], size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("n, k, group", [(50, 7, 1), (301, 3, 8), (1000, 20, 4), (1000, 1, None)])
def test_column_top_k_is_lax_top_k_with_ties(n, k, group):
  rng = np.random.default_rng(n + k)
  s = jnp.asarray(rng.integers(0, 6, size=(n, 9)).astype(np.float32))  # heavy ties
  values, indices = retrieval.column_top_k(s, k, group_size=group)
  ref_values, ref_indices = jax.lax.top_k(s.T, k)
  np.testing.assert_array_equal(indices, ref_indices)
  np.testing.assert_array_equal(values, ref_values)


def test_global_neighbours_equal_dense_ranking_with_ties():
  rng = np.random.default_rng(0)
  x = tied_vectors(rng, 203)
  ref, s = brute_ranking(x, x, self_index=np.arange(203))
  out = retrieval.global_neighbours(x, x, k=40, self_index=np.arange(203), chunk_per_device=8)
  np.testing.assert_array_equal(out.indices, ref[:, :40])
  np.testing.assert_allclose(out.similarities, np.take_along_axis(s, ref[:, :40], 1), atol=1e-6)
  assert (out.indices != np.arange(203)[:, None]).all()


def test_global_neighbours_separate_queries_gaussian():
  rng = np.random.default_rng(1)
  queries, gallery = rng.normal(size=(37, 24)), rng.normal(size=(500, 24))
  ref, _ = brute_ranking(queries, gallery)
  out = retrieval.global_neighbours(queries, gallery, k=500, chunk_per_device=2)
  np.testing.assert_array_equal(out.indices, ref)
  # One device and one chunk give the same lists.
  one = retrieval.global_neighbours(queries, gallery, k=500, chunk_per_device=1000,
                                    devices=jax.devices()[:1])
  np.testing.assert_array_equal(one.indices, out.indices)


def test_global_neighbours_can_return_the_whole_gallery_but_not_more():
  x = tied_vectors(np.random.default_rng(2), 30)
  out = retrieval.global_neighbours(x, x, k=29, self_index=np.arange(30))
  assert sorted(out.indices[5]) == [j for j in range(30) if j != 5]
  with pytest.raises(ValueError, match=r"k must be in \[1, 29\]"):
    retrieval.global_neighbours(x, x, k=30, self_index=np.arange(30))
  with pytest.raises(ValueError, match="self_index must hold"):
    retrieval.global_neighbours(x, x, k=3, self_index=np.full(30, 30))
  with pytest.raises(ValueError, match="same d"):
    retrieval.global_neighbours(x, x[:, :8], k=3)


def _features(rng, n, r=9, c=16, classes=12):
  """Class-structured local maps: a prototype per class with its parts shuffled and noise."""
  labels = rng.integers(0, classes, n)
  proto = rng.normal(size=(classes, r, c))
  x = np.stack([proto[y][rng.permutation(r)] for y in labels]) + rng.normal(size=(n, r, c))
  g = x.mean(1) + 0.5 * rng.normal(size=(n, c))
  return x.astype(np.float32), g.astype(np.float32), labels


def test_rerank_scores_equal_per_pair_matching():
  rng = np.random.default_rng(3)
  x, g, _ = _features(rng, 61)
  candidates = rng.integers(0, 61, size=(61, 6))
  scores = retrieval.rerank_scores(x, g, x, g, candidates, chunk_per_device=2)
  m = matching.match(x[:, None], x[candidates], g[:, None], g[candidates])
  gn = g / np.linalg.norm(g, axis=1, keepdims=True)
  expected = (np.asarray(m.similarity) + np.einsum("qc,qkc->qk", gn, gn[candidates])) / 2
  np.testing.assert_allclose(scores, expected, atol=2e-6)


def test_multiscale_reranking_equals_brute_force_sort():
  """Top K ordered by structural + global (matching.match on each pair, one at a time);
  the positions after K keep the global order."""
  rng = np.random.default_rng(4)
  n, kmax = 45, 12
  x, g, _ = _features(rng, n)
  neighbours = retrieval.global_neighbours(
      g, g, k=n - 1, self_index=np.arange(n), chunk_per_device=2)
  scores = retrieval.rerank_scores(x, g, x, g, neighbours.indices[:, :kmax], chunk_per_device=2)
  gn = g / np.linalg.norm(g, axis=1, keepdims=True)
  for k in (0, 1, 5, kmax):
    order = retrieval.multiscale_order(neighbours.indices, scores, k=k)
    for i in range(0, n, 4):
      head = list(neighbours.indices[i, :k])
      total = {j: float(matching.match(x[i], x[j], g[i], g[j]).similarity) + float(gn[i] @ gn[j])
               for j in head}
      expected = sorted(head, key=lambda j: -total[j])  # stable: ties keep global order
      assert list(order[i, :k]) == expected
      np.testing.assert_array_equal(order[i, k:], neighbours.indices[i, k:])
    if k > 1:  # the structural term does reorder: the comparison above is not vacuous
      assert (order[:, :k] != neighbours.indices[:, :k]).any(1).mean() > 0.5


def test_multiscale_order_breaks_ties_by_global_rank():
  indices = np.array([[7, 3, 9, 1, 4]])
  scores = np.array([[0.5, 0.9, 0.5, 0.9]], np.float32)
  np.testing.assert_array_equal(retrieval.multiscale_order(indices, scores, k=4), [[3, 1, 7, 9, 4]])
  np.testing.assert_array_equal(retrieval.multiscale_order(indices, scores, k=2), [[3, 7, 9, 1, 4]])
  with pytest.raises(ValueError, match=r"k must be in \[0, kmax=4\]"):
    retrieval.multiscale_order(indices, scores, k=5)


def test_rerank_scores_rejects_bad_candidates():
  x = np.zeros((4, 3, 8), np.float32)
  g = np.ones((4, 8), np.float32)
  with pytest.raises(ValueError, match="gallery indices"):
    retrieval.rerank_scores(x, g, x, g, np.full((4, 2), 4))
  with pytest.raises(ValueError, match="candidates must be int"):
    retrieval.rerank_scores(x, g, x, g, np.zeros((3, 2), int))
