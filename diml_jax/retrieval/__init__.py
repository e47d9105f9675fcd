"""Multi-scale retrieval: global top-K neighbours, then structural re-ranking of the top K.

DIML (ICCV 2021, Sec. 3.4) ranks the whole gallery by the cosine of
the global vectors, then re-ranks only the first ``K`` items of each list by
``structural + global`` similarity; the items after ``K`` keep their global order. This
package does that for many queries at once, without an ``n x n`` matrix in memory:

- :func:`global_neighbours`: the ``k`` nearest gallery items of every query by cosine,
  query chunk by query chunk, each chunk split over the local devices
  (:mod:`~diml_jax.retrieval.ranking`, with the exact two-stage :func:`column_top_k`);
- :func:`rerank_scores`: ``(structural + global) / 2`` between each query and its
  candidates (:func:`diml_jax.matching.rerank`), likewise chunked and split, and
  :func:`multiscale_order`: the ranked lists after re-ranking their first ``K`` items
  (:mod:`~diml_jax.retrieval.rerank`);
- :func:`process_queries`, :func:`gather_queries`: with several JAX processes (hosts),
  each ranks its share of the queries, and the shares are then put together
  (:mod:`~diml_jax.retrieval.processes`).

:mod:`~diml_jax.retrieval.chunks` holds what the two chunked computations share: the
query chunk loop over a device mesh and the checks of their host arrays.

Scores are computed once for the largest ``K``; every smaller ``K`` only re-sorts.

**Ties** are broken by position, stably: the global ranking orders equal cosines by
gallery index (lower first), and re-ranking orders equal scores by their global rank.
"""
from diml_jax.retrieval.processes import gather_queries, process_queries
from diml_jax.retrieval.ranking import Neighbours, column_top_k, global_neighbours
from diml_jax.retrieval.rerank import multiscale_order, rerank_scores

__all__ = [
    "Neighbours",
    "global_neighbours",
    "rerank_scores",
    "multiscale_order",
    "column_top_k",
    "process_queries",
    "gather_queries",
]
