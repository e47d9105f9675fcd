"""diml_jax.evaluation end to end against a brute-force evaluation written here."""
import csv
import json

import jax
import numpy as np
import pytest

from diml_jax import evaluation, matching, retrieval


def brute_evaluate(g, labels, reorder=None, include_query_in_r=False, recall_ks=(1, 2, 4, 8),
                   is_query=None):
  """Per query: rank all other items by (-cosine, index) in float64 (``reorder`` may
  re-sort the list), then the metrics by their definitions, averaged over the counted
  queries. The original DIML convention: R = class size and the query ranked last.
  With ``is_query``: the marked items are the queries, each ranking the unmarked ones."""
  gn = g / np.linalg.norm(g, axis=1, keepdims=True)
  s = gn.astype(np.float64) @ gn.T.astype(np.float64)
  n = len(labels)
  queries = range(n) if is_query is None else [i for i in range(n) if is_query[i]]
  gallery = range(n) if is_query is None else [j for j in range(n) if not is_query[j]]
  rows = []
  for i in queries:
    ranked = sorted((j for j in gallery if j != i), key=lambda j: (-s[i, j], j))
    if reorder is not None:
      ranked = reorder(i, ranked)
    r = sum(1 for j in gallery if j != i and labels[j] == labels[i])
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


# --------------------------------------------------------------------------------------
# Queries against a separate gallery (In-Shop's protocol).


def sinkhorn_score(x, y, gx, gy, eps=0.05):
  """``structural + global`` of one pair in float64: cross-correlation marginals (uniform
  where no part correlates positively), the entropic flow of cost ``1 - S`` by plain
  kernel Sinkhorn run to convergence."""
  unit = lambda v: np.asarray(v, np.float64) / np.linalg.norm(v, axis=-1, keepdims=True)
  x, y, gx, gy = unit(x), unit(y), unit(gx), unit(gy)
  s = x @ y.T

  def marginal(correlations):
    w = np.maximum(correlations, 0.0)
    return w / w.sum() if w.sum() > 1e-6 else np.full(w.shape, 1.0 / w.size)

  mu, nu = marginal(x @ gy), marginal(y @ gx)
  kernel = np.exp(-(1.0 - s) / eps)
  v = np.ones_like(nu)
  for _ in range(20000):
    u = mu / (kernel @ v)
    v = nu / (kernel.T @ u)
    if np.abs(u * (kernel @ v) - mu).sum() < 1e-12:
      break
  else:
    raise AssertionError("the float64 Sinkhorn did not converge")
  flow = u[:, None] * kernel * v[None, :]
  return float(np.sum(flow * s) + gx @ gy)


def _query_gallery_split(seed, queries=23, gallery=41, r=4, c=8):
  """Queries and gallery interleaved; class 8 has queries only (R = 0), class 9 is in the
  gallery only (a distractor)."""
  rng = np.random.default_rng(seed)
  labels = np.concatenate([rng.integers(0, 8, queries - 2), [8, 8],
                           rng.integers(0, 8, gallery - 4), [9] * 4])
  is_query = np.arange(queries + gallery) < queries
  order = rng.permutation(queries + gallery)
  labels, is_query = labels[order], is_query[order]
  proto = rng.normal(size=(10, r, c))
  x = (np.stack([proto[y][rng.permutation(r)] for y in labels])
       + 1.2 * rng.normal(size=(len(labels), r, c))).astype(np.float32)
  g = (x.mean(1) + 0.8 * rng.normal(size=(len(labels), c))).astype(np.float32)
  return evaluation.Embeddings(g, x, labels, is_query=is_query)


# 300 iterations, more than the float32 flows need to converge (a fixed count compiles
# faster than the stopping rule's loop).
CONVERGED = matching.SinkhornOptions(threshold=None, max_iterations=300)
# Chunks of one query a device, whatever the number of queries: the tests below share
# their compilations.
ONE_PER_DEVICE = dict(chunk_per_device=1, rerank_chunk_per_device=1)


