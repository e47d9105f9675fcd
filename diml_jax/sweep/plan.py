"""What a sweep runs and reports: trained variants x seeds, the test-time settings each
trained model is evaluated with, and the tables that read the results.

A :class:`Plan` is data: an experiment script builds one (e.g. ``experiments/clipart.py``)
and :func:`diml_jax.sweep.runner.run_plan` executes it. Two kinds of change are kept
apart, because they cost very differently:

- a :class:`Variant` changes training (``{"loss.name": "margin", "model.grid_size": 3}``):
  each variant is trained once per seed;
- a :class:`Setting` changes only the evaluation (``{"matching.epsilon": 0.1}`` and the
  re-ranking depths ``K``): it is computed from a trained run's saved test embeddings,
  without training or embedding again.

A :class:`Table` is a list of :class:`Row` s, each a (variant, setting) pair, shown at
some depths ``K`` with mean and standard deviation over the seeds, and
:class:`Comparison` s between its cells (paired by seed).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, NamedTuple

__all__ = ["Comparison", "Overrides", "Plan", "Row", "Run", "Setting", "Table", "Variant",
           "freeze"]

# Dotted config keys and their values, sorted (hashable): (("loss.name", "margin"), ...).
Overrides = tuple[tuple[str, Any], ...]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")
PLOTS = ("", "k", "value", "bars")


def freeze(overrides: Mapping[str, Any]) -> Overrides:
  """``{"loss.name": "margin"}`` as sorted :data:`Overrides`."""
  return tuple(sorted(overrides.items()))


def _check_name(kind: str, name: str) -> None:
  if not _NAME.match(name):
    raise ValueError(f"{kind} name {name!r} must be letters, digits and '_.=+-' (it names "
                     f"a directory or a file).")


@dataclasses.dataclass(frozen=True)
class Variant:
  """A trained configuration: ``overrides`` of the base config, trained once per seed.

  Attributes:
    name: names its runs' directory (``<workdir>/<name>/seed<s>``).
    overrides: dotted config keys.
  """
  name: str
  overrides: Overrides = ()

  def __post_init__(self):
    _check_name("variant", self.name)


@dataclasses.dataclass(frozen=True)
class Setting:
  """How a trained model is evaluated from its saved test embeddings.

  Attributes:
    name: the evaluation's key in a run's results.
    ks: re-ranking depths ``K`` computed (0: the global ranking).
    overrides: dotted config keys that apply at test time only (``matching.*``).
  """
  name: str
  ks: tuple[int, ...]
  overrides: Overrides = ()

  def __post_init__(self):
    _check_name("setting", self.name)
    if not self.ks or min(self.ks) < 0:
      raise ValueError(f"setting {self.name!r}: ks must be depths >= 0; got {self.ks}.")


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of a table: a variant evaluated with a setting.

  Attributes:
    label: the row's text in each of the table's label columns.
    variant: what is trained; None for a combination that cannot run (``note`` says why).
    setting: how it is evaluated.
    value: the row's position on the x axis of a ``"value"`` plot (e.g. epsilon).
    note: shown instead of numbers when ``variant`` is None.
  """
  label: tuple[str, ...]
  variant: Variant | None
  setting: Setting | None = None
  value: float | None = None
  note: str = ""


class Comparison(NamedTuple):
  """Row ``a`` at depth ``ka`` minus row ``b`` at depth ``kb``, paired by seed."""
  a: int
  ka: int
  b: int
  kb: int


