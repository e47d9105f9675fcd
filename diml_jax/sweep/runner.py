"""Executes a :class:`~diml_jax.sweep.plan.Plan`: trains each run, evaluates it from its
saved test embeddings, and writes the tables and figures. Resumable, one line per run.

Each run trains in its own process (the ``train_command`` the caller gives, normally
``train.py``, i.e. :func:`diml_jax.train_lib.train_and_evaluate`) in
``<workdir>/<variant>/seed<s>/``, its output in ``train.log`` there; training evaluates
only the global ranking, once, at its end, and saves the test embeddings
(``eval/step_N/embeddings_*.npz``). Every :class:`~diml_jax.sweep.plan.Setting` of the
run is then evaluated from those embeddings in this process
(:func:`diml_jax.eval_lib.evaluate_embeddings`), and the results, with the training time
and the load average, go to the run's ``summary.json``.

**Resuming.** Run the same command again. A run whose ``summary.json`` holds all its
evaluations is skipped; a setting added to the plan is evaluated from the saved
embeddings; a run interrupted while training continues from its latest checkpoint
(``train_and_evaluate`` resumes); a run that finished training but was stopped before
its embeddings were saved is trained again from scratch. A run directory whose
``config.json`` differs from the plan's config is an error (a changed base config would
otherwise mix old and new results): delete it or use another work directory.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Sequence, TextIO

import ml_collections

from diml_jax import eval_lib, evaluation, experiment
from diml_jax.errors import UsageError
from diml_jax.runtime import USAGE_EXIT_CODE
from diml_jax.sweep import analysis, plots, table
from diml_jax.sweep.plan import Overrides, Plan, Run, Setting

__all__ = ["run_config", "evaluation_config", "run_directory", "run_plan"]

SUMMARY = "summary.json"
LOG = "train.log"


def _apply(config: ml_collections.ConfigDict, overrides: Overrides, what: str
           ) -> ml_collections.ConfigDict:
  config = config.copy_and_resolve_references()
  config.lock()  # a key that does not exist is a mistake, not a new key
  try:
    config.update_from_flattened_dict(dict(overrides))
  except (KeyError, AttributeError, TypeError) as e:
    raise UsageError(f"{what}: the override {dict(overrides)} does not fit the config: "
                     f"{e}") from None
  return config


def run_config(base: ml_collections.ConfigDict, run: Run) -> ml_collections.ConfigDict:
  """The config a run trains with: ``base``, the variant's overrides, the run's seed;
  training evaluates the global ranking once, at its end (the sweep evaluates the rest)."""
  config = _apply(base, run.variant.overrides, f"variant {run.variant.name!r}")
  config.seed = run.seed
  config.eval.ks = (0,)
  config.eval.every_epochs = config.num_epochs
  return config


def evaluation_config(config: ml_collections.ConfigDict, setting: Setting
                      ) -> ml_collections.ConfigDict:
  """A run's config with a setting's test-time overrides and depths."""
  config = _apply(config, setting.overrides, f"setting {setting.name!r}")
  config.eval.ks = tuple(setting.ks)
  return config


def run_directory(workdir: str, run: Run) -> str:
  return os.path.join(workdir, run.variant.name, f"seed{run.seed}")


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _config_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def _differing_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
  keys = []
  for key in sorted(set(a) | set(b)):
    x, y = a.get(key), b.get(key)
    if isinstance(x, dict) and isinstance(y, dict):
      keys += _differing_keys(x, y, f"{prefix}{key}.")
    elif x != y:
      keys.append(prefix + key)
  return keys


def _check_directory(directory: str, config: ml_collections.ConfigDict) -> None:
  saved = _read_json(os.path.join(directory, "config.json"))
  if saved is None:
    return
  differing = _differing_keys(saved, _config_dict(config))
  if differing:
    raise UsageError(
        f"{directory} was trained with another config ({', '.join(differing[:5])} "
        f"differ{'...' if len(differing) > 5 else ''}): delete it, or give another --workdir.")


def _final_embeddings(directory: str) -> tuple[int, str] | None:
  """``(step, path)`` of the test embeddings of the last checkpoint's evaluation."""
  checkpoints = os.path.join(directory, "checkpoints")
  steps = [int(s) for s in os.listdir(checkpoints) if s.isdigit()] if os.path.isdir(
      checkpoints) else []
  if not steps:
    return None
  found = glob.glob(os.path.join(directory, "eval", f"step_{max(steps)}", "embeddings_*.npz"))
  return (max(steps), os.path.relpath(found[0], directory)) if len(found) == 1 else None


