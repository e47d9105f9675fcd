"""Why test-time DIML changes a ranking, or not: how the structural score relates to the
global one on the candidates it re-ranks, and how often re-ranking changes the top 1.

Re-ranking orders a query's first ``K`` global neighbours by ``structural + global``
(DIML, ICCV 2021, Sec. 3.4). If the structural similarity orders the candidates as the
global cosine does, re-ranking changes nothing; :func:`rerank_agreement` measures how
far it does, on the same candidates and with the same matching as the evaluation.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from diml_jax import evaluation, matching, retrieval

__all__ = ["rerank_agreement"]


def rerank_agreement(embeddings: evaluation.Embeddings, *, k: int,
                     marginals: str = "cross", mass: float = 1.0,
                     options: matching.SinkhornOptions | None = None) -> dict[str, float]:
  """Structural-vs-global agreement on each query's top ``k`` and its effect on the top 1.

  Every item is a query against the others, as in :func:`diml_jax.evaluation.evaluate`.

  Args:
    embeddings: a split's :class:`~diml_jax.evaluation.Embeddings` (with local features).
    k: re-ranking depth ``K`` (at most ``n - 1``).
    marginals: ``"cross"`` or ``"uniform"``.
    mass: ``p`` of partial similarity.
    options: the solver's :class:`~diml_jax.matching.SinkhornOptions`.

  Returns:
    A JSON-ready dict: ``k`` (the depth used); ``pearson``, the correlation of the
    structural similarity and the global cosine over all ``n * k`` (query, candidate)
    pairs; ``spearman``, the mean over queries of their rank correlation within the
    query's ``k`` candidates (what re-ranking reads); ``top1_changed``, the fraction of
    queries whose first result differs after re-ranking; ``top1_fixed`` / ``top1_broken``,
    the fractions where it went from another class to the query's / the reverse
    (``fixed - broken`` is the change of Recall@1, where every query has another item of
    its class; the evaluation leaves out those that have none).
  """
  g, x, labels = (np.asarray(a) for a in embeddings[:3])
  if x is None or x.ndim != 3:
    raise ValueError("rerank_agreement needs local features [n, r, c]; got none.")
  n = len(labels)
  k = min(int(k), n - 1)
  if k < 2:
    raise ValueError(f"k must be >= 2 (candidates to order); got {k} with {n} items.")
  if marginals not in ("cross", "uniform"):
    raise ValueError(f"marginals must be 'cross' or 'uniform'; got {marginals!r}.")
  queries = np.arange(n)
  nearest = retrieval.global_neighbours(g, g, k=k, self_index=queries)
  # (structural + global) / 2 on the cosine's scale (diml_jax.matching.rerank).
  score = retrieval.rerank_scores(x, g, x, g, nearest.indices, marginals=marginals,
                                  mass=mass, options=options)
  structural = 2.0 * score - nearest.similarities
  per_query = [stats.spearmanr(s, c).statistic
               for s, c in zip(structural, nearest.similarities)]
  reranked = retrieval.multiscale_order(nearest.indices, score, k=k)
  before = labels[nearest.indices[:, 0]] == labels
  after = labels[reranked[:, 0]] == labels
  return {
      "k": k,
      "pearson": float(np.corrcoef(structural.ravel(), nearest.similarities.ravel())[0, 1]),
      "spearman": float(np.nanmean(per_query)),
      "top1_changed": float(np.mean(reranked[:, 0] != nearest.indices[:, 0])),
      "top1_fixed": float(np.mean(after & ~before)),
      "top1_broken": float(np.mean(before & ~after)),
  }