@dataclasses.dataclass(frozen=True)
class Table:
  """A results table (Markdown and CSV) and its figure.

  Attributes:
    name: file name of its figure (``<name>.png``) and its key in the CSV files.
    title: its heading.
    description: what varies, whether it is trained or only evaluated, what is fixed.
    columns: headers of the label columns (one per entry of :attr:`Row.label`).
    rows: the rows.
    ks: the depths shown (each in every runnable row's setting).
    comparisons: differences whose size against their standard error is reported.
    plot: ``"k"`` (R@1 against ``K``, every computed depth, one line per row),
      ``"value"`` (R@1 and MAP@R against :attr:`Row.value`, one line per shown ``K``),
      ``"bars"`` (the same as bars, one group per row), or ``""`` (no figure).
    log_x: a logarithmic x axis (``"value"`` plots).
    analysis_k: if set, each row's runs also get
      :func:`diml_jax.sweep.analysis.rerank_agreement` at this depth, with the row's setting.
    metrics: the metrics shown (keys of the evaluation's metrics).
  """
  name: str
  title: str
  description: str
  columns: tuple[str, ...]
  rows: tuple[Row, ...]
  ks: tuple[int, ...]
  comparisons: tuple[Comparison, ...] = ()
  plot: str = ""
  log_x: bool = False
  analysis_k: int | None = None
  metrics: tuple[str, ...] = ("recall@1", "map@r")

  def __post_init__(self):
    _check_name("table", self.name)
    if self.plot not in PLOTS:
      raise ValueError(f"table {self.name!r}: plot must be one of {PLOTS}; got {self.plot!r}.")
    for row in self.rows:
      if len(row.label) != len(self.columns):
        raise ValueError(f"table {self.name!r}: row {row.label} has {len(row.label)} labels "
                         f"for the columns {self.columns}.")
      if row.variant is None:
        continue
      if row.setting is None:
        raise ValueError(f"table {self.name!r}: row {row.label} has a variant and no setting.")
      missing = set(self.ks) - set(row.setting.ks)
      if missing:
        raise ValueError(f"table {self.name!r}: row {row.label} is evaluated at "
                         f"K = {row.setting.ks}, not at the shown {sorted(missing)}.")
      if self.plot == "value" and row.value is None:
        raise ValueError(f"table {self.name!r}: a 'value' plot needs every row's value.")
    for c in self.comparisons:
      for index, k in ((c.a, c.ka), (c.b, c.kb)):
        if not 0 <= index < len(self.rows) or self.rows[index].variant is None:
          raise ValueError(f"table {self.name!r}: comparison {c} names row {index}, which "
                           f"is not a runnable row.")
        if k not in self.rows[index].setting.ks:
          raise ValueError(f"table {self.name!r}: comparison {c} reads K={k}, which row "
                           f"{index} does not compute.")


class Run(NamedTuple):
  """One training run of a plan and what is computed from its test embeddings.

  Attributes:
    variant: what is trained.
    seed: the config's seed (initialisation, batches, keys).
    settings: its evaluations.
    analysis: ``(setting, K)`` of its :func:`~diml_jax.sweep.analysis.rerank_agreement`,
      or None.
  """
  variant: Variant
  seed: int
  settings: tuple[Setting, ...]
  analysis: tuple[Setting, int] | None

  @property
  def name(self) -> str:
    return f"{self.variant.name} seed {self.seed}"


@dataclasses.dataclass(frozen=True)
class Plan:
  """Tables over a set of seeds.

  Attributes:
    tables: the tables; rows of different tables that share a variant share its runs.
    seeds: every runnable row is trained and evaluated once per seed.
  """
  tables: tuple[Table, ...]
  seeds: tuple[int, ...]

  def __post_init__(self):
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"seeds must be distinct and at least one; got {self.seeds}.")
    names = [t.name for t in self.tables]
    if len(set(names)) != len(names):
      raise ValueError(f"table names must be distinct; got {names}.")
    self.runs()  # one definition per variant and setting name

  def runs(self) -> list[Run]:
    """The runs, seed by seed (a complete table per seed comes first), variants in the
    order the tables name them."""
    variants: dict[str, Variant] = {}
    settings: dict[str, dict[str, Setting]] = {}
    analyses: dict[str, tuple[Setting, int]] = {}
    for table in self.tables:
      for row in table.rows:
        if row.variant is None:
          continue
        v = row.variant
        if variants.setdefault(v.name, v) != v:
          raise ValueError(f"two variants named {v.name!r}: {variants[v.name]} and {v}.")
        known = settings.setdefault(v.name, {})
        s = row.setting
        if known.setdefault(s.name, s) != s:
          raise ValueError(f"variant {v.name!r}: two settings named {s.name!r}: "
                           f"{known[s.name]} and {s}.")
        if table.analysis_k is not None:
          analysis = (s, table.analysis_k)
          if analyses.setdefault(v.name, analysis) != analysis:
            raise ValueError(f"variant {v.name!r}: two analyses asked for, "
                             f"{analyses[v.name]} and {analysis}.")
    return [Run(v, seed, tuple(settings[name].values()), analyses.get(name))
            for seed in self.seeds for name, v in variants.items()]
