"""Sweeps: the re-ranking analysis against a loop over pairs, the statistics against
hand-computed numbers, plans that check themselves, figures of every kind, and the
runner's resuming (skip, evaluate a new setting, restart cleanly) with a stand-in for
train.py that writes what training writes. The real command end to end:
tests/test_experiments.py."""
import csv
import io
import math
import os
import sys
import textwrap

import matplotlib.image
import numpy as np
import pytest
from scipy import stats

from configs import demo
from diml_jax import UsageError, evaluation, matching
from diml_jax.sweep import analysis, plots, runner, table
from diml_jax.sweep.plan import Comparison, Plan, Row, Setting, Table, Variant, freeze


def clustered_embeddings(seed, n_classes=6, per_class=5, parts=4, dim=8, spread=0.6):
  """Classes as random directions; items and their parts scattered around them."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(n_classes, parts, dim))
  labels = np.repeat(np.arange(n_classes), per_class)
  local = centres[labels] + spread * rng.normal(size=(len(labels), parts, dim))
  return evaluation.Embeddings(local.mean(1).astype(np.float32), local.astype(np.float32),
                               labels.astype(np.int32))


def test_rerank_agreement_against_a_loop_over_pairs():
  emb = clustered_embeddings(0, spread=1.2)
  g, x, labels = emb.global_, emb.local, emb.labels
  k = 6
  found = analysis.rerank_agreement(emb, k=k, marginals="uniform")
  unit = g / np.linalg.norm(g, axis=1, keepdims=True)
  cos = unit @ unit.T
  structural_all, cos_all, spearman, changed, fixed, broken = [], [], [], 0, 0, 0
  for q in range(len(labels)):
    others = [j for j in range(len(labels)) if j != q]
    # Global order: cosine descending, ties by index.
    top = sorted(others, key=lambda j: (-cos[q, j], j))[:k]
    structural = [float(matching.match(x[q], x[j], g[q], g[j], marginals="uniform").similarity)
                  for j in top]
    score = [s + cos[q, j] for s, j in zip(structural, top)]
    best = top[int(np.argmax(score))]
    structural_all += structural
    cos_all += [cos[q, j] for j in top]
    spearman.append(stats.spearmanr(structural, [cos[q, j] for j in top]).statistic)
    changed += best != top[0]
    fixed += labels[best] == labels[q] and labels[top[0]] != labels[q]
    broken += labels[best] != labels[q] and labels[top[0]] == labels[q]
  n = len(labels)
  assert found["k"] == k
  assert changed > 0  # the data were drawn so that re-ranking matters
  np.testing.assert_allclose(found["pearson"], np.corrcoef(structural_all, cos_all)[0, 1],
                             atol=1e-4)
  np.testing.assert_allclose(found["spearman"], np.mean(spearman), atol=1e-4)
  assert (found["top1_changed"], found["top1_fixed"], found["top1_broken"]) == (
      changed / n, fixed / n, broken / n)
  # fixed - broken is the change of Recall@1 that the evaluation measures.
  results = evaluation.evaluate(emb, ks=(0, k), marginals="uniform", with_nmi=False,
                                progress=False)["metrics"]
  np.testing.assert_allclose(found["top1_fixed"] - found["top1_broken"],
                             results[str(k)]["recall@1"] - results["0"]["recall@1"])
  with pytest.raises(ValueError, match="local features"):
    analysis.rerank_agreement(emb._replace(local=None), k=k)


def test_statistics_against_hand_computed_numbers():
  s = table.describe([70.0, 71.0, 75.0])
  assert s.mean == pytest.approx(72.0)
  assert s.std == pytest.approx(math.sqrt((4 + 1 + 9) / 2))  # sample sd, n - 1
  assert table.describe([3.0]).std == 0.0
  # Per-seed differences 1, 2, 3 (seed 9 has no partner): mean 2, sd 1, se 1 / sqrt(3).
  d = table.paired_difference({0: 11.0, 1: 12.0, 2: 13.0, 9: 50.0}, {0: 10.0, 1: 10.0, 2: 10.0})
  assert (d.n, d.mean) == (3, pytest.approx(2.0))
  assert d.se == pytest.approx(1 / math.sqrt(3))
  assert d.exceeds  # 2 > 2 x 0.577
  noisy = table.paired_difference({0: 10.0, 1: 14.0, 2: 9.0}, {0: 10.0, 1: 10.0, 2: 10.0})
  assert noisy.mean == pytest.approx(1.0) and not noisy.exceeds  # sd 2.65, se 1.53
  single = table.paired_difference({0: 2.0}, {0: 1.0})
  assert single.n == 1 and math.isnan(single.se) and not single.exceeds


def test_plans_check_themselves():
  v, s = Variant("a"), Setting("default", (0, 10))
  with pytest.raises(ValueError, match="not at the shown"):
    Table("t", "T", "", ("x",), (Row(("1",), v, s),), ks=(0, 100))
  with pytest.raises(ValueError, match="labels"):
    Table("t", "T", "", ("x", "y"), (Row(("1",), v, s),), ks=(0,))
  with pytest.raises(ValueError, match="not a runnable row"):
    Table("t", "T", "", ("x",), (Row(("1",), None, note="n/a"),), ks=(0,),
          comparisons=(Comparison(0, 0, 0, 0),))
  with pytest.raises(ValueError, match="directory"):
    Variant("a/b")
  one = Table("t", "T", "", ("x",), (Row(("1",), v, s),), ks=(0,))
  other = Table("u", "U", "", ("x",), (Row(("1",), Variant("a", freeze({"seed": 1})), s),),
                ks=(0,))
  with pytest.raises(ValueError, match="two variants named 'a'"):
    Plan((one, other), seeds=(0,))
  # Rows of several tables that share a variant share its runs, seed by seed.
  shared = Table("w", "W", "", ("x",), (Row(("1",), v, Setting("other", (0,))),), ks=(0,))
  runs = Plan((one, shared), seeds=(0, 1)).runs()
  assert [(r.variant.name, r.seed, [x.name for x in r.settings]) for r in runs] == [
      ("a", 0, ["default", "other"]), ("a", 1, ["default", "other"])]


def fake_summaries(variants, settings, seeds):
  """Summaries as the runner writes them, with made-up metrics."""
  rng = np.random.default_rng(0)
  return {(v, seed): {"evaluations": {s.name: {"metrics": {
      str(k): {"recall@1": rng.uniform(0.5, 0.9), "map@r": rng.uniform(0.2, 0.4)}
      for k in s.ks}} for s in settings}} for v in variants for seed in seeds}


def test_figures_of_every_kind(tmp_path):
  default = Setting("default", (0, 1, 5, 100))
  settings = [default] + [Setting(f"e{e}", (0, 100), freeze({"matching.epsilon": e}))
                          for e in (0.01, 0.1)]
  rows = (Row(("a",), Variant("a"), default), Row(("b",), Variant("b"), default),
          Row(("c",), None, note="n/a"))
  epsilon_rows = tuple(Row((str(e),), Variant("a"), s, value=e)
                       for e, s in zip((0.05, 0.01, 0.1), settings))
  plan = Plan((Table("k", "K", "", ("x",), rows, (0, 1, 5, 100), plot="k"),
               Table("eps", "E", "", ("ε",), epsilon_rows, (0, 100), plot="value", log_x=True),
               Table("bars", "B", "", ("x",), rows, (0, 100), plot="bars"),
               Table("none", "N", "", ("x",), rows, (0,))), seeds=(0, 1))
  runs = plan.runs()
  summaries = fake_summaries(("a", "b"), settings, (0, 1))
  paths = plots.write_figures(plan, runs, [summaries[(r.variant.name, r.seed)] for r in runs],
                              str(tmp_path))
  assert sorted(os.path.basename(p) for p in paths) == ["bars.png", "eps.png", "k.png"]
  for path in paths:
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05  # not blank


FAKE_TRAIN = textwrap.dedent("""\
    # Stands in for train.py: what a finished run leaves (the last checkpoint, the test
    # embeddings of its evaluation), from the run's config.json; with a checkpoint at the
    # last step it has nothing to do, as train.py.
    import json, os, sys
    import numpy as np
    directory = sys.argv[1]
    with open(os.path.join(os.environ["FAKE_CALLS"]), "a") as f:
      f.write(directory + "\\n")
    mode = os.environ.get("FAKE_MODE", "ok")
    if mode == "usage":
      print("train.py: error: --config.loss.name='x' is not one of (...).", file=sys.stderr)
      sys.exit(2)
    if mode == "crash":
      print("Traceback (most recent call last):\\nRuntimeError: boom")
      sys.exit(1)
    config = json.load(open(os.path.join(directory, "config.json")))
    step = config["num_epochs"] * config["steps_per_epoch"]
    checkpoint = os.path.join(directory, "checkpoints", str(step))
    if os.path.isdir(checkpoint):
      sys.exit(0)
    os.makedirs(checkpoint)
    rng = np.random.default_rng(config["seed"] + 10 * config["model"]["grid_size"])
    labels = np.repeat(np.arange(5), 4).astype(np.int32)
    local = rng.normal(size=(5, 3, 8))[labels] + rng.normal(size=(20, 3, 8))
    out = os.path.join(directory, "eval", f"step_{step}")
    os.makedirs(out)
    np.savez(os.path.join(out, "embeddings_grid4_px32.npz"), global_=local.mean(1),
             local=local, labels=labels)
    """)


def fake_setup(tmp_path, monkeypatch):
  script = tmp_path / "fake_train.py"
  script.write_text(FAKE_TRAIN)
  monkeypatch.setenv("FAKE_CALLS", str(tmp_path / "calls.log"))
  base = demo.get_config()
  base.data.name, base.data.fallback = "synthetic", ""
  base.num_epochs, base.steps_per_epoch, base.eval.with_nmi = 1, 3, False
  default = Setting("default", (0, 5))
  rows = (Row(("grid 4",), Variant("g4"), default),
          Row(("grid 2",), Variant("g2", freeze({"model.grid_size": 2})), default))
  plan = Plan((Table("main", "Main", "", ("grid",), rows, (0, 5),
                     comparisons=(Comparison(1, 5, 0, 5), Comparison(0, 5, 0, 0)),
                     analysis_k=5),), seeds=(0, 1))
  return base, plan, lambda d: [sys.executable, str(script), d]


def calls(tmp_path):
  path = tmp_path / "calls.log"
  return path.read_text().splitlines() if path.exists() else []


def test_runner_runs_resumes_and_restarts_cleanly(tmp_path, monkeypatch):
  monkeypatch.setenv("FAKE_MODE", "ok")
  base, plan, command = fake_setup(tmp_path, monkeypatch)
  work, results = str(tmp_path / "runs"), str(tmp_path / "results")

  def run(plan=plan, base=base):
    out = io.StringIO()
    summaries = runner.run_plan(plan, base, work, results, train_command=command,
                                title="T", out=out)
    return summaries, out.getvalue().splitlines()

  first, lines = run()
  assert len(calls(tmp_path)) == 4  # 2 variants x 2 seeds, each trained once
  assert [l.split(":")[0] for l in lines[:4]] == [
      "[1/4] g4 seed 0", "[2/4] g2 seed 0", "[3/4] g4 seed 1", "[4/4] g2 seed 1"]
  assert all("R@1" in l and "left" in l for l in lines[:4])
  # The table's cells are the seeds' mean and sample sd of what each run measured.
  cells = {(r["row"], r["K"], r["metric"]): r for r in _csv(results, "results.csv")}
  for row_index, variant in ((0, "g4"), (1, "g2")):
    for k in (0, 5):
      values = [100 * s["evaluations"]["default"]["metrics"][str(k)]["map@r"]
                for s in first if s["variant"] == variant]
      cell = cells[(f"grid {2 if row_index else 4}", str(k), "map@r")]
      assert float(cell["mean"]) == pytest.approx(np.mean(values), abs=1e-4)
      assert float(cell["std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-4)
  # Each run's evaluation is that of its saved embeddings.
  saved = evaluation.load_embeddings(
      str(tmp_path / "runs" / "g2" / "seed1" / first[3]["training"]["embeddings"]))
  expected = evaluation.evaluate(saved, ks=(0, 5), with_nmi=False, progress=False)
  assert first[3]["evaluations"]["default"]["metrics"] == expected["metrics"]
  assert {"pearson", "top1_changed"} <= set(first[3]["analysis"])
  markdown = open(os.path.join(results, "results.md")).read()
  assert "| grid | R@1 global | R@1 K=5 | MAP@R global | MAP@R K=5 |" in markdown
  assert "grid 2 − grid 4, K=5" in markdown and "Pearson r" in markdown

  # Again: every run is read back, nothing trains or evaluates.
  again, lines = run()
  assert len(calls(tmp_path)) == 4
  assert all("done before" in l for l in lines[:4])
  assert again == first

  # A new test-time setting: evaluated from the saved embeddings, nothing trains.
  epsilon = Setting("epsilon=0.1", (0, 5), freeze({"matching.epsilon": 0.1}))
  extended = Plan(plan.tables + (Table("eps", "E", "", ("ε",), (
      Row(("0.1",), Variant("g4"), epsilon),), (5,)),), seeds=plan.seeds)
  more, lines = run(extended)
  assert len(calls(tmp_path)) == 4
  assert "epsilon=0.1" in more[0]["evaluations"] and "epsilon=0.1" not in more[1]["evaluations"]
  assert more[0]["evaluations"]["default"] == first[0]["evaluations"]["default"]

  # Stopped after training's last checkpoint, before its evaluation saved the test
  # embeddings: the run has nothing left to train, so it starts again, cleanly.
  directory = tmp_path / "runs" / "g2" / "seed0"
  os.remove(directory / "summary.json")
  for npz in (directory / "eval").rglob("*.npz"):
    os.remove(npz)
  restarted, lines = run()
  assert calls(tmp_path)[4:] == [str(directory)] * 2  # nothing to do, then from scratch
  assert (restarted[1]["evaluations"]["default"]["metrics"]
          == first[1]["evaluations"]["default"]["metrics"])

  # Another base config: the old runs are not mixed in.
  other = base.copy_and_resolve_references()
  other.num_epochs = 2
  with pytest.raises(UsageError, match=r"trained with another config \(.*num_epochs differ"):
    run(base=other)


def _csv(directory, name):
  with open(os.path.join(directory, name)) as f:
    return list(csv.DictReader(f))


@pytest.mark.parametrize("mode, error, message", [
    ("usage", UsageError, "g4 seed 0: train.py: error: --config.loss.name='x'"),
    ("crash", RuntimeError, "exit code 1(.|\n)*RuntimeError: boom"),
])
def test_a_failing_run_stops_the_sweep_with_its_log(tmp_path, monkeypatch, mode, error, message):
  monkeypatch.setenv("FAKE_MODE", mode)
  base, plan, command = fake_setup(tmp_path, monkeypatch)
  with pytest.raises(error, match=message):
    runner.run_plan(plan, base, str(tmp_path / "runs"), str(tmp_path / "results"),
                    train_command=command, title="T", out=io.StringIO())
  assert len(calls(tmp_path)) == 1


def test_a_bad_override_is_a_usage_error_before_anything_runs(tmp_path, monkeypatch):
  base, plan, command = fake_setup(tmp_path, monkeypatch)
  bad = Plan((Table("t", "T", "", ("x",), (
      Row(("1",), Variant("v", freeze({"loss.lerning_rate": 1.0})), Setting("d", (0,))),),
      (0,)),), seeds=(0,))
  with pytest.raises(UsageError, match="variant 'v'.*lerning_rate"):
    runner.run_plan(bad, base, str(tmp_path / "runs"), str(tmp_path / "r"),
                    train_command=command, title="T")
  worse = Plan((Table("t", "T", "", ("x",), (
      Row(("1",), Variant("v"), Setting("d", (0,), freeze({"matching.mass": 2.0}))),),
      (0,)),), seeds=(0,))
  with pytest.raises(UsageError, match="matching.mass=2.0"):
    runner.run_plan(worse, base, str(tmp_path / "runs"), str(tmp_path / "r"),
                    train_command=command, title="T")
  assert calls(tmp_path) == [] and not (tmp_path / "runs").exists()
