"""Evaluation of embeddings: multi-scale retrieval metrics, NMI, result files, cache.

The test split's embeddings (global vectors, local feature maps, labels) are the only
input, so a model is embedded once and every re-ranking setting is evaluated from the
cache (:func:`save_embeddings`, :func:`load_embeddings`). Two protocols:

- each item a query against all the others (the query set is the gallery, the query
  excluded from its own list): CUB-200-2011, Cars196, SOP;
- queries against a separate gallery, when ``Embeddings.is_query`` marks the queries
  (In-Shop Clothes Retrieval: 14,218 queries, 12,612 gallery images).

  results = evaluate(Embeddings(global_=g, local=x, labels=y), ks=(0, 10, 100))
  print(format_table(results)); write_results(results, workdir)

References:
  Zhao, Rao, Wang, Lu, Zhou. Towards Interpretable Deep Metric Learning with Structural
  Matching. ICCV 2021, Sec. 3.4 (multi-scale matching) and Sec. 4.
  Musgrave, Belongie, Lim. A Metric Learning Reality Check. ECCV 2020.
  Liu, Luo, Qiu, Wang, Tang. DeepFashion. CVPR 2016 (In-Shop's query/gallery protocol).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from diml_jax import matching, metrics, retrieval

__all__ = [
    "DEFAULT_KS",
    "Embeddings",
    "evaluate",
    "format_table",
    "write_results",
    "save_embeddings",
    "load_embeddings",
]

# Re-ranking depths of the papers; 0 is the global ranking alone.
DEFAULT_KS = (0, 5, 10, 50, 100, 500, 1000)


class Embeddings(NamedTuple):
  """A split's embeddings.

  Attributes:
    global_: global vectors ``[n, c]`` (the model's pooled embedding).
    local: local feature vectors ``[n, r, c]`` (the ``h * w`` cells of the map), or
      ``None`` for a model without parts (DGML's groups): global ranking only.
    labels: class labels ``[n]`` int.
    weights: optional part weights ``[n, r]``, the marginals of re-ranking with
      ``marginals="weights"`` (a ViT's truncated attention rollout pooled to the grid).
    is_query: optional ``bool [n]`` of a query/gallery split (In-Shop,
      ``Dataset.is_query``): the marked items are the queries, ranked against the
      others, the gallery, only. ``None``: each item is a query against all the others.
      With separate query and gallery arrays, concatenate them and mark the queries.
  """

  global_: np.ndarray
  local: np.ndarray | None
  labels: np.ndarray
  weights: np.ndarray | None = None
  is_query: np.ndarray | None = None


def _check(embeddings: Embeddings) -> Embeddings:
  g, y = np.asarray(embeddings.global_), np.asarray(embeddings.labels)
  x = None if embeddings.local is None else np.asarray(embeddings.local)
  w = None if embeddings.weights is None else np.asarray(embeddings.weights)
  if g.ndim != 2 or y.shape != g.shape[:1] or (
      x is not None and (x.ndim != 3 or x.shape[::2] != g.shape)):
    raise ValueError(
        f"Embeddings need global_ [n, c], local [n, r, c] (or None) and labels [n]; got "
        f"{g.shape}, {None if x is None else x.shape} and {y.shape}."
    )
  if not all(np.issubdtype(a.dtype, np.floating) for a in (g, x, w) if a is not None):
    raise ValueError(f"global_, local and weights must be floating point; got {g.dtype}, "
                     f"{None if x is None else x.dtype}, {None if w is None else w.dtype}.")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels must be integers; got {y.dtype}.")
  if w is not None and (x is None or w.shape != x.shape[:2]):
    raise ValueError(f"weights must be part weights [n, r] of the local features "
                     f"{None if x is None else x.shape}; got {w.shape}.")
  if g.shape[0] < 2:
    raise ValueError(f"need at least 2 items to evaluate; got {g.shape[0]}.")
  q = None if embeddings.is_query is None else np.asarray(embeddings.is_query)
  if q is not None and (q.dtype != bool or q.shape != y.shape or q.all() or not q.any()):
    raise ValueError(f"is_query must be bool [n={y.shape[0]}] marking at least one query "
                     f"and one gallery item; got {q.dtype} {q.shape} with "
                     f"{int(q.sum()) if q.dtype == bool else '?'} queries.")
  return Embeddings(g, x, y, w, q)


def evaluate(
    embeddings: Embeddings,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    recall_ks: Sequence[int] = (1, 2, 4, 8),
    include_query_in_r: bool = False,
    marginals: str = "cross",
    mass: float = 1.0,
    with_nmi: bool = True,
    kmeans_iterations: int = 20,
    seed: int = 0,
    chunk_per_device: int | None = None,
    rerank_chunk_per_device: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    across_processes: bool = True,
    progress: bool = True,
    options: matching.SinkhornOptions | None = None,
) -> dict[str, Any]:
  """Multi-scale retrieval metrics of a split: each item against the others, or queries
  against a separate gallery.

  Without ``embeddings.is_query`` every item is a query against all the others, itself
  excluded from its list. With it (a query/gallery benchmark, In-Shop) the marked items
  are the queries and the others the gallery: each query is ranked against the gallery
  only, never against other queries, and nothing is excluded from its list.

  1. Global ranking: the nearest gallery items by cosine of the global vectors, as many
     as the metrics and the largest re-ranking depth need
     (:func:`retrieval.global_neighbours`).
  2. Structural scores ``(structural + global) / 2`` of each query with its first
     ``max(ks)`` neighbours, computed once (:func:`retrieval.rerank_scores`).
  3. For each ``K`` in ``ks``: the first ``K`` re-sorted by that score, the rest in
     global order (:func:`retrieval.multiscale_order`); Recall@k, R-Precision, MAP@R
     (:func:`metrics.retrieval_metrics`). ``K = 0`` is the global ranking; a ``K``
     beyond the list (``n - 1`` others, or the gallery's size) re-ranks the whole list.
  4. NMI and pair-counting F1 of k-means (k = number of classes, k-means++ seeded from
     ``seed``) on the L2-normalised global vectors of every item: with a separate
     gallery, queries and gallery clustered together, as the DML baselines' code
     reports In-Shop (Roth et al., Deep-Metric-Learning-Baselines, ``auxiliaries.py``,
     ``eval_metrics_query_and_gallery_dataset``).

  With several JAX processes (hosts), each ranks and re-ranks its share of the queries
  on its own devices (:func:`retrieval.process_queries`), and the ranked lists are then
  exchanged, so that every process returns the same results, exactly those of one
  process with all the devices. Every process must then call this function with the same
  embeddings.

  Metric conventions (README, Evaluation): the query is never in its own list; by
  default ``R`` = class size - 1 (with a separate gallery: the gallery's items of the
  query's class) and queries with ``R = 0`` are left out of the retrieval averages;
  ``include_query_in_r=True`` is the original DIML code's ``R`` = class size, averaged
  over all queries, which has no meaning with a separate gallery (``ValueError``). Ties
  are broken by gallery index (global ranking) and by global rank (re-ranking).

  Args:
    embeddings: the split's :class:`Embeddings` (with ``is_query`` for a separate
      gallery).
    ks: re-ranking depths ``K`` (0 = global only).
    recall_ks: cut-offs of Recall@k.
    include_query_in_r: the original DIML code's ``R`` (see above).
    marginals: a kind of :data:`diml_jax.matching.MARGINAL_KINDS` (default ``"cross"``,
      as the published evaluation), or ``"weights"`` (the embeddings' part weights) for
      the structural matching.
    mass: ``p`` of partial similarity in re-ranking (1: ordinary matching); the
      structural term is on the scale of :class:`diml_jax.matching.Matching`.
    with_nmi: compute NMI and F1 (k-means is the slowest step on a CPU for many classes).
    kmeans_iterations: Lloyd iterations of k-means.
    seed: seed of the k-means++ seeding.
    chunk_per_device: queries per device and step of the global ranking (default
      by backend, see :func:`retrieval.global_neighbours`).
    rerank_chunk_per_device: likewise for the structural re-ranking
      (:func:`retrieval.rerank_scores`).
    devices: devices to split each chunk over; default all local devices.
    across_processes: with several processes, split the queries between them (above);
      ``False``: this process ranks every query alone (e.g. when only one process
      evaluates).
    progress: show progress bars.
    options: the solver's :class:`diml_jax.matching.SinkhornOptions` for re-ranking.

  Returns:
    A JSON-ready dict: ``"metrics"`` maps each ``K`` (as a string) to
    ``{"recall@1": ..., "r_precision": ..., "map@r": ..., "queries": ...}`` (fractions in
    [0, 1]; ``"queries"`` counted); ``"nmi"`` and ``"f1"`` (or ``None``); ``"items"``
    (queries and gallery), ``"gallery"`` (the separate gallery's size, ``None`` when each
    item is a query against the others), ``"classes"``, ``"seconds"`` per stage, and
    ``"settings"``.
  """
  g, x, labels, weights, is_query = _check(embeddings)
  ks = sorted({int(k) for k in ks})
  if not ks or ks[0] < 0:
    raise ValueError(f"ks must be non-empty and >= 0; got {ks}.")
  if x is None and ks[-1] > 0:
    raise ValueError(f"re-ranking (ks={ks}) needs local features, and these embeddings "
                     f"have none: evaluate with ks=(0,).")
  if marginals == "weights" and weights is None:
    raise ValueError("marginals='weights' needs Embeddings.weights (part weights [n, r]).")
  if not recall_ks or min(recall_ks) < 1:
    raise ValueError(f"recall_ks must be non-empty and >= 1; got {recall_ks}.")
  n, classes = g.shape[0], len(np.unique(labels))
  # Item indices of the queries and of the gallery; lists hold item indices throughout.
  separate = is_query is not None
  queries = np.flatnonzero(is_query) if separate else np.arange(n)
  gallery = np.flatnonzero(~is_query) if separate else np.arange(n)
  relevant = metrics.num_relevant(labels[queries], labels[gallery] if separate else None,
                                  include_query_in_r=include_query_in_r)
  # Ranked positions the metrics read, and those re-ranking needs: at most the list's
  # length (the query is never retrieved from its own split).
  available = gallery.size if separate else n - 1
  depth = min(max(max(recall_ks), int(relevant.max())), available)
  kmax = min(ks[-1], available)
  seconds = {}

  # This process's queries (all of them unless split across processes).
  mine = queries[retrieval.process_queries(queries.size) if across_processes
                 else np.arange(queries.size)]
  t = time.perf_counter()
  neighbours = retrieval.global_neighbours(
      g[mine], g[gallery], k=max(depth, kmax), self_index=None if separate else mine,
      chunk_per_device=chunk_per_device, devices=devices, progress=progress,
  )
  indices = gallery[neighbours.indices].astype(np.int32)
  seconds["global_ranking"] = time.perf_counter() - t

  t = time.perf_counter()
  scores = np.zeros((len(mine), 0), np.float32) if kmax == 0 else retrieval.rerank_scores(
      x[mine], g[mine], x, g, indices[:, :kmax],
      marginals=(weights[mine], weights) if marginals == "weights" else marginals,
      mass=mass, chunk_per_device=rerank_chunk_per_device, devices=devices,
      progress=progress, options=options,
  )
  seconds["structural_reranking"] = time.perf_counter() - t
  if across_processes:
    indices, scores = retrieval.gather_queries((indices, scores), queries.size)

  t = time.perf_counter()
  results = {}
  for k in ks:
    order = retrieval.multiscale_order(indices, scores, k=min(k, kmax))
    hits = labels[order[:, :depth]] == labels[queries, None]
    if depth < relevant.max():  # R = n: the original code finds the query itself last
      hits = np.concatenate([hits, np.ones((queries.size, 1), bool)], axis=1)
    # A cut-off beyond the list sees the whole list: the positions past it are empty.
    hits = np.pad(hits, ((0, 0), (0, max(0, max(recall_ks) - hits.shape[1]))))
    results[str(k)] = metrics.retrieval_metrics(
        hits, relevant, recall_ks=recall_ks, include_query_in_r=include_query_in_r
    )
  seconds["metrics"] = time.perf_counter() - t

  nmi = f1 = None
  if with_nmi:  # every item, queries and gallery alike
    t = time.perf_counter()
    unit = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    clusters = metrics.kmeans(
        unit, classes, key=jax.random.key(seed), iterations=kmeans_iterations
    )
    nmi = metrics.nmi(labels, np.asarray(clusters.assignments))
    f1 = metrics.f1(labels, np.asarray(clusters.assignments))
    seconds["nmi"] = time.perf_counter() - t

  return {
      "metrics": results,
      "nmi": nmi,
      "f1": f1,
      "items": n,
      "gallery": int(gallery.size) if separate else None,
      "classes": classes,
      "seconds": seconds,
      "settings": {
          "ks": ks, "recall_ks": list(recall_ks), "include_query_in_r": include_query_in_r,
          "marginals": marginals,
          "mass": mass, "with_nmi": with_nmi, "kmeans_iterations": kmeans_iterations,
          "seed": seed, "matching_options": dataclasses.asdict(matching.check_options(options)),
      },
  }


def _columns(results: dict[str, Any]) -> list[str]:
  return list(next(iter(results["metrics"].values())))


def format_table(results: dict[str, Any]) -> str:
  """The metrics of :func:`evaluate` as a text table, one row per ``K``, in percent."""
  cols = [c for c in _columns(results) if c != "queries"]
  lines = ["K      " + " ".join(f"{c:>11}" for c in cols)]
  for k, row in results["metrics"].items():
    name = "global" if k == "0" else k
    lines.append(f"{name:<6} " + " ".join(f"{100 * row[c]:>11.2f}" for c in cols))
  counted = next(iter(results["metrics"].values()))["queries"]
  if results["gallery"] is None:
    tail = [f"queries {counted} of {results['items']} items, {results['classes']} classes"]
  else:
    tail = [f"queries {counted} of {results['items'] - results['gallery']} against a "
            f"gallery of {results['gallery']}, {results['classes']} classes"]
  if results["nmi"] is not None:
    tail.append(f"NMI {100 * results['nmi']:.2f}, F1 {100 * results['f1']:.2f}")
  return "\n".join(lines + ["; ".join(tail)])


def write_results(results: dict[str, Any], workdir: str) -> tuple[str, str]:
  """Writes ``retrieval_metrics.json`` (everything) and ``.csv`` (one row per ``K``).

  Args:
    results: the dict of :func:`evaluate`.
    workdir: directory, created if missing.

  Returns:
    The paths of the JSON and the CSV file.
  """
  os.makedirs(workdir, exist_ok=True)
  json_path = os.path.join(workdir, "retrieval_metrics.json")
  csv_path = os.path.join(workdir, "retrieval_metrics.csv")
  with open(json_path, "w") as f:
    json.dump(results, f, indent=2)
  cols = _columns(results)
  with open(csv_path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["K", *cols, "nmi", "f1"])
    clustering = ["" if results[c] is None else results[c] for c in ("nmi", "f1")]
    for k, row in results["metrics"].items():
      w.writerow([k, *(row[c] for c in cols), *clustering])
  return json_path, csv_path


def save_embeddings(path: str, embeddings: Embeddings) -> None:
  """Saves :class:`Embeddings` to an ``.npz`` file (uncompressed: fast to reload).

  The file appears complete or not at all (written beside it, then renamed), so a run
  killed while saving never leaves a truncated cache for the next one to read.
  """
  arrays = {k: v for k, v in _check(embeddings)._asdict().items() if v is not None}
  partial = f"{path}.partial"
  with open(partial, "wb") as f:
    np.savez(f, **arrays)
  os.replace(partial, path)


def load_embeddings(path: str) -> Embeddings:
  """Loads :class:`Embeddings` saved by :func:`save_embeddings`."""
  with np.load(path) as f:
    missing = {"global_", "labels"} - set(f.files)
    if missing:
      raise ValueError(f"{path} is not an embeddings cache: missing {sorted(missing)}.")
    get = lambda name: f[name] if name in f.files else None
    return _check(Embeddings(f["global_"], get("local"), f["labels"], get("weights"),
                             get("is_query")))
