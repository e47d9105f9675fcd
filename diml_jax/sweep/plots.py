"""A sweep's figures (PNG): R@1 against the re-ranking depth ``K``, and the ablations.

Each table with a ``plot`` (:class:`diml_jax.sweep.plan.Table`) gets ``<name>.png``:
points are means over seeds, error bars one standard deviation.
"""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from diml_jax.sweep import table as table_lib
from diml_jax.sweep.plan import Plan, Run, Table

__all__ = ["write_figures"]


def _stats(row, k, metric, summaries):
  return table_lib.describe(table_lib.cell_values(row, k, metric, summaries).values())


def _k_figure(table: Table, summaries: dict):
  """R@1 against every computed depth, one line per row; K on an even (categorical)
  axis, as the depths grow geometrically from 0 (the global ranking)."""
  figure, ax = plt.subplots(figsize=(9, 4.5))
  rows = [r for r in table.rows if r.variant is not None]
  ks = sorted(set.intersection(*(set(r.setting.ks) for r in rows)))
  for row in rows:
    stats = [_stats(row, k, "recall@1", summaries) for k in ks]
    ax.errorbar(range(len(ks)), [s.mean for s in stats], yerr=[s.std for s in stats],
                marker="o", capsize=3, label=" / ".join(row.label))
  ax.set_xticks(range(len(ks)), [table_lib.depth_name(k).removeprefix("K=") for k in ks])
  ax.set_xlabel("re-ranking depth K (global: no re-ranking)")
  ax.set_ylabel("R@1 (%)")
  ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
  return figure


def _metric_axes(table: Table, *, stacked: bool = False, width: float = 5.0):
  """One panel per metric: side by side, or ``stacked`` one above the other."""
  n = len(table.metrics)
  shape, size = ((n, 1), (width, 3.5 * n)) if stacked else ((1, n), (width * n, 4))
  figure, axes = plt.subplots(*shape, figsize=size, squeeze=False)
  axes = axes.ravel()
  for ax, metric in zip(axes, table.metrics):
    ax.set_ylabel(f"{table_lib.METRICS.get(metric, metric)} (%)")
  return figure, axes


def _value_figure(table: Table, summaries: dict):
  """Each metric against the rows' values, one line per shown depth."""
  figure, axes = _metric_axes(table)
  rows = [r for r in table.rows if r.variant is not None]
  x = [r.value for r in rows]
  for ax, metric in zip(axes, table.metrics):
    for k in table.ks:
      stats = [_stats(r, k, metric, summaries) for r in rows]
      ax.errorbar(x, [s.mean for s in stats], yerr=[s.std for s in stats], marker="o",
                  capsize=3, label=table_lib.depth_name(k))
    if table.log_x:
      ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.minorticks_off()
    ax.set_xlabel(table.columns[-1])
    ax.legend(fontsize="small")
  return figure


def _bar_figure(table: Table, summaries: dict):
  """Each metric of each row as bars, one per shown depth; the panels one above the
  other, as wide as the rows need."""
  rows = [r for r in table.rows if r.variant is not None]
  figure, axes = _metric_axes(table, stacked=True, width=max(6.0, 1.3 * len(rows) + 2))
  width = 0.8 / len(table.ks)
  for ax, metric in zip(axes, table.metrics):
    lowest = np.inf
    for j, k in enumerate(table.ks):
      stats = [_stats(r, k, metric, summaries) for r in rows]
      lowest = min(lowest, *(s.mean - s.std for s in stats))
      ax.bar(np.arange(len(rows)) + (j - (len(table.ks) - 1) / 2) * width,
             [s.mean for s in stats], width, yerr=[s.std for s in stats], capsize=3,
             label=table_lib.depth_name(k))
    ax.set_xticks(range(len(rows)), ["\n".join(r.label) for r in rows])
    ax.set_ylim(bottom=max(0.0, np.floor(lowest) - 2))  # the differences, not the bars
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
  return figure


_FIGURES = {"k": _k_figure, "value": _value_figure, "bars": _bar_figure}


def write_figures(plan: Plan, runs: Sequence[Run], summaries: Sequence[dict],
                  directory: str) -> list[str]:
  """Writes ``<table>.png`` for each table with a plot; returns the paths."""
  os.makedirs(directory, exist_ok=True)
  by_run = {(run.variant.name, run.seed): s for run, s in zip(runs, summaries)}
  paths = []
  for table in plan.tables:
    if not table.plot or not any(r.variant is not None for r in table.rows):
      continue
    figure = _FIGURES[table.plot](table, by_run)
    figure.suptitle(table.title, fontsize="medium")
    figure.tight_layout()
    path = os.path.join(directory, f"{table.name}.png")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    paths.append(path)
  return paths
