"""The papers' experiments in miniature: does training with DIML beat the same loss without
it, does test-time DIML help a trained baseline, and how do epsilon, the grid, the
marginals, the partial mass and K matter -- with seeds, error bars and figures.

  python experiments/clipart.py --results=docs/results          # the published table
  python experiments/clipart.py --seeds=1 --losses=multisimilarity --ablations=k
  python experiments/clipart.py --config=configs/my_data.py --workdir=runs/mine  # your data

Every run is the base config (``--config``, default ``configs/demo.py``: the clip-art
set, EfficientNet-Lite0 frozen, the head trained on cached feature maps for 3 epochs)
with one loss and one way of training (``train.py`` does the training), once per seed;
everything evaluated at test time only is computed from the run's saved test
embeddings. Override any key of the base config as for train.py
(``--config.num_epochs=5``). Results: ``results.md``, CSV files and PNG figures in
``--results`` (default ``<workdir>/results``); the runs in ``--workdir``.

Run the same command again to resume: finished runs are read back, an interrupted run
continues from its checkpoint (diml_jax.sweep.runner). One line per run on the console;
each run's own output is in its directory's ``train.log``.

What varies, and at which stage (the cheapest honest choice for each):

- main table: {--losses} x {trained on the global cosine, trained on DIML's similarity or
  distance} (losses that cannot train on DIML, e.g. ProxyAnchor, say why), each evaluated
  globally and with test-time DIML re-ranking the top K = 10, 50, 100;
- k: R@1 against K (0..200) for the same runs, test time only;
- epsilon, marginals, mass (p): settings of the matching, varied at test time only on
  the runs of ``--ablation_loss`` trained with DIML (trained with the base values);
- grid: the grid size changes the model's parts, so each size is trained and evaluated.
"""
import os
import sys

from absl import flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import baselines  # pylint: disable=g-import-not-at-top
from diml_jax import UsageError, runtime  # pylint: disable=g-import-not-at-top

TRAIN = os.path.join(ROOT, "train.py")
SAVED = os.path.join(ROOT, "configs", "saved.py")
DEMO = os.path.join(ROOT, "configs", "demo.py")

# Losses by recipe name: the published baselines' (configs/baselines.py) and ProxyAnchor.
RECIPES = {**{name: keys for name, (_, keys) in baselines.RECIPES.items()},
           "proxyanchor": {"loss.name": "proxyanchor"}}
# How the loss sees a pair: the global cosine, or DIML's structural quantity (whose global
# term is then the mean of the local embeddings, as in the published DIML code).
TRAINING = {
    "global": ("global", {"loss.diml": False, "model.global_from": "feature_map"}),
    "diml": ("DIML", {"loss.diml": True, "model.global_from": "grid"}),
}
MAIN_KS = (0, 10, 50, 100)
CURVE_KS = (0, 1, 2, 5, 10, 20, 50, 100, 200)
ABLATION_K = 100
EPSILONS = (0.01, 0.02, 0.05, 0.1, 0.2)
GRIDS = (2, 3, 4, 5, 7)
MARGINALS = ("cross", "uniform")
MASSES = (0.25, 0.5, 0.75, 0.9, 1.0)
ABLATIONS = ("k", "epsilon", "marginals", "mass", "grid")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The base config every run overrides (default configs/demo.py).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/clipart", "Where the runs go.")
_RESULTS = flags.DEFINE_string(
    "results", None, "Where results.md, the CSV files and the figures go; default "
    "<workdir>/results.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per configuration (0, 1, ...).",
                              lower_bound=1)
_LOSSES = flags.DEFINE_list(
    "losses", ["margin", "multisimilarity", "proxyanchor", "triplet_semihard"],
    f"Losses of the main table, from: {', '.join(RECIPES)}.")
_ABLATIONS = flags.DEFINE_list(
    "ablations", list(ABLATIONS), f"Ablations to run, from: {', '.join(ABLATIONS)} "
    f"(empty: the main table only).")
_ABLATION_LOSS = flags.DEFINE_string(
    "ablation_loss", "multisimilarity", "The loss of the ablations, trained with DIML.")


