"""A self-contained HTML report of a retrieval run: global top-k next to DIML's re-ranking.

For each sampled query the report shows the query, its top ``k`` by global cosine and its
top ``k`` after DIML's structural re-ranking (ICCV 2021, Sec. 3.4), each result framed green
(same class as the query) or red (another class). Every result links to the flow figure of
its pair (:func:`~diml_jax.explain.figures.flow_figure`). All of it is one HTML file:
images are ``data:`` URIs, and the figures are sections of the same page shown by the CSS
``:target`` rule when their link is followed, so it works offline, without JavaScript,
from wherever the file is copied.

Evaluation code fills a :class:`RetrievalRun` with arrays it already has::

  run = RetrievalRun(
      queries=np.array([3, 17, 42]),              # data-set indices of the queries shown
      global_neighbours=global_top[[3, 17, 42], :5],   # [q, k], query itself excluded
      reranked_neighbours=diml_top[[3, 17, 42], :5],   # [q, k]
      labels=labels,                              # [n]
      images=lambda i: dataset.image(i),          # uint8 [h, w, 3], or an [n, h, w, 3] array
      match_pair=lambda i, j: matching.match(local[i], local[j], emb[i], emb[j]),
      embeddings=emb,                             # [n, c], for the global cosines
  )
  write_report(run, "workdir/report.html")
"""
from __future__ import annotations

import base64
import html
import io
import pathlib
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
from PIL import Image

from diml_jax.explain.figures import Grid, check_image, figure_bytes, flow_figure
from diml_jax.matching import Matching

__all__ = ["RetrievalRun", "report_html", "write_report"]


class RetrievalRun(NamedTuple):
  """What the report shows. Indices are data-set indices into ``labels`` and ``images``.

  Queries and results index the same set, as in the papers' protocol (a query's gallery
  is the rest of the test set). With a separate gallery, index the concatenation
  ``queries + gallery``.

  Attributes:
    queries: ``[q]`` int, the queries to show.
    global_neighbours: ``[q, k]`` int, each query's top ``k`` by global cosine, best first.
    reranked_neighbours: ``[q, k]`` int, its top ``k`` after DIML re-ranking, best first.
    labels: ``[n]`` int, the class of every image.
    images: image ``i`` as uint8 ``[h, w, 3]``: a callable ``i -> image``, or anything
      indexable by ``i`` (a list, an ``[n, h, w, 3]`` array).
    match_pair: ``(query index, result index) -> Matching`` of that one pair (flow
      ``[r1, r2]``), e.g. ``lambda i, j: matching.match(local[i], local[j])``.
    embeddings: ``[n, c]`` global embeddings, or ``None``; when given, every result and
      figure shows the global cosine.
    grids: the part grids ``(query's, result's)`` as in ``flow_figure``; ``None``: square.
    class_names: the name of each class (indexed by label), shown instead of the number.
  """

  queries: Any
  global_neighbours: Any
  reranked_neighbours: Any
  labels: Any
  images: Callable[[int], np.ndarray] | Any
  match_pair: Callable[[int, int], Matching]
  embeddings: Any = None
  grids: tuple[Grid | None, Grid | None] | None = None
  class_names: Sequence[str] | None = None


def _class(run: RetrievalRun, index: int) -> str:
  label = int(run.labels[index])
  return html.escape(str(run.class_names[label])) if run.class_names is not None else f"class {label}"


