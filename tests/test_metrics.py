"""diml_jax.metrics against hand-computed examples and brute-force loops written here."""
import math

import jax
import numpy as np
import pytest

from diml_jax import metrics


# --- independent references -------------------------------------------------------------
def brute_recall(hits, k):
  return [1.0 if any(row[:k]) else 0.0 for row in hits]


def brute_r_precision(hits, relevant):
  return [sum(row[:r]) / r if r else 0.0 for row, r in zip(hits, relevant)]


def brute_map_at_r(hits, relevant):
  out = []
  for row, r in zip(hits, relevant):
    total, found = 0.0, 0
    for i in range(r):  # positions 1..R
      if row[i]:
        found += 1
        total += found / (i + 1)
    out.append(total / r if r else 0.0)
  return out


def brute_nmi(a, b):
  """2 I / (H(a) + H(b)) from the contingency table, natural logarithms."""
  n = len(a)
  joint = {}
  for x, y in zip(a, b):
    joint[(x, y)] = joint.get((x, y), 0) + 1
  pa = {x: list(a).count(x) / n for x in set(a)}
  pb = {y: list(b).count(y) / n for y in set(b)}
  mi = sum(c / n * math.log((c / n) / (pa[x] * pb[y])) for (x, y), c in joint.items())
  ha = -sum(p * math.log(p) for p in pa.values())
  hb = -sum(p * math.log(p) for p in pb.values())
  return 1.0 if ha + hb == 0 else 2 * mi / (ha + hb)


def brute_f1(labels, clusters):
  """Precision and recall over every pair i < j, in float64."""
  tp = same_cluster = same_class = 0.0
  n = len(labels)
  for i in range(n):
    for j in range(i + 1, n):
      a, b = labels[i] == labels[j], clusters[i] == clusters[j]
      tp += a and b
      same_class += a
      same_cluster += b
  precision, recall = tp / same_cluster, tp / same_class
  return 2 * precision * recall / (precision + recall) if tp else 0.0


# --- retrieval metrics ------------------------------------------------------------------
def test_hand_computed_example():
  # Query 0: relevant items at ranks 2, 4, 5 and R = 3.
  #   Recall@1 = 0, Recall@2 = 1; R-Precision = 1/3 (one hit in the first 3);
  #   MAP@R = (1/3) * P(2) = (1/3) * (1/2) = 1/6 (ranks 4 and 5 are beyond R).
  # Query 1: hits at ranks 1, 2 and R = 2: everything 1.
  # Query 2: hits at ranks 3, 4 and R = 2: R-Precision = MAP@R = 0, Recall@4 = 1.
  hits = np.array([[0, 1, 0, 1, 1], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0]], bool)
  relevant = np.array([3, 2, 2], np.int32)
  np.testing.assert_allclose(metrics.recall_at_k(hits, 1), [0, 1, 0])
  np.testing.assert_allclose(metrics.recall_at_k(hits, 2), [1, 1, 0])
  np.testing.assert_allclose(metrics.recall_at_k(hits, 4), [1, 1, 1])
  np.testing.assert_allclose(metrics.r_precision(hits, relevant), [1 / 3, 1, 0], rtol=1e-6)
  np.testing.assert_allclose(metrics.map_at_r(hits, relevant), [1 / 6, 1, 0], rtol=1e-6)
  # MAP@R rewards early hits, R-Precision does not: hits at ranks 1, 3 vs 2, 3 with R = 3.
  early = metrics.map_at_r(np.array([[1, 0, 1], [0, 1, 1]], bool), np.array([3, 3], np.int32))
  np.testing.assert_allclose(early, [(1 + 2 / 3) / 3, (1 / 2 + 2 / 3) / 3], rtol=1e-6)


def test_per_query_metrics_match_brute_force():
  rng = np.random.default_rng(0)
  hits = rng.random((300, 40)) < 0.3
  relevant = rng.integers(0, 41, 300).astype(np.int32)
  for k in (1, 2, 4, 8, 40):
    np.testing.assert_array_equal(metrics.recall_at_k(hits, k), brute_recall(hits, k))
  np.testing.assert_allclose(
      metrics.r_precision(hits, relevant), brute_r_precision(hits, relevant), rtol=1e-6)
  np.testing.assert_allclose(
      metrics.map_at_r(hits, relevant), brute_map_at_r(hits, relevant), rtol=1e-5)


