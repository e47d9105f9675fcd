"""diml_jax.evaluation end to end against a brute-force evaluation written here."""
import csv
import json

import numpy as np
import pytest

from diml_jax import evaluation, matching


def brute_evaluate(g, labels, reorder=None, include_query_in_r=False, recall_ks=(1, 2, 4, 8)):
  """Per query: rank all other items by (-cosine, index) in float64 (``reorder`` may
  re-sort the list), then the metrics by their definitions, averaged over the counted
  queries. The original DIML convention: R = class size and the query ranked last."""
  gn = g / np.linalg.norm(g, axis=1, keepdims=True)
  s = gn.astype(np.float64) @ gn.T.astype(np.float64)
  n = len(labels)
  rows = []
  for i in range(n):
    ranked = sorted((j for j in range(n) if j != i), key=lambda j: (-s[i, j], j))
    if reorder is not None:
      ranked = reorder(i, ranked)
    r = int(np.sum(labels == labels[i])) - 1
    if include_query_in_r:
      ranked, r = ranked + [i], r + 1
    elif r == 0:
      continue  # nothing to retrieve: left out
    rel = [labels[j] == labels[i] for j in ranked]
    ap, found = 0.0, 0
    for pos in range(r):
      if rel[pos]:
        found += 1
        ap += found / (pos + 1)
    rows.append([float(any(rel[:k])) for k in recall_ks] + [sum(rel[:r]) / r, ap / r])
  mean = np.mean(rows, axis=0)
  out = {f"recall@{k}": v for k, v in zip(recall_ks, mean)}
  out.update(r_precision=mean[-2], **{"map@r": mean[-1]}, queries=len(rows))
  return out


def assert_metrics_equal(ours, reference):
  assert ours["queries"] == reference["queries"]
  for name, value in reference.items():
    assert ours[name] == pytest.approx(value, abs=1e-6), name  # float32 per query


