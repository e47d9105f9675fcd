"""A sweep's results as tables: mean ± standard deviation over seeds, differences paired
by seed against their standard error, in Markdown and CSV.

Every number is in percent (Recall@1, MAP@R and the share of queries whose first result
re-ranking changes), except correlations. A difference between two cells is taken seed
by seed (the same seed gives both runs the same initialisation and batches; two
evaluations of one run share everything but the setting), and reported as the mean of
the per-seed differences ± its standard error ``sd / sqrt(n)``; it "exceeds 2 SE" if its
magnitude is more than twice that. With 3 seeds this is a screen, not a test at 95%
(Student's t with 2 degrees of freedom needs 4.3 standard errors).
"""
from __future__ import annotations

import csv
import math
import os
from typing import Any, NamedTuple, Sequence

import numpy as np

from diml_jax.sweep.plan import Comparison, Plan, Row, Run, Table

__all__ = ["METRICS", "Difference", "Stat", "cell_values", "depth_name", "describe",
           "paired_difference", "write_results"]

# Headers of the metrics tables may show (keys of the evaluation's metrics).
METRICS = {"recall@1": "R@1", "map@r": "MAP@R", "r_precision": "R-Precision"}
AGREEMENT = (("pearson", "Pearson r", 1.0), ("spearman", "Spearman ρ within top K", 1.0),
             ("top1_changed", "top 1 changed (%)", 100.0),
             ("top1_fixed", "wrong → right (%)", 100.0),
             ("top1_broken", "right → wrong (%)", 100.0))


class Stat(NamedTuple):
  """Mean and sample standard deviation (``ddof=1``; 0 for one value) of per-seed values."""
  mean: float
  std: float
  n: int
  values: tuple[float, ...]


class Difference(NamedTuple):
  """Mean of per-seed differences, its standard error (NaN for one seed), and whether
  the mean is more than 2 standard errors from 0."""
  mean: float
  se: float
  n: int
  exceeds: bool


def describe(values: Sequence[float]) -> Stat:
  values = tuple(float(v) for v in values)
  if not values:
    return Stat(math.nan, math.nan, 0, ())
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return Stat(float(np.mean(values)), std, len(values), values)


def paired_difference(a: dict[int, float], b: dict[int, float]) -> Difference:
  """``a - b`` over the seeds both have."""
  seeds = sorted(set(a) & set(b))
  d = np.array([a[s] - b[s] for s in seeds], np.float64)
  if not len(d):
    return Difference(math.nan, math.nan, 0, False)
  if len(d) == 1:
    return Difference(float(d[0]), math.nan, 1, False)
  se = float(np.std(d, ddof=1) / math.sqrt(len(d)))
  mean = float(d.mean())
  return Difference(mean, se, len(d), abs(mean) > 2 * se)


def depth_name(k: int) -> str:
  return "global" if k == 0 else f"K={k}"


def cell_values(row: Row, k: int, metric: str, summaries: dict[tuple[str, int], dict]
                ) -> dict[int, float]:
  """``{seed: value in percent}`` of a row's metric at depth ``k``, for the seeds run."""
  found = {}
  for (variant, seed), summary in summaries.items():
    if variant == row.variant.name:
      evaluation = summary["evaluations"].get(row.setting.name)
      if evaluation and str(k) in evaluation["metrics"]:
        found[seed] = 100.0 * evaluation["metrics"][str(k)][metric]
  return found


def _agreement_values(row: Row, key: str, summaries: dict) -> list[float]:
  return [s["analysis"][key] for (variant, _), s in sorted(summaries.items())
          if variant == row.variant.name and "analysis" in s]


def _label(row: Row) -> str:
  return " / ".join(row.label)


def _comparison_label(table: Table, c: Comparison) -> str:
  a, b = _label(table.rows[c.a]), _label(table.rows[c.b])
  if c.a == c.b:
    return f"{a}: {depth_name(c.ka)} − {depth_name(c.kb)}"
  if c.ka == c.kb:
    return f"{a} − {b}, {depth_name(c.ka)}"
  return f"{a}, {depth_name(c.ka)} − {b}, {depth_name(c.kb)}"


def _cell(stat: Stat) -> str:
  if not stat.n:
    return "–"
  return f"{stat.mean:.2f} ± {stat.std:.2f}" if stat.n > 1 else f"{stat.mean:.2f}"


def _difference_cell(d: Difference) -> str:
  if not d.n:
    return "–"
  mean = d.mean if round(d.mean, 2) else 0.0  # no "-0.00"
  if d.n == 1:
    return f"{mean:+.2f} (1 seed)"
  text = f"{mean:+.2f} ± {d.se:.2f}"
  return f"**{text}** (> 2 SE)" if d.exceeds else text


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
          *("| " + " | ".join(r) + " |" for r in rows)]


def _differences(table: Table, summaries: dict) -> list[tuple[Comparison, str, Difference]]:
  found = []
  for c in table.comparisons:
    for metric in table.metrics:
      found.append((c, metric, paired_difference(
          cell_values(table.rows[c.a], c.ka, metric, summaries),
          cell_values(table.rows[c.b], c.kb, metric, summaries))))
  return found