def _tail(path: str, lines: int = 8) -> list[str]:
  """The last non-empty lines of a log (progress bars' carriage returns as line ends)."""
  with open(path, errors="replace") as f:
    text = f.read().replace("\r", "\n")
  return [line for line in text.splitlines() if line.strip()][-lines:]


def _train(run: Run, config, directory: str, command: list[str]) -> dict[str, Any]:
  """Trains (or resumes) a run in its own process; returns what its summary records."""
  start = time.perf_counter()
  for attempt in range(2):
    os.makedirs(directory, exist_ok=True)
    experiment.save_config(config, directory)  # what the command reads (configs/saved.py)
    log = os.path.join(directory, LOG)
    with open(log, "a") as out:
      code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL).returncode
    if code == USAGE_EXIT_CODE:
      raise UsageError(f"{run.name}: " + "\n".join(_tail(log, 4)))
    if code:
      raise RuntimeError(f"{run.name}: training failed (exit code {code}); the end of "
                         f"{log}:\n" + "\n".join(_tail(log)))
    found = _final_embeddings(directory)
    if found:
      step, embeddings = found
      return {"seconds": time.perf_counter() - start, "step": step,
              "embeddings": embeddings, "load_average": os.getloadavg()[0]}
    if attempt == 0:
      # Trained to the end by an earlier invocation that stopped before its evaluation
      # saved the test embeddings: start again, cleanly.
      shutil.rmtree(directory)
  raise RuntimeError(f"{run.name}: training ended without test embeddings in {directory}.")


def _overrides(setting: Setting) -> dict[str, Any]:
  """A setting's overrides as its JSON record reads back."""
  return json.loads(json.dumps(dict(setting.overrides)))


def _is_current(record: dict | None, setting: Setting) -> bool:
  return (record is not None and record["ks"] == list(setting.ks)
          and record["overrides"] == _overrides(setting))


def _analysis_is_current(summary: dict, run: Run) -> bool:
  if run.analysis is None:
    return True
  setting, k = run.analysis
  found = summary.get("analysis")
  return (found is not None and found["setting"] == setting.name
          and found["requested_k"] == k and found["overrides"] == _overrides(setting))


def _is_done(summary: dict | None, run: Run) -> bool:
  return (summary is not None and "training" in summary
          and all(_is_current(summary["evaluations"].get(s.name), s) for s in run.settings)
          and _analysis_is_current(summary, run))


def _execute(run: Run, config, directory: str, command: list[str]) -> dict[str, Any]:
  """Trains (if needed) and evaluates one run; its summary, saved after every step."""
  path = os.path.join(directory, SUMMARY)
  summary = _read_json(path) or {"variant": run.variant.name, "seed": run.seed,
                                 "overrides": dict(run.variant.overrides), "evaluations": {}}
  if "training" not in summary:
    summary["training"] = _train(run, config, directory, command)
    experiment.write_json(path, summary)
  embeddings = evaluation.load_embeddings(
      os.path.join(directory, summary["training"]["embeddings"]))
  for setting in run.settings:
    if not _is_current(summary["evaluations"].get(setting.name), setting):
      results = eval_lib.evaluate_embeddings(evaluation_config(config, setting), embeddings,
                                             progress=False)
      summary["evaluations"][setting.name] = {
          "ks": list(setting.ks), "overrides": _overrides(setting),
          "metrics": results["metrics"], "nmi": results["nmi"], "f1": results["f1"],
          "seconds": sum(results["seconds"].values())}
      experiment.write_json(path, summary)
  if not _analysis_is_current(summary, run):
    setting, k = run.analysis
    options = eval_lib.rerank_options(evaluation_config(config, setting))
    start = time.perf_counter()
    found = analysis.rerank_agreement(embeddings, k=k, **options)
    summary["analysis"] = {"setting": setting.name, "requested_k": k,
                           "overrides": _overrides(setting),
                           "seconds": time.perf_counter() - start, **found}
    experiment.write_json(path, summary)
  return summary