def _tied_split(seed, n=90, d=16, classes=25):
  """+-1 global vectors (exact, heavily tied cosines), classes of 1 to ~8 images."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n)
  g = rng.choice([-1.0, 1.0], size=(n, d)).astype(np.float32)
  g[1::2] = g[labels[1::2]]  # every other item copies a vector: exact duplicates
  assert (np.bincount(labels) == 1).any()  # single-image classes are covered
  x = np.repeat(g[:, None, :], 4, axis=1)
  return evaluation.Embeddings(g, x, labels)


@pytest.mark.parametrize("include_query_in_r", [False, True])
def test_global_metrics_equal_brute_force_with_ties_and_single_images(include_query_in_r):
  emb = _tied_split(0)
  res = evaluation.evaluate(emb, ks=(0,), include_query_in_r=include_query_in_r,
                            with_nmi=False, progress=False, chunk_per_device=4)
  ref = brute_evaluate(emb.global_, emb.labels, include_query_in_r=include_query_in_r)
  assert_metrics_equal(res["metrics"]["0"], ref)


def test_reranked_metrics_equal_brute_force():
  rng = np.random.default_rng(5)
  n, r, c = 40, 9, 16
  labels = rng.integers(0, 10, n)
  proto = rng.normal(size=(10, r, c))
  x = (np.stack([proto[y][rng.permutation(r)] for y in labels])
       + 1.5 * rng.normal(size=(n, r, c))).astype(np.float32)
  g = (x.mean(1) + rng.normal(size=(n, c))).astype(np.float32)
  gn = g / np.linalg.norm(g, axis=1, keepdims=True)
  res = evaluation.evaluate(evaluation.Embeddings(g, x, labels), ks=(0, 6, 60),
                            with_nmi=False, progress=False, rerank_chunk_per_device=2)

  def reorder(k):
    def fn(i, ranked):
      total = {j: float(matching.match(x[i], x[j], g[i], g[j]).similarity) + float(gn[i] @ gn[j])
               for j in ranked[:k]}
      return sorted(ranked[:k], key=lambda j: -total[j]) + ranked[k:]
    return fn

  assert_metrics_equal(res["metrics"]["0"], brute_evaluate(g, labels))
  assert_metrics_equal(res["metrics"]["6"], brute_evaluate(g, labels, reorder(6)))
  # K beyond the gallery re-ranks all n - 1 others.
  assert_metrics_equal(res["metrics"]["60"], brute_evaluate(g, labels, reorder(n - 1)))
  assert res["metrics"]["6"] != res["metrics"]["0"]


def test_gallery_smaller_than_the_cut_offs():
  # Items 0, 1 share a class, item 2 is alone (left out): Recall@8 reads the whole list.
  g = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]], np.float32)
  emb = evaluation.Embeddings(g, g[:, None, :], np.array([0, 0, 1]))
  res = evaluation.evaluate(emb, ks=(0, 5), with_nmi=False, progress=False)
  for k in ("0", "5"):
    assert res["metrics"][k]["queries"] == 2
    assert res["metrics"][k]["recall@8"] == 1.0
    assert res["metrics"][k]["recall@1"] == 0.0  # item 2 is nearer to both
  assert res["metrics"]["0"]["r_precision"] == 0.0


def test_results_files_table_and_cache(tmp_path):
  emb = _tied_split(1, n=60)
  path = tmp_path / "emb.npz"
  evaluation.save_embeddings(str(path), emb)
  loaded = evaluation.load_embeddings(str(path))
  for a, b in zip(emb, loaded):
    np.testing.assert_array_equal(a, b)
  res = evaluation.evaluate(loaded, ks=(0, 3), progress=False, kmeans_iterations=3)
  assert 0.0 <= res["nmi"] <= 1.0 and 0.0 <= res["f1"] <= 1.0
  json_path, csv_path = evaluation.write_results(res, str(tmp_path / "run"))
  with open(json_path) as f:
    assert json.load(f)["metrics"] == res["metrics"]
  with open(csv_path) as f:
    rows = list(csv.DictReader(f))
  assert [row["K"] for row in rows] == ["0", "3"]
  assert float(rows[1]["map@r"]) == pytest.approx(res["metrics"]["3"]["map@r"])
  assert float(rows[0]["f1"]) == pytest.approx(res["f1"])
  assert f"F1 {100 * res['f1']:.2f}" in evaluation.format_table(res)
  table = evaluation.format_table(res)
  assert f"{100 * res['metrics']['3']['recall@1']:.2f}" in table.splitlines()[2]
  assert "NMI" in table


def test_evaluate_rejects_bad_embeddings(tmp_path):
  g = np.zeros((5, 8), np.float32)
  with pytest.raises(ValueError, match="global_ \\[n, c\\], local \\[n, r, c\\]"):
    evaluation.evaluate(evaluation.Embeddings(g, np.zeros((5, 4, 6), np.float32), np.zeros(5, int)))
  np.savez(tmp_path / "other.npz", a=g)
  with pytest.raises(ValueError, match="not an embeddings cache"):
    evaluation.load_embeddings(str(tmp_path / "other.npz"))


def test_part_weights_and_partial_mass_rerank_as_partial_matching(tmp_path):
  """marginals="weights" with mass p: the first K re-sorted by match(mass=p)'s similarity
  (with the embeddings' part weights as marginals) + global, pair by pair; the weights
  survive the cache."""
  rng = np.random.default_rng(6)
  n, r, c, p, k = 24, 4, 8, 0.5, 5
  labels = rng.integers(0, 6, n)
  proto = rng.normal(size=(6, r, c))
  x = (proto[labels] + 1.5 * rng.normal(size=(n, r, c))).astype(np.float32)
  g = (x.mean(1) + rng.normal(size=(n, c))).astype(np.float32)
  w = rng.uniform(size=(n, r)).astype(np.float32)
  gn = g / np.linalg.norm(g, axis=1, keepdims=True)
  evaluation.save_embeddings(str(tmp_path / "emb.npz"), evaluation.Embeddings(g, x, labels, w))
  emb = evaluation.load_embeddings(str(tmp_path / "emb.npz"))
  np.testing.assert_array_equal(emb.weights, w)
  res = evaluation.evaluate(emb, ks=(0, k), marginals="weights", mass=p, with_nmi=False,
                            progress=False)

  def reorder(i, ranked):
    total = {j: float(matching.match(x[i], x[j], g[i], g[j], mass=p,
                                     marginals=(w[i], w[j])).similarity)
             + float(gn[i] @ gn[j]) for j in ranked[:k]}
    return sorted(ranked[:k], key=lambda j: -total[j]) + ranked[k:]

  assert_metrics_equal(res["metrics"][str(k)], brute_evaluate(g, labels, reorder))
  assert res["settings"]["marginals"] == "weights" and res["settings"]["mass"] == p
  with pytest.raises(ValueError, match="needs Embeddings.weights"):
    evaluation.evaluate(evaluation.Embeddings(g, x, labels), ks=(0, k), marginals="weights")


def test_embeddings_without_parts_rank_globally_only(tmp_path):
  """A model without parts (DGML) stores no local features; re-ranking is refused."""
  emb = _tied_split(2, n=30)
  flat = evaluation.Embeddings(emb.global_, None, emb.labels)
  evaluation.save_embeddings(str(tmp_path / "emb.npz"), flat)
  loaded = evaluation.load_embeddings(str(tmp_path / "emb.npz"))
  assert loaded.local is None and loaded.weights is None
  res = evaluation.evaluate(loaded, ks=(0,), with_nmi=False, progress=False)
  assert res["metrics"]["0"] == evaluation.evaluate(emb, ks=(0,), with_nmi=False,
                                                    progress=False)["metrics"]["0"]
  with pytest.raises(ValueError, match=r"needs local features.*ks=\(0,\)"):
    evaluation.evaluate(loaded, ks=(0, 5), progress=False)