def _table_markdown(table: Table, summaries: dict) -> list[str]:
  lines = [f"## {table.title}", "", table.description, ""]
  header = [*table.columns, *(f"{METRICS.get(m, m)} {depth_name(k)}" for m in table.metrics
                              for k in table.ks)]
  rows = []
  for row in table.rows:
    if row.variant is None:
      cells = [row.note] + [""] * (len(header) - len(row.label) - 1)
    else:
      cells = [_cell(describe(cell_values(row, k, metric, summaries).values()))
               for metric in table.metrics for k in table.ks]
    rows.append([*row.label, *cells])
  lines += _markdown_table(header, rows)
  differences = _differences(table, summaries)
  if differences:
    exceeding = sum(d.exceeds for _, _, d in differences)
    lines += ["", f"Differences, paired by seed (points; mean ± standard error; **bold**: "
                  f"more than 2 standard errors from 0, {exceeding} of {len(differences)}):",
              ""]
    by_comparison = {}
    for c, metric, d in differences:
      by_comparison.setdefault(c, {})[metric] = d
    lines += _markdown_table(
        ["difference", "seeds", *(f"Δ {METRICS.get(m, m)}" for m in table.metrics)],
        [[_comparison_label(table, c), str(max(d.n for d in found.values())),
          *(_difference_cell(found[metric]) for metric in table.metrics)]
         for c, found in by_comparison.items()])
  if table.analysis_k is not None:
    lines += ["", f"Structural against global similarity on each query's first "
                  f"{table.analysis_k} global neighbours, and what re-ranking them does to "
                  f"the first result (mean ± sd over seeds):", ""]
    lines += _markdown_table(
        [*table.columns, *(name for _, name, _ in AGREEMENT)],
        [[*row.label, *(_cell(describe([scale * v for v in _agreement_values(
            row, key, summaries)])) for key, _, scale in AGREEMENT)]
         for row in table.rows if row.variant is not None])
  if table.plot:
    lines += ["", f"![{table.title}]({table.name}.png)"]
  return lines + [""]


def _time_markdown(summaries: dict) -> list[str]:
  training = [s["training"]["seconds"] for s in summaries.values()]
  evaluating = [sum(e["seconds"] for e in s["evaluations"].values())
                + s.get("analysis", {}).get("seconds", 0.0) for s in summaries.values()]
  load = [s["training"]["load_average"] for s in summaries.values()]
  return [f"{len(summaries)} runs: training {sum(training) / 60:.1f} min, evaluation from "
          f"the saved embeddings {sum(evaluating) / 60:.1f} min (sums over the runs, each "
          f"as timed when it finished); load average (1 min) at the end of each training: "
          f"mean {np.mean(load):.1f}, max {np.max(load):.1f}, on {os.cpu_count()} CPUs.", ""]


def _write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return path


def _round(value: float, digits: int = 4) -> float | str:
  return "" if value is None or math.isnan(value) else round(value, digits)


def write_results(plan: Plan, runs: Sequence[Run], summaries: Sequence[dict],
                  directory: str, *, title: str, preamble: str = "") -> list[str]:
  """Writes ``results.md``, ``results.csv`` (each cell), ``differences.csv`` (each
  comparison), ``runs.csv`` (each run, setting and depth) and ``agreement.csv``.

  Returns:
    The paths written.
  """
  os.makedirs(directory, exist_ok=True)
  by_run = {(run.variant.name, run.seed): s for run, s in zip(runs, summaries)}
  markdown = [f"# {title}", ""] + ([preamble, ""] if preamble else []) + _time_markdown(by_run)
  cells, differences = [], []
  for table in plan.tables:
    markdown += _table_markdown(table, by_run)
    for row in table.rows:
      if row.variant is None:
        continue
      for k in row.setting.ks:
        for metric in table.metrics:
          stat = describe(cell_values(row, k, metric, by_run).values())
          cells.append([table.name, _label(row), k, metric, stat.n, _round(stat.mean),
                        _round(stat.std), ";".join(f"{v:.4f}" for v in stat.values)])
    differences += [[table.name, _comparison_label(table, c), metric, d.n, _round(d.mean),
                     _round(d.se), d.exceeds] for c, metric, d in _differences(table, by_run)]
  metric_names = sorted({m for s in summaries for e in s["evaluations"].values()
                         for row in e["metrics"].values() for m in row})
  per_run = [[run.variant.name, run.seed, name, k,
              *(_round(100 * row[m]) if m != "queries" else row[m] for m in metric_names),
              _round(s["training"]["seconds"], 1)]
             for run, s in zip(runs, summaries) for name, e in s["evaluations"].items()
             for k, row in e["metrics"].items()]
  agreement = [[run.variant.name, run.seed, s["analysis"]["setting"], s["analysis"]["k"],
                *(_round(scale * s["analysis"][key]) for key, _, scale in AGREEMENT)]
               for run, s in zip(runs, summaries) if "analysis" in s]
  markdown_path = os.path.join(directory, "results.md")
  with open(markdown_path, "w") as f:
    f.write("\n".join(markdown))
  return [
      markdown_path,
      _write_csv(os.path.join(directory, "results.csv"),
                 ["table", "row", "K", "metric", "seeds", "mean", "std", "values"], cells),
      _write_csv(os.path.join(directory, "differences.csv"),
                 ["table", "difference", "metric", "seeds", "mean", "se", "exceeds_2se"],
                 differences),
      _write_csv(os.path.join(directory, "runs.csv"),
                 ["variant", "seed", "setting", "K", *metric_names, "train_seconds"], per_run),
      _write_csv(os.path.join(directory, "agreement.csv"),
                 ["variant", "seed", "setting", "K", *(key for key, _, _ in AGREEMENT)],
                 agreement),
  ]