def test_query_gallery_metrics_equal_brute_force():
  """Each query ranked against the gallery only (no query, itself included, in any list),
  R = the gallery's items of its class, R = 0 queries left out; the first K re-ranked by
  a float64 Sinkhorn's structural + global; In-Shop's cut-offs, some beyond the gallery."""
  emb = _query_gallery_split(7)
  g, x, labels, _, is_query = emb
  recall_ks = (1, 10, 20, 30, 40, 50)
  res = evaluation.evaluate(emb, ks=(0, 5, 100), recall_ks=recall_ks, with_nmi=False,
                            progress=False, options=CONVERGED, **ONE_PER_DEVICE)
  gaps = []

  def reorder(k):
    def fn(i, ranked):
      score = {j: sinkhorn_score(x[i], x[j], g[i], g[j]) for j in ranked[:k]}
      head = sorted(ranked[:k], key=lambda j: -score[j])
      # Neighbours in the order, one of the query's class and one not: their order counts.
      gaps.extend(score[a] - score[b] for a, b in zip(head, head[1:])
                  if (labels[a] == labels[i]) != (labels[b] == labels[i]))
      return head + ranked[k:]
    return fn

  expected = {"0": None, "5": reorder(5), "100": reorder(41)}  # 100: the whole gallery
  for k, fn in expected.items():
    ref = brute_evaluate(g, labels, fn, recall_ks=recall_ks, is_query=is_query)
    assert_metrics_equal(res["metrics"][k], ref)
  assert min(gaps) > 1e-4  # no near-tie of a hit and a miss that float32 could swap
  assert res["metrics"]["0"]["queries"] == 21  # the two class-8 queries are left out
  assert res["metrics"]["5"] != res["metrics"]["0"] != res["metrics"]["100"]
  assert (res["items"], res["gallery"], res["classes"]) == (64, 41, 10)
  assert "queries 21 of 23 against a gallery of 41, 10 classes" in evaluation.format_table(res)


def test_query_gallery_split_across_processes(monkeypatch):
  """Two processes, each ranking its share of the queries (simulated on one: the
  exchange is replaced by putting the two shares together), give the results of one."""
  emb = _query_gallery_split(8)  # 23 queries: the last share is padded
  kwargs = dict(ks=(0, 6, 100), with_nmi=False, progress=False, options=CONVERGED,
                **ONE_PER_DEVICE)
  alone = evaluation.evaluate(emb, across_processes=False, **kwargs)
  shares = {}

  class FirstShareDone(Exception):
    pass

  def exchange(local, q):
    shares[jax.process_index()] = local
    if len(shares) < 2:
      raise FirstShareDone
    return jax.tree.map(lambda *a: np.concatenate(a)[:q], shares[0], shares[1])

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(retrieval, "gather_queries", exchange)
  for p in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    try:
      split = evaluation.evaluate(emb, **kwargs)
    except FirstShareDone:
      pass
  assert [len(shares[p][0]) for p in (0, 1)] == [12, 12]
  assert split["metrics"] == alone["metrics"]


def test_query_gallery_cache_nmi_and_bad_input(tmp_path):
  """is_query survives the cache; NMI and F1 cluster queries and gallery together (as
  without is_query); R with the query counted has no meaning against a gallery."""
  emb = _query_gallery_split(9)
  evaluation.save_embeddings(str(tmp_path / "emb.npz"), emb)
  loaded = evaluation.load_embeddings(str(tmp_path / "emb.npz"))
  np.testing.assert_array_equal(loaded.is_query, emb.is_query)
  separate = evaluation.evaluate(loaded, ks=(0,), progress=False, kmeans_iterations=3)
  together = evaluation.evaluate(loaded._replace(is_query=None), ks=(0,), progress=False,
                                 kmeans_iterations=3)
  assert (separate["nmi"], separate["f1"]) == (together["nmi"], together["f1"])
  assert separate["metrics"] != together["metrics"] and together["gallery"] is None
  with pytest.raises(ValueError, match="include_query_in_r=True.*separate gallery"):
    evaluation.evaluate(emb, ks=(0,), include_query_in_r=True, progress=False)
  for bad in (emb.is_query.astype(int), emb.is_query[1:], np.ones_like(emb.is_query)):
    with pytest.raises(ValueError, match="is_query must be bool"):
      evaluation.evaluate(emb._replace(is_query=bad), ks=(0,), progress=False)