def _checked(run: RetrievalRun) -> RetrievalRun:
  """``run`` with NumPy arrays, or ``ValueError`` naming the field that is wrong."""
  def ints(name, value, ndim):
    a = np.asarray(value)
    if a.ndim != ndim or not np.issubdtype(a.dtype, np.integer):
      layout = "[q]" if name == "queries" else "[n]" if ndim == 1 else "[q, k]"
      raise ValueError(f"run.{name} must be an int array {layout}; got shape {a.shape}, "
                       f"dtype {a.dtype}.")
    return a

  queries = ints("queries", run.queries, 1)
  labels = ints("labels", run.labels, 1)
  if queries.size == 0:
    raise ValueError("run.queries is empty: nothing to report.")
  neighbours = []
  for name in ("global_neighbours", "reranked_neighbours"):
    a = ints(name, getattr(run, name), 2)
    if a.shape[0] != queries.size or a.shape[1] == 0:
      raise ValueError(f"run.{name} must be [q, k] with q = {queries.size} (len(queries)) "
                       f"and k >= 1; got shape {a.shape}.")
    neighbours.append(a)
  if neighbours[0].shape != neighbours[1].shape:
    raise ValueError(f"run.global_neighbours {neighbours[0].shape} and run.reranked_neighbours "
                     f"{neighbours[1].shape} must have the same shape [q, k].")
  every = np.concatenate([queries, *(a.ravel() for a in neighbours)])
  if every.min() < 0 or every.max() >= labels.size:
    raise ValueError(f"indices in run.queries and the neighbours must be in [0, {labels.size}) "
                     f"(len(labels)); got {every.min()}..{every.max()}.")
  embeddings = run.embeddings
  if embeddings is not None:
    embeddings = np.asarray(embeddings, np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] != labels.size:
      raise ValueError(f"run.embeddings must be [n, c] with n = {labels.size} (len(labels)); "
                       f"got shape {embeddings.shape}.")
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    embeddings = embeddings / np.maximum(norms, 1e-12)
  return run._replace(queries=queries, labels=labels, global_neighbours=neighbours[0],
                      reranked_neighbours=neighbours[1], embeddings=embeddings)


def _data_uri(data: bytes, mime: str) -> str:
  return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _thumbnail(image: np.ndarray, height: int) -> str:
  """A JPEG ``data:`` URI of ``image`` scaled to ``height`` pixels."""
  width = max(1, round(image.shape[1] * height / image.shape[0]))
  buffer = io.BytesIO()
  Image.fromarray(image).resize((width, height), Image.LANCZOS).save(buffer, "JPEG", quality=88)
  return _data_uri(buffer.getvalue(), "image/jpeg")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px 24px; color: #222; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; }
