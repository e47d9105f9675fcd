"""diml_jax.explain: what the figures draw comes from the computed flow, and the HTML report
works in a real browser.

The pairs are crops of scikit-image's photos, matched on real per-cell features (colour
histograms of each grid cell) by diml_jax.matching.match, or, where many grid shapes are
drawn, by a float64 NumPy Sinkhorn written here (each new shape costs ``match`` seconds of
compilation). Expected positions and values are recomputed here from the flow, the part
similarities and the drawn images' extents, independently of the drawing code.
"""
import base64
import html.parser
import json
import os
import select
import shutil
import signal
import time

import jax
import numpy as np
import pytest
import skimage.data
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.text import Text

from diml_jax import matching
from diml_jax.explain import (RetrievalRun, figure_bytes, flow_figure, relevance_figure,
                              report_html, write_report)


def cell_features(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
  """Per-cell colour histograms ``[rows * cols, 24]`` of a grid laid over ``image``, row-major."""
  h, w = image.shape[:2]
  cells = []
  for i in range(rows):
    for j in range(cols):
      cell = image[i * h // rows:(i + 1) * h // rows, j * w // cols:(j + 1) * w // cols]
      cells.append(np.concatenate(
          [np.histogram(cell[..., k], bins=8, range=(0, 256))[0] for k in range(3)]))
  return np.asarray(cells, np.float32)


def real_match(a, b, grid_a, grid_b):
  return matching.match(cell_features(a, *grid_a), cell_features(b, *grid_b))


def numpy_match(x, y, epsilon=0.05):
  """DIML's matching of one pair in float64 NumPy (cross marginals, kernel Sinkhorn)."""
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  y = y / np.linalg.norm(y, axis=1, keepdims=True)
  gx, gy = x.mean(0) / np.linalg.norm(x.mean(0)), y.mean(0) / np.linalg.norm(y.mean(0))
  s = x @ y.T
  mu, nu = np.maximum(x @ gy, 0), np.maximum(y @ gx, 0)
  mu, nu = mu / mu.sum(), nu / nu.sum()
  kernel = np.exp(-(1 - s) / epsilon)
  v = np.ones(len(y))
  for _ in range(1_000):
    for _ in range(20):
      u = mu / (kernel @ v)
      v = nu / (kernel.T @ u)
    if np.abs(u * (kernel @ v) - mu).sum() < 1e-9:
      break
  flow = u[:, None] * kernel * v
  return matching.Matching(similarity=(flow * s).sum(), flow=flow, part_similarity=s, mu=mu,
                           nu=nu, mass=np.float64(1.0), iterations=None,
                           error=None)


def numpy_real_match(a, b, grid_a, grid_b):
  return numpy_match(cell_features(a, *grid_a), cell_features(b, *grid_b))


@pytest.fixture(scope="module")
def pair():
  """Two overlapping crops of the astronaut, of different sizes."""
  photo = skimage.data.astronaut()
  return photo[0:300, 80:400], photo[60:400, 150:370]


def centre(image_artist, grid, part):
  """Centre of cell ``part`` of ``grid`` over the drawn image (its extent, y downwards)."""
  left, right, bottom, top = image_artist.get_extent()
  rows, cols = grid
  i, j = divmod(part, cols)
  return (left + (j + 0.5) * (right - left) / cols, top + (i + 0.5) * (bottom - top) / rows)


# --- the flow figure --------------------------------------------------------------------
def test_lines_are_the_strongest_flows_between_cell_centres(pair):
  a, b = pair
  m = real_match(a, b, (4, 4), (4, 4))
  flow = np.asarray(m.flow, np.float64)
  drawn = flow_figure(a, b, m, min_flow=0.2, max_lines=None)

  # Exactly the entries >= 20% of the largest, strongest first.
  expected = sorted(((flow[i, j], i, j) for i in range(16) for j in range(16)
                     if flow[i, j] >= 0.2 * flow.max()), key=lambda e: -e[0])
  assert [tuple(p) for p in drawn.pairs] == [(i, j) for _, i, j in expected]
  assert len(drawn.lines) == len(expected) > 3
  # The strongest line joins the argmax cell pair.
  i, j = np.unravel_index(np.argmax(flow), flow.shape)
  np.testing.assert_allclose(drawn.lines[0].get_xydata()[0], centre(drawn.images[0], (4, 4), i))
  np.testing.assert_allclose(drawn.lines[0].get_xydata()[-1], centre(drawn.images[1], (4, 4), j))
  # Every line joins its own pair's centres and is drawn in the images' axes.
  for line, (i, j) in zip(drawn.lines, drawn.pairs):
    np.testing.assert_allclose(line.get_xydata()[[0, -1]],
                               [centre(drawn.images[0], (4, 4), i),
                                centre(drawn.images[1], (4, 4), j)])
    assert line in drawn.images[0].axes.lines
  # Width and opacity follow the flow: strictly where the flows differ.
  flows = np.array([flow[i, j] for _, i, j in expected])
  for style in ([l.get_linewidth() for l in drawn.lines], [l.get_alpha() for l in drawn.lines]):
    assert np.all(np.diff(style)[np.diff(flows) < 0] < 0)
    assert np.all(np.diff(style)[np.diff(flows) == 0] == 0)


def test_max_lines_keeps_the_strongest(pair):
  a, b = pair
  m = real_match(a, b, (4, 4), (4, 4))
  flow = np.asarray(m.flow)
  drawn = flow_figure(a, b, m, min_flow=0.01, max_lines=5)
  top5 = np.sort(flow, axis=None)[::-1][:5]
  np.testing.assert_array_equal([flow[i, j] for i, j in drawn.pairs], top5)


def test_heat_maps_are_the_part_contributions(pair):
  a, b = pair
  m = real_match(a, b, (4, 4), (3, 3))
  contributions = np.asarray(m.flow, np.float64) * np.asarray(m.part_similarity, np.float64)
  drawn = flow_figure(a, b, m, grids=(4, 3), global_similarity=0.5)
  heat_a, heat_b = drawn.heatmaps
  np.testing.assert_allclose(heat_a.get_array(), contributions.sum(1).reshape(4, 4), rtol=1e-6)
  np.testing.assert_allclose(heat_b.get_array(), contributions.sum(0).reshape(3, 3), rtol=1e-6)
  # Each heat map covers its own image's pixels, which are drawn under it, and its colours
  # run from 0 to its own largest contribution (all are >= 0 here).
  for heat, image, values in ((heat_a, a, contributions.sum(1)), (heat_b, b, contributions.sum(0))):
    h, w = image.shape[:2]
    assert tuple(heat.get_extent()) == (0, w, h, 0)
    assert heat.axes.images[0].get_array().shape == (h, w)
    assert values.min() >= 0
    assert (heat.norm.vmin, heat.norm.vmax) == (0, pytest.approx(values.max()))
  # The decomposition written on the figure: similarity = Σ contributions, per image.
  texts = [t.get_text() for t in drawn.figure.findobj(lambda a: hasattr(a, "get_text"))]
  total = f"{contributions.sum():.3f}"
  assert any(f"structural similarity {total} = Σ part contributions" in t
             and "global cosine 0.500" in t for t in texts)
  assert any(t.startswith(f"A: Σ of 16 parts = {total}") for t in texts)
  assert any(t.startswith(f"B: Σ of 9 parts = {total}") for t in texts)
  # Each cell's printed value is its contribution.
  cells = [t.get_text() for t in heat_a.axes.texts]
  assert cells == [f"{v:.3f}" for v in contributions.sum(1)]


def test_panel_titles_sit_between_the_images_and_their_panels(pair):
  # The titles have a fixed position (no automatic placement at each draw): each must
  # still sit on its own panel, left-aligned with it, below the images and inside the figure.
  a, b = pair
  drawn = flow_figure(a, b, real_match(a, b, (4, 4), (4, 4)))
  FigureCanvasAgg(drawn.figure).draw()
  images = drawn.images[0].axes.get_window_extent()
  for heat in drawn.heatmaps:
    (title,) = [t.get_window_extent() for t in heat.axes.get_children()
                if isinstance(t, Text) and t.get_text() == heat.axes.get_title("left")]
    panel = heat.axes.get_window_extent()
    assert panel.ymax < title.ymin < title.ymax < images.ymin
    assert title.ymin - panel.ymax < 8 * drawn.figure.dpi / 72  # the 4 pt pad and descent
    assert title.xmin == pytest.approx(panel.xmin, abs=1)
    assert title.xmax <= drawn.figure.bbox.xmax


def test_negative_contributions_get_a_scale_centred_on_zero(pair):
  a, b = pair
  rng = np.random.default_rng(1)  # Gaussian features: some parts anti-correlated
  m = numpy_match(rng.normal(size=(9, 8)), rng.normal(size=(9, 8)))
  values = (m.flow * m.part_similarity).sum(0)
  assert values.min() < 0
  heat = flow_figure(a, b, m).heatmaps[1]
  assert heat.norm.vmin == -heat.norm.vmax == pytest.approx(-np.abs(values).max())
  assert heat.cmap(heat.norm(0.0)) == pytest.approx(heat.cmap(0.5))  # 0 at the centre


@pytest.mark.parametrize("g", range(1, 8))
def test_grid_sizes_1_to_7(pair, g):
  a, b = pair
  other = 8 - g  # r1 != r2 except for g = 4
  m = numpy_real_match(a, b, (g, g), (other, other))
  drawn = flow_figure(a, b, m)
  assert drawn.heatmaps[0].get_array().shape == (g, g)
  assert drawn.heatmaps[1].get_array().shape == (other, other)
  # The grid drawn on each image: g - 1 interior lines each way.
  segments = [len(c.get_segments()) for c in drawn.images[0].axes.collections
              if isinstance(c, LineCollection)]
  assert segments == [g - 1, g - 1, other - 1, other - 1]
  assert figure_bytes(drawn.figure, "png", dpi=30).startswith(b"\x89PNG")


@pytest.mark.parametrize("grid_a, grid_b", [((4, 4), (3, 3)), ((2, 3), (3, 2)), ((1, 5), (4, 2))])
def test_rectangular_grids(pair, grid_a, grid_b, tmp_path):
  a, b = pair
  m = numpy_real_match(a, b, grid_a, grid_b)
  drawn = flow_figure(a, b, m, grids=(grid_a, grid_b))
  assert drawn.heatmaps[0].get_array().shape == grid_a
  assert drawn.heatmaps[1].get_array().shape == grid_b
  i, j = drawn.pairs[0]
  assert (i, j) == np.unravel_index(np.argmax(m.flow), m.flow.shape)
  np.testing.assert_allclose(drawn.lines[0].get_xydata()[[0, -1]],
                             [centre(drawn.images[0], grid_a, i),
                              centre(drawn.images[1], grid_b, j)])
  drawn.figure.savefig(tmp_path / "f.png", dpi=30)
  drawn.figure.savefig(tmp_path / "f.svg")
  assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")
  assert "<svg" in (tmp_path / "f.svg").read_text()[:2000]


def _cut(m, cols):
  return m._replace(flow=m.flow[:, :cols], part_similarity=m.part_similarity[:, :cols])


# case -> (call with the images a, b and their 4x4 vs 4x4 matching m, expected message)
BAD_INPUTS = {
    "grid": (lambda a, b, m: flow_figure(a, b, m, grids=(4, 3)),
             r"16 parts for image_b \(B\), but its grid 3x3 has 9 cells"),
    "not square": (lambda a, b, m: flow_figure(a, b, _cut(m, 6)),
                   r"image_b \(B\) has 6 parts, not a square grid"),
    "batched": (lambda a, b, m: flow_figure(a, b, jax.tree.map(lambda x: x[None], m)),
                r"one pair, flow \[r1, r2\]; got flow of shape \(1, 16, 16\)"),
    "grey image": (lambda a, b, m: flow_figure(a[..., 0], b, m),
                   r"image_a must be an RGB image \[h, w, 3\]; got shape \(300, 320\)"),
    "rgba image": (lambda a, b, m: flow_figure(a, np.concatenate([b, b[..., :1]], -1), m),
                   r"image_b must be an RGB image \[h, w, 3\]; got shape \(340, 220, 4\)"),
    "float image": (lambda a, b, m: flow_figure(a / 255.0, b, m),
                    r"image_a must be uint8 \(0..255\); got dtype float64"),
    "min_flow": (lambda a, b, m: flow_figure(a, b, m, min_flow=0.0),
                 r"min_flow must be a fraction in \(0, 1\]; got 0.0"),
    "grids": (lambda a, b, m: flow_figure(a, b, m, grids=(4,)),
              r"grids must be a pair \(grid of image_a, grid of image_b\)"),
    "grid shape": (lambda a, b, m: flow_figure(a, b, m, grids=((4, 4), (2, 2, 4))),
                   r"the grid of image_b \(B\) must be an int >= 1 or \(rows, cols\)"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_a_value_error_naming_it(pair, case):
  a, b = pair
  m = real_match(a, b, (4, 4), (4, 4))
  call, message = BAD_INPUTS[case]
  with pytest.raises(ValueError, match=message):
    call(a, b, m)


def test_relevance_maps_are_drawn_over_the_image():
  image = skimage.data.chelsea()
  h, w = image.shape[:2]
  groups = np.random.default_rng(0).dirichlet(np.ones(49), size=3).reshape(3, 7, 7)
  fig = relevance_figure(image, groups, titles=["group 1", "group 2", "group 3"])
  assert len(fig.axes) == 4
  for ax, attention in zip(fig.axes[1:], groups):
    overlay = ax.images[1]
    np.testing.assert_array_equal(overlay.get_array(), attention)
    assert tuple(overlay.get_extent()) == (0, w, h, 0)
    assert overlay.norm.vmin == attention.min() and overlay.norm.vmax == attention.max()
  rollout = np.linspace(0, 1, 14 * 14).reshape(14, 14)
  fig = relevance_figure(image, rollout)
  assert len(fig.axes) == 2
  np.testing.assert_array_equal(fig.axes[1].images[1].get_array(), rollout)
  assert figure_bytes(fig, "png", dpi=30).startswith(b"\x89PNG")
  with pytest.raises(ValueError,
                     match=r"maps must be \[h, w\] or \[k, h, w\]; got shape \(1, 3, 7, 7\)"):
    relevance_figure(image, groups[None])
  with pytest.raises(ValueError, match=r"titles must have one entry per map \(3\); got 2"):
    relevance_figure(image, groups, titles=["a", "b"])


# --- the HTML report --------------------------------------------------------------------
@pytest.fixture(scope="module")
def run():
  """A small real retrieval: crops of three photos (class = photo), 2 queries, top 3.

  Ranked by global cosine, re-ranked by structural + global; the figures' matchings come
  from diml_jax.matching.match.
  """
  rng = np.random.default_rng(0)
  images, labels = [], []
  for label, photo in enumerate([skimage.data.astronaut(), skimage.data.chelsea(),
                                 skimage.data.coffee()]):
    h, w = photo.shape[:2]
    for _ in range(3):
      ch, cw = rng.integers(h // 2, h), rng.integers(w // 2, w)
      y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      images.append(photo[y:y + ch, x:x + cw])
      labels.append(label)
  local = np.stack([cell_features(image, 4, 4) for image in images])
  embeddings = local.mean(1)
  unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  cosine = unit @ unit.T
  np.fill_diagonal(cosine, -np.inf)
  queries = np.array([0, 4])
  top = np.argsort(-cosine[queries], axis=1)[:, :3]
  score = [[numpy_match(local[q], local[j]).similarity + cosine[q, j] for j in row]
           for q, row in zip(queries, top)]
  reranked = np.take_along_axis(top, np.argsort(-np.array(score), axis=1, kind="stable"), 1)
  return RetrievalRun(
      queries=queries, global_neighbours=top, reranked_neighbours=reranked,
      labels=np.array(labels), images=images,
      match_pair=lambda i, j: matching.match(local[i], local[j]), embeddings=embeddings)


@pytest.fixture(scope="module")
def report(run, tmp_path_factory):
  return write_report(run, tmp_path_factory.mktemp("report") / "report.html", figure_dpi=50)


class _Page(html.parser.HTMLParser):
  """Element ids, in-page links with their classes, and images of an HTML document."""

  def __init__(self, text):
    super().__init__()
    self.ids, self.links, self.images = set(), [], []
    self.feed(text)

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if "id" in attrs:
      self.ids.add(attrs["id"])
    if tag == "a":
      self.links.append((attrs["href"], attrs.get("class", "")))
    if tag == "img":
      self.images.append(attrs["src"])


def test_report_is_one_file_with_working_anchors(run, report):
  page = _Page(report.read_text(encoding="utf-8"))
  # Everything is embedded; every in-page link has its target.
  assert page.images and all(src.startswith("data:image/jpeg;base64,") for src in page.images)
  for src in page.images:
    assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\xff\xd8")
  assert all(href.startswith("#") and href[1:] in page.ids for href, _ in page.links)
  # Each result links to its pair's figure, framed by whether its class is the query's.
  results = [(href, cls) for href, cls in page.links if "result" in cls]
  assert len(results) == run.global_neighbours.size + run.reranked_neighbours.size
  k = run.global_neighbours.shape[1]
  for n, (href, cls) in enumerate(results):
    qpos, which, rank = n // (2 * k), (n // k) % 2, n % k
    index = (run.global_neighbours, run.reranked_neighbours)[which][qpos, rank]
    assert href == f"#pair-{qpos}-{index}"
    same = run.labels[index] == run.labels[run.queries[qpos]]
    assert cls == f"result {'hit' if same else 'miss'}"
  distinct = {href for href, _ in results}
  assert {i for i in page.ids if i.startswith("pair-")} == {h[1:] for h in distinct}
  assert len(page.images) == len(run.queries) + len(results) + len(distinct)


def test_report_names_classes_when_given(run):
  names = ["astronaut <Eileen>", "chelsea", "coffee"]
  text = report_html(run._replace(class_names=names))
  assert "astronaut &lt;Eileen&gt;" in text and "<Eileen>" not in text
  assert "· chelsea" in text and "· class 1" not in text
  assert "· class 1" in report_html(run)


@pytest.mark.parametrize("field, value, message", [
    ("global_neighbours", np.zeros((3, 3), int), r"global_neighbours must be \[q, k\] with q = 2"),
    ("reranked_neighbours", np.zeros((2, 2), int), r"the same shape"),
    ("queries", np.array([0.0, 1.0]), r"run.queries must be an int array \[q\]"),
    ("queries", np.array([0, 9]), r"must be in \[0, 9\)"),
    ("embeddings", np.zeros((4, 8)), r"run.embeddings must be \[n, c\] with n = 9"),
])
def test_report_rejects_a_malformed_run(run, field, value, message):
  with pytest.raises(ValueError, match=message):
    report_html(run._replace(**{field: value}))


# --- the report in a real browser -------------------------------------------------------
class Chromium:
  """Headless Chromium driven over the DevTools protocol on a pipe.

  ``--remote-debugging-pipe`` reads NUL-terminated JSON commands on fd 3 and answers on
  fd 4: no port, no extra package.
  """

  def __init__(self, binary, profile, size=(1280, 900)):
    to_chrome, self._write = os.pipe()
    self._read, from_chrome = os.pipe()
    devnull = os.open(os.devnull, os.O_RDWR)
    args = [binary, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}", "--remote-debugging-pipe", "about:blank"]
    try:
      self.pid = os.posix_spawn(binary, args, os.environ, setpgroup=0, file_actions=[
          (os.POSIX_SPAWN_DUP2, to_chrome, 3), (os.POSIX_SPAWN_DUP2, from_chrome, 4),
          (os.POSIX_SPAWN_DUP2, devnull, 1), (os.POSIX_SPAWN_DUP2, devnull, 2)])
    finally:
      for fd in (to_chrome, from_chrome, devnull):
        os.close(fd)
    self._buffer, self._id = b"", 0

  def call(self, method, params=None, session=None, timeout=20.0):
    self._id += 1
    message = {"id": self._id, "method": method, "params": params or {}}
    if session:
      message["sessionId"] = session
    os.write(self._write, json.dumps(message).encode() + b"\0")
    deadline = time.monotonic() + timeout
    while True:
      while b"\0" in self._buffer:  # replies and events; events are not needed here
        raw, self._buffer = self._buffer.split(b"\0", 1)
        reply = json.loads(raw)
        if reply.get("id") == self._id:
          if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
          return reply["result"]
      left = deadline - time.monotonic()
      if left <= 0 or not select.select([self._read], [], [], left)[0]:
        raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
      chunk = os.read(self._read, 1 << 20)
      if not chunk:
        raise RuntimeError("Chromium closed the DevTools pipe")
      self._buffer += chunk

  def open(self, url, timeout=20.0):
    """A new tab showing ``url`` once loaded (images included); returns its session."""
    target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
    session = session["sessionId"]
    self.call("Page.navigate", {"url": url}, session)
    deadline = time.monotonic() + timeout
    while self.evaluate(session, "document.URL + ' ' + document.readyState") != f"{url} complete":
      if time.monotonic() > deadline:
        raise TimeoutError(f"{url} did not load within {timeout} s")
      time.sleep(0.05)
    return session

  def evaluate(self, session, expression):
    result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                            "awaitPromise": True}, session)
    if "exceptionDetails" in result:
      raise RuntimeError(f"{expression!r} raised {result['exceptionDetails']}")
    return result["result"].get("value")

  def click(self, session, selector):
    """A real left click (mouse events) at the centre of the element, scrolled into view."""
    point = self.evaluate(session, f"""(() => {{
        const e = document.querySelector({json.dumps(selector)});
        e.scrollIntoView({{block: "center"}});
        const r = e.getBoundingClientRect();
        return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
    for kind in ("mousePressed", "mouseReleased"):
      self.call("Input.dispatchMouseEvent", {"type": kind, "x": point[0], "y": point[1],
                                             "button": "left", "clickCount": 1}, session)

  def wait_for(self, session, expression, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not self.evaluate(session, expression):
      if time.monotonic() > deadline:
        raise TimeoutError(f"{expression!r} stayed false for {timeout} s")
      time.sleep(0.05)

  def close(self):
    try:
      self.call("Browser.close", timeout=5)
    except (RuntimeError, TimeoutError, OSError):
      os.killpg(self.pid, signal.SIGKILL)
    os.waitpid(self.pid, 0)
    os.close(self._write)
    os.close(self._read)


def _chromium_binary():
  return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
              None)


# Is the element visible and on top at its centre?
_SHOWN = """(() => {{ const e = document.querySelector({selector});
  if (getComputedStyle(e).display === "none") return false;
  const r = e.getBoundingClientRect();
  return r.width > 0 && document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2) === e;
}})()"""


@pytest.mark.skipif(_chromium_binary() is None,
                    reason="no Chromium on PATH (Debian: apt-get install chromium; `make "
                    "system-deps`), so the report cannot be opened in a browser")
def test_report_in_headless_chromium(run, report, tmp_path):
  browser = Chromium(_chromium_binary(), tmp_path / "profile")
  try:
    tab = browser.open(report.resolve().as_uri())
    # Every image decodes, the hidden figures' included.
    sizes = browser.evaluate(tab, "[...document.images].map(i => i.complete ? i.naturalWidth : 0)")
    assert len(sizes) == len(_Page(report.read_text(encoding="utf-8")).images)
    assert min(sizes) > 0
    # Figures are hidden until their result is clicked.
    assert browser.evaluate(tab, '[...document.querySelectorAll(".flow")].every('
                                 'e => getComputedStyle(e).display === "none")')
    k = run.global_neighbours.shape[1]
    for qpos, which, rank in ((0, 0, 0), (1, 1, k - 1)):
      index = (run.global_neighbours, run.reranked_neighbours)[which][qpos, rank]
      link = f"#query-{qpos} .list:nth-child({which + 1}) a.result:nth-child({rank + 1})"
      browser.click(tab, link)
      figure = json.dumps(f"#pair-{qpos}-{index} img")
      browser.wait_for(tab, f'location.hash === "#pair-{qpos}-{index}"')
      browser.wait_for(tab, _SHOWN.format(selector=figure))
      assert browser.evaluate(tab, f"document.querySelector({figure}).naturalWidth") > 0
      # Closing returns to the query, with every figure hidden again.
      browser.click(tab, f"#pair-{qpos}-{index} a.close")
      browser.wait_for(tab, f'location.hash === "#query-{qpos}"')
      assert not browser.evaluate(tab, _SHOWN.format(selector=figure))
  finally:
    browser.close()