def test_num_relevant_conventions():
  labels = np.array([7, 7, 7, 3, 3, 9])  # classes of 3, 2 and 1 images
  np.testing.assert_array_equal(metrics.num_relevant(labels), [2, 2, 2, 1, 1, 0])
  np.testing.assert_array_equal(
      metrics.num_relevant(labels, include_query_in_r=True), [3, 3, 3, 2, 2, 1])


def test_num_relevant_against_a_separate_gallery():
  queries = np.array([7, 3, 9, 7, 5])
  gallery = np.array([3, 7, 7, 3, 3, 4, 7])  # 4 is in the gallery only, 5 and 9 nowhere
  expected = [sum(int(c == q) for c in gallery) for q in queries]  # [3, 3, 0, 3, 0]
  np.testing.assert_array_equal(metrics.num_relevant(queries, gallery), expected)
  assert metrics.num_relevant(queries, gallery).dtype == np.int32
  with pytest.raises(ValueError, match="include_query_in_r=True.*separate gallery"):
    metrics.num_relevant(queries, gallery, include_query_in_r=True)
  with pytest.raises(ValueError, match=r"gallery_labels must be \[n\]"):
    metrics.num_relevant(queries, gallery[None])


def test_single_image_classes_are_left_out_by_default_and_count_zero_in_original():
  # Queries 0, 1: a class of two, each finds the other first. Query 2: a single image.
  hits = np.array([[1, 0], [1, 0], [0, 0]], bool)
  ours = metrics.retrieval_metrics(hits, np.array([1, 1, 0], np.int32), recall_ks=(1,))
  assert ours == {"recall@1": 1.0, "r_precision": 1.0, "map@r": 1.0, "queries": 2}
  # The original code: R = 2 for queries 0, 1 (the query counts, but is never
  # retrieved: 1/2), R = 1 and a score of 0 for the single image, averaged over all 3.
  original = metrics.retrieval_metrics(
      hits, np.array([2, 2, 1], np.int32), recall_ks=(1,), include_query_in_r=True)
  assert original["queries"] == 3
  assert original["recall@1"] == pytest.approx(2 / 3)
  assert original["r_precision"] == pytest.approx((0.5 + 0.5 + 0) / 3)
  assert original["map@r"] == pytest.approx((0.5 + 0.5 + 0) / 3)


def test_metrics_reject_bad_input():
  hits = np.zeros((3, 4), bool)
  with pytest.raises(ValueError, match="hits must be a boolean"):
    metrics.recall_at_k(hits.astype(np.float32), 1)
  with pytest.raises(ValueError, match="k must be in"):
    metrics.recall_at_k(hits, 5)
  with pytest.raises(ValueError, match="at least max"):
    metrics.map_at_r(hits, np.array([1, 5, 0], np.int32))
  with pytest.raises(ValueError, match="relevant must be integer"):
    metrics.r_precision(hits, np.array([1, 2], np.int32))