def _unknown(flag: str, given: list[str], allowed) -> None:
  wrong = [v for v in given if v not in allowed]
  if wrong:
    raise UsageError(f"--{flag}: {', '.join(map(repr, wrong))} not one of "
                     f"{', '.join(allowed)}.")


def _check_flags() -> None:
  _unknown("losses", _LOSSES.value, RECIPES)
  _unknown("ablations", _ABLATIONS.value, ABLATIONS)
  _unknown("ablation_loss", [_ABLATION_LOSS.value], RECIPES)
  if not _LOSSES.value:
    raise UsageError(f"--losses is empty: give one or more of {', '.join(RECIPES)}.")


def variant(sweep, loss: str, training: str, **extra):
  name = "-".join([loss, training, *(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in extra.items())])
  return sweep.Variant(name, sweep.freeze({**RECIPES[loss], **TRAINING[training][1], **extra}))


def no_diml(registry, loss: str) -> str:
  """Why a loss cannot train on DIML's quantity ('' if it can)."""
  return registry.LOSSES[RECIPES[loss]["loss.name"]].no_diml


def main_tables(sweep, registry, losses, ablations, default):
  rows, comparisons = [], []
  for loss in losses:
    index = {}
    for training, (label, _) in TRAINING.items():
      reason = no_diml(registry, loss) if training == "diml" else ""
      if reason:
        rows.append(sweep.Row((loss, label), None, note=f"n/a: the loss {reason}"))
        continue
      index[training] = len(rows)
      rows.append(sweep.Row((loss, label), variant(sweep, loss, training), default))
      comparisons += [sweep.Comparison(index[training], k, index[training], 0)
                      for k in MAIN_KS[1:]]
    if len(index) == 2:
      comparisons += [sweep.Comparison(index["diml"], k, index["global"], k) for k in MAIN_KS]
  tables = [sweep.Table(
      "main", "Trained on global similarity or with DIML, evaluated globally or re-ranked",
      "Each loss trained on the global cosine or on DIML's structural quantity, then "
      "evaluated by the global cosine or with test-time DIML (the first K of the global "
      "ranking re-ranked by structural + global similarity).",
      ("loss", "trained on"), tuple(rows), MAIN_KS, tuple(comparisons), plot="bars",
      analysis_k=ABLATION_K)]
  if "k" in ablations:
    tables.append(sweep.Table(
        "k", "R@1 against the re-ranking depth K",
        "The runs of the main table, re-ranked at each depth K from the same saved test "
        "embeddings (test time only).",
        ("loss", "trained on"), tuple(r for r in rows if r.variant is not None), CURVE_KS,
        plot="k", metrics=("recall@1",)))
  return tables


def test_time_table(sweep, name, title, column, base_variant, default, key, values, base,
                    **kwargs):
  """An ablation of a matching setting at test time on one trained variant."""
  values = tuple(values) if base in values else tuple(sorted((*values, base)))
  rows = []
  for value in values:
    setting = default if value == base else sweep.Setting(
        f"{name}={value}", (0, ABLATION_K), sweep.freeze({key: value}))
    rows.append(sweep.Row((str(value),), base_variant, setting,
                          value=value if not isinstance(value, str) else None))
  reference = values.index(base)
  comparisons = tuple(sweep.Comparison(i, ABLATION_K, reference, ABLATION_K)
                      for i in range(len(rows)) if i != reference)
  return sweep.Table(
      name, title,
      f"`{key}` at test time only, on the runs of `{base_variant.name}` (trained with "
      f"{key} = {base}); the global ranking does not depend on it. Differences: against "
      f"{base}, at K = {ABLATION_K}.",
      (column,), tuple(rows), (0, ABLATION_K), comparisons, **kwargs)


