"""Making DIML's explanation visible: flow figures, relevance overlays, an HTML report.

- :mod:`~diml_jax.explain.figures`: :func:`flow_figure` for one pair (matched parts,
  part contributions, ``similarity = Σ contributions``).
- :mod:`~diml_jax.explain.relevance`: :func:`relevance_figure` for attention maps (DGML
  groups, ViT rollout).
- :mod:`~diml_jax.explain.report`: :func:`write_report`, one self-contained HTML file of
  a retrieval run (global top-k next to DIML's re-ranked top-k, each result linked to its
  flow figure).
"""
from diml_jax.explain.figures import (FlowFigure, Grid, cell_centres, check_image,
                                      figure_bytes, flow_figure, grid_shape, strongest_flows)
from diml_jax.explain.relevance import relevance_figure
from diml_jax.explain.report import RetrievalRun, report_html, write_report