.legend { font-size: 13px; color: #444; margin: 0 0 12px; }
.hitmark { color: #2e9d3a; font-weight: bold; } .missmark { color: #d0302f; font-weight: bold; }
.query { display: flex; gap: 20px; align-items: flex-start; padding: 12px 0;
  border-top: 1px solid #ddd; }
.lists { display: flex; flex-direction: column; gap: 8px; }
.list h3 { font-size: 13px; font-weight: 600; margin: 0 0 4px; }
.row { display: flex; gap: 6px; flex-wrap: wrap; }
figure { margin: 0; font-size: 11px; text-align: center; }
figure img { display: block; border: 4px solid #555; border-radius: 3px; }
a.result { color: inherit; text-decoration: none; }
a.result:hover img { outline: 3px solid #ffd23f; }
.hit img { border-color: #2e9d3a; } .miss img { border-color: #d0302f; }
.flow { display: none; position: fixed; inset: 0; z-index: 10; overflow: auto;
  background: rgba(0, 0, 0, 0.72); }
.flow:target { display: block; }
.panel { background: #fff; margin: 24px auto; padding: 10px 14px; border-radius: 6px;
  width: min(94vw, 960px); box-sizing: border-box; }
.panel h2 { font-size: 15px; margin: 2px 0 8px; }
.panel img { width: 100%; height: auto; display: block; }
a.close { float: right; font-size: 14px; text-decoration: none; color: #0a58ca; }
"""


def _result(run: RetrievalRun, qpos: int, rank: int, index: int, thumb: str,
            scores: dict[str, float]) -> str:
  """One result: its image framed by correctness, linked to its pair's flow figure."""
  correct = run.labels[index] == run.labels[run.queries[qpos]]
  caption = f"{rank}. #{index} · {_class(run, index)}"
  lines = " · ".join(f"{name} {value:.3f}" for name, value in scores.items())
  return (
      f'<a class="result {"hit" if correct else "miss"}" href="#pair-{qpos}-{index}" '
      f'title="{"same class" if correct else "other class"}: open the flow figure">'
      f'<figure><img src="{thumb}" alt="result #{index}">'
      f"<figcaption>{html.escape(caption)}<br>{html.escape(lines)}</figcaption></figure></a>"
  )


def _figure_section(run: RetrievalRun, qpos: int, index: int, figure_jpeg: bytes) -> str:
  """The flow figure of a pair, hidden until its ``#pair-...`` link is followed."""
  query = int(run.queries[qpos])
  verdict = "same class" if run.labels[index] == run.labels[query] else "other class"
  return (
      f'<section class="flow" id="pair-{qpos}-{index}"><div class="panel">'
      f'<a class="close" href="#query-{qpos}">✕ close</a>'
      f"<h2>query #{query} ({_class(run, query)}) ↔ result #{index} ("
      f"{_class(run, index)}, {verdict})</h2>"
      f'<img src="{_data_uri(figure_jpeg, "image/jpeg")}" alt="flow figure of query '
      f'#{query} and result #{index}"></div></section>'
  )


def report_html(
    run: RetrievalRun,
    *,
    title: str = "DIML retrieval report",
    thumbnail_height: int = 112,
    figure_dpi: float = 72,
    **figure_options,
) -> str:
  """The report of ``run`` as one HTML document (see the module docstring).

  Draws one flow figure per distinct (query, result) pair shown, about half a second
  each on a CPU: keep ``q * k`` to tens of pairs.

  Args:
    run: the :class:`RetrievalRun`.
    title: the page title.
    thumbnail_height: pixel height of the query and result images.
    figure_dpi: resolution of the embedded flow figures (10 inches wide).
    **figure_options: passed to ``flow_figure`` (e.g. ``min_flow``, ``max_lines``).

  Returns:
    the HTML text.

  Raises:
    ValueError: a field of ``run`` is malformed (the message names it), or an image or
      matching is (from ``flow_figure``).
  """
  run = _checked(run)
  get = run.images if callable(run.images) else run.images.__getitem__
  image = lambda i: check_image(f"run.images({i})", get(i))
  thumbs = {}  # data-set index -> data URI
  matchings = {}  # (query position, result index) -> Matching

  def thumb(index):
    if index not in thumbs:
      thumbs[index] = _thumbnail(image(index), thumbnail_height)
    return thumbs[index]

  def cosine(i, j):
    return None if run.embeddings is None else float(run.embeddings[i] @ run.embeddings[j])

  sections, correct = [], {"global": 0, "DIML": 0}
  for qpos, query in enumerate(run.queries.tolist()):
    lists = []
    for key, heading, neighbours in (
        ("global", "top {k} by global cosine", run.global_neighbours[qpos]),
        ("DIML", "top {k} after DIML re-ranking (structural + global)",
         run.reranked_neighbours[qpos]),
    ):
      cards = []
      for rank, index in enumerate(neighbours.tolist(), 1):
        if (qpos, index) not in matchings:
          matchings[qpos, index] = run.match_pair(query, index)
        scores = {"structural": float(matchings[qpos, index].similarity)}
        if run.embeddings is not None:
          scores = {"cos": cosine(query, index), **scores}
        cards.append(_result(run, qpos, rank, index, thumb(index), scores))
        correct[key] += int(run.labels[index] == run.labels[query])
      lists.append(f'<div class="list"><h3>{html.escape(heading.format(k=len(neighbours)))}'
                   f'</h3><div class="row">{"".join(cards)}</div></div>')
    sections.append(
        f'<section class="query" id="query-{qpos}"><figure><img src="{thumb(query)}" '
        f'alt="query #{query}"><figcaption>query #{query} · {_class(run, query)}'
        f'</figcaption></figure><div class="lists">{"".join(lists)}</div></section>'
    )

  figures = []
  for (qpos, index), m in matchings.items():
    query = int(run.queries[qpos])
    drawn = flow_figure(image(query), image(index), m, grids=run.grids,
                        global_similarity=cosine(query, index),
                        names=(f"query #{query}", f"result #{index}"), **figure_options)
    jpeg = figure_bytes(drawn.figure, "jpg", dpi=figure_dpi, pil_kwargs={"quality": 88})
    figures.append(_figure_section(run, qpos, index, jpeg))

  shown = run.global_neighbours.size
  legend = (
      f'{len(run.queries)} queries, top {run.global_neighbours.shape[1]}: frame '
      f'<span class="hitmark">green</span> = same class as the query, '
      f'<span class="missmark">red</span> = another class. Correct among those shown: '
      f'global {correct["global"]}/{shown}, DIML {correct["DIML"]}/{shown}. '
      f"Click a result for its matching flow and part contributions."
  )
  return (
      f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
      f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
      f'<h1>{html.escape(title)}</h1><p class="legend">{legend}</p>'
      f'{"".join(sections)}{"".join(figures)}</body></html>\n'
  )


def write_report(run: RetrievalRun, path, **options) -> pathlib.Path:
  """Writes :func:`report_html` of ``run`` to ``path`` (UTF-8); returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(report_html(run, **options), encoding="utf-8")
  return path