def _clock(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _headline(run: Run, summary: dict) -> str:
  """R@1 of the run's first setting: global and at its largest depth."""
  setting = run.settings[0]
  metrics = summary["evaluations"][setting.name]["metrics"]
  ks = sorted(metrics, key=int)
  line = f"R@1 {100 * metrics[ks[0]]['recall@1']:.2f}"
  if len(ks) > 1:
    line += f" -> {100 * metrics[ks[-1]]['recall@1']:.2f} at K={ks[-1]}"
  return line


def run_plan(plan: Plan, base: ml_collections.ConfigDict, workdir: str, results_dir: str, *,
             train_command: Callable[[str], Sequence[str]], title: str, preamble: str = "",
             out: TextIO | None = None) -> list[dict[str, Any]]:
  """Runs (or resumes) every run of ``plan``, then writes the results.

  Args:
    plan: the sweep.
    base: the config every variant overrides.
    workdir: where the runs' directories go.
    results_dir: where ``results.md``, the CSV files and the figures go.
    train_command: ``run directory -> command line`` that trains the run whose
      ``config.json`` is in that directory, into it (``train.py --config
      configs/saved.py:DIR --workdir DIR``).
    title: the heading of ``results.md``.
    preamble: Markdown after the heading (the command, the protocol).
    out: where the progress lines go (default stdout).

  Returns:
    The runs' summaries, in the order of :meth:`Plan.runs`.

  Raises:
    UsageError: a variant's or a setting's config is not valid (checked for every run
      before anything starts), or a run directory holds another config.
  """
  out = out or sys.stdout
  runs = plan.runs()
  configs = [run_config(base, run) for run in runs]
  for run, config in zip(runs, configs):  # every mistake before the first run starts
    experiment.check_config(config)
    for setting in run.settings:
      experiment.check_config(evaluation_config(config, setting))
    _check_directory(run_directory(workdir, run), config)

  start, executed = time.perf_counter(), []
  summaries = []
  width = len(str(len(runs)))
  for i, (run, config) in enumerate(zip(runs, configs), start=1):
    directory = run_directory(workdir, run)
    summary = _read_json(os.path.join(directory, SUMMARY))
    prefix = f"[{i:>{width}}/{len(runs)}] {run.name}:"
    if _is_done(summary, run):
      print(f"{prefix} done before ({os.path.join(directory, SUMMARY)})", file=out, flush=True)
    else:
      t = time.perf_counter()
      summary = _execute(run, config, directory, list(train_command(directory)))
      executed.append(time.perf_counter() - t)
      left = sum(executed) / len(executed) * (len(runs) - i)
      print(f"{prefix} {executed[-1]:.0f} s, {_headline(run, summary)} | "
            f"{_clock(time.perf_counter() - start)} elapsed, ~{_clock(left)} left",
            file=out, flush=True)
    summaries.append(summary)
  written = table.write_results(plan, runs, summaries, results_dir, title=title,
                                preamble=preamble)
  written += plots.write_figures(plan, runs, summaries, results_dir)
  print(f"{len(runs)} runs in {_clock(time.perf_counter() - start)}; wrote "
        + ", ".join(os.path.basename(p) for p in written) + f" to {results_dir}",
        file=out, flush=True)
  return summaries