# --- clustering -------------------------------------------------------------------------
def test_nmi_hand_computed():
  # labels (0,0,1,1) vs clusters (0,0,0,1): p(y) = (1/2, 1/2), p(c) = (3/4, 1/4);
  # joint (0,0) 1/2, (1,0) 1/4, (1,1) 1/4.
  i = 0.5 * math.log(0.5 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.75)) \
      + 0.25 * math.log(0.25 / (0.5 * 0.25))
  h_y = math.log(2)
  h_c = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
  expected = 2 * i / (h_y + h_c)
  assert expected == pytest.approx(0.34371, abs=1e-5)
  assert metrics.nmi([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(expected, rel=1e-12)
  # Renaming labels or clusters changes nothing; identical partitions give 1.
  assert metrics.nmi([5, 5, 9, 9], [2, 2, 2, 7]) == pytest.approx(expected, rel=1e-12)
  assert metrics.nmi([0, 0, 1, 1, 2], [4, 4, 3, 3, 0]) == pytest.approx(1.0)
  assert metrics.nmi([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(0.0, abs=1e-12)


def test_nmi_matches_brute_force():
  rng = np.random.default_rng(1)
  for _ in range(5):
    a, b = rng.integers(0, 7, 200), rng.integers(0, 11, 200)
    assert metrics.nmi(a, b) == pytest.approx(brute_nmi(a, b), rel=1e-10)


def test_f1_hand_computed():
  # labels (0,0,1,1,1) vs clusters (0,0,0,1,1): same-class pairs 1 + 3 = 4, same-cluster
  # pairs 3 + 1 = 4, both: (0,1) and (3,4) = 2; precision = recall = 1/2.
  assert metrics.f1([0, 0, 1, 1, 1], [0, 0, 0, 1, 1]) == pytest.approx(0.5, rel=1e-12)
  # Renaming changes nothing; identical partitions give 1, including all singletons.
  assert metrics.f1([7, 7, 3, 3, 3], [9, 9, 9, 2, 2]) == pytest.approx(0.5, rel=1e-12)
  assert metrics.f1([0, 0, 1, 1, 2], [4, 4, 3, 3, 0]) == 1.0
  assert metrics.f1([0, 1, 2], [5, 6, 7]) == 1.0
  # One cluster of everything: recall 1, precision = same-class / all pairs = 2 / 6.
  assert metrics.f1([0, 0, 1, 1], [0, 0, 0, 0]) == pytest.approx(2 * (1 / 3) / (1 + 1 / 3))
  # No pair shares both: F1 = 0.
  assert metrics.f1([0, 1, 0, 1], [0, 0, 1, 1]) == 0.0
  with pytest.raises(ValueError, match="labels and clusters must both be"):
    metrics.f1([0, 1, 2], [0, 1])


def test_f1_matches_loop_over_pairs():
  rng = np.random.default_rng(5)
  for classes, clusters, n in [(7, 11, 200), (30, 30, 150), (3, 2, 50)]:
    a, b = rng.integers(0, classes, n), rng.integers(0, clusters, n)
    assert metrics.f1(a, b) == pytest.approx(brute_f1(a, b), rel=1e-12)
  # Close to the labels: high but not 1.
  labels = np.repeat(np.arange(10), 8)
  noisy = np.where(rng.random(80) < 0.1, rng.integers(0, 10, 80), labels)
  assert metrics.f1(labels, noisy) == pytest.approx(brute_f1(labels, noisy), rel=1e-12)
  assert 0.5 < metrics.f1(labels, noisy) < 1.0


def test_kmeans_recovers_separated_clusters_and_assigns_nearest():
  rng = np.random.default_rng(2)
  centres = rng.normal(size=(6, 16)) * 100  # far apart: seeding picks one per cluster
  labels = np.repeat(np.arange(6), 30)
  x = (centres[labels] + rng.normal(size=(180, 16))).astype(np.float32)
  out = metrics.kmeans(x, 6, key=jax.random.key(0), iterations=10, chunk_size=64)
  assert metrics.nmi(labels, np.asarray(out.assignments)) == pytest.approx(1.0)
  # Brute force: assignments are the nearest centroids, inertia their squared distances.
  c = np.asarray(out.centroids, np.float64)
  d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(np.asarray(out.assignments), d2.argmin(1))
  assert float(out.inertia) == pytest.approx(d2.min(1).sum(), rel=1e-4)
  # Each centroid is the mean of its points (converged).
  for j in range(6):
    np.testing.assert_allclose(c[j], x[np.asarray(out.assignments) == j].mean(0), atol=1e-4)


def test_kmeans_seeding_is_deterministic_and_spreads():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(100, 8)).astype(np.float32)
  a = metrics.kmeans(x, 10, key=jax.random.key(4), iterations=0)
  b = metrics.kmeans(x, 10, key=jax.random.key(4), iterations=0)
  np.testing.assert_array_equal(a.centroids, b.centroids)
  # k-means++ picks data points, never the same one twice (a picked point weighs ~0).
  picked = [int(np.flatnonzero((x == c).all(1))[0]) for c in np.asarray(a.centroids)]
  assert len(set(picked)) == 10


def test_kmeans_rejects_bad_k():
  with pytest.raises(ValueError, match="k must be in"):
    metrics.kmeans(np.zeros((5, 2), np.float32), 6, key=jax.random.key(0))