def ablation_tables(sweep, config, ablations, loss, default):
  main_variant = variant(sweep, loss, "diml")
  tables = []
  if "epsilon" in ablations:
    tables.append(test_time_table(
        sweep, "epsilon", "Entropic regularisation ε (test time)", "ε", main_variant,
        default, "matching.epsilon", EPSILONS, config.matching.epsilon, plot="value",
        log_x=True))
  if "marginals" in ablations:
    tables.append(test_time_table(
        sweep, "marginals", "Cross-correlation against uniform marginals (test time)",
        "marginals", main_variant, default, "matching.marginals", MARGINALS,
        config.matching.marginals, plot="bars"))
  if "mass" in ablations:
    tables.append(test_time_table(
        sweep, "mass", "Partial similarity: matched mass p (test time)", "p",
        main_variant, default, "matching.mass", MASSES, config.matching.mass,
        plot="value"))
  if "grid" in ablations:
    base = config.model.grid_size
    rows = tuple(sweep.Row((str(g),), main_variant if g == base else variant(
        sweep, loss, "diml", **{"model.grid_size": g}), default, value=g) for g in GRIDS)
    reference = GRIDS.index(base)
    tables.append(sweep.Table(
        "grid", "Grid size (trained and evaluated)",
        f"The feature map pooled to g x g parts, each size trained with DIML "
        f"(`{loss}`) and evaluated with it. Differences: against g = {base}, globally "
        f"and at K = {ABLATION_K}.",
        ("grid g",), rows, (0, ABLATION_K),
        tuple(sweep.Comparison(i, k, reference, k) for i in range(len(rows))
              if i != reference for k in (0, ABLATION_K)), plot="value"))
  return tables


def preamble(config, argv) -> str:
  epochs = f"{config.num_epochs} epochs" + (
      f" of {config.steps_per_epoch} steps" if config.steps_per_epoch else "")
  return (
      f"Made by `python {' '.join(argv)}`. Each run: the base config (data "
      f"`{config.data.name}`, backbone `{config.model.backbone}`"
      f"{' frozen, trained on cached feature maps' if config.model.freeze_backbone else ''},"
      f" {config.data.image_size} px) trained for {epochs}, batches of "
      f"{config.batch_size} images ({config.images_per_class} per class), Adam at "
      f"{config.optimizer.lr:g}, {config.model.grid_size} x {config.model.grid_size} parts, "
      f"matching ε = {config.matching.epsilon:g} with {config.matching.marginals} marginals; "
      f"seeds 0..{_SEEDS.value - 1}; mean ± standard deviation over the seeds, in percent. "
      f"The CSV files hold the same numbers (percent) and every seed's.")


def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}: flags only.")
  _check_flags()
  runtime.start()
  from diml_jax import sweep  # pylint: disable=g-import-not-at-top
  from diml_jax.losses import registry  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  reason = no_diml(registry, _ABLATION_LOSS.value)
  if reason and set(_ABLATIONS.value) - {"k"}:
    raise UsageError(f"--ablation_loss={_ABLATION_LOSS.value}: the ablations train with "
                     f"DIML, and this loss {reason}.")
  default = sweep.Setting("default", CURVE_KS if "k" in _ABLATIONS.value else MAIN_KS)
  plan = sweep.Plan(
      tuple(main_tables(sweep, registry, _LOSSES.value, _ABLATIONS.value, default)
            + ablation_tables(sweep, config, _ABLATIONS.value, _ABLATION_LOSS.value,
                              default)),
      seeds=tuple(range(_SEEDS.value)))
  results = _RESULTS.value or os.path.join(_WORKDIR.value, "results")
  try:
    sweep.run_plan(
        plan, config, _WORKDIR.value, results,
        train_command=lambda d: [sys.executable, TRAIN, f"--config={SAVED}:{d}",
                                 f"--workdir={d}"],
        title=f"DIML on {config.data.name}: losses, test-time re-ranking and ablations",
        preamble=preamble(config, COMMAND))
  except KeyboardInterrupt:
    sys.exit("interrupted: run the same command again to resume.")


if __name__ == "__main__":
  COMMAND = [os.path.relpath(sys.argv[0]), *sys.argv[1:]]
  # The default base config goes in as a flag, so that --config.key=value overrides
  # apply to it (a config flag's own default is read before the command line).
  if not any(a.split("=")[0] in ("--config", "-config") for a in sys.argv[1:]):
    sys.argv.insert(1, f"--config={DEMO}")
  runtime.run(main)
