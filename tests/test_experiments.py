"""experiments/clipart.py as a user runs it: the whole command on a tiny grid (1 seed, 2
trained configurations on the synthetic set with a tiny backbone, a few steps) writes its
table, CSV files and figures with our lines only on the console, a second invocation
reads every run back, and a mistake is one message with exit code 2."""
import concurrent.futures
import csv
import json
import os
import re
import subprocess
import sys

import matplotlib.image
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "clipart.py")
TINY = [
    "--seeds=1", "--losses=multisimilarity", "--ablations=",
    "--config.data.name=synthetic", "--config.data.fallback=",
    "--config.model.backbone=efficientnet_lite_tiny", "--config.model.pretrained=False",
    "--config.data.image_size=32", "--config.data.resize_size=32", "--config.batch_size=16",
    "--config.eval.batch_size=16", "--config.num_epochs=1", "--config.steps_per_epoch=3",
    "--config.eval.with_nmi=False", "--config.checkpoint_every_steps=3",
]


def _env(tmp):
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
          "DIML_JAX_CACHE": str(tmp / "cache"), "JAX_COMPILATION_CACHE_DIR": str(tmp / "xla"),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def _run(tmp, args, cwd=None):
  return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd or tmp, env=_env(tmp),
                        capture_output=True, text=True, timeout=600)


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_the_command_end_to_end_then_resumed(tmp_path):
  work, results = tmp_path / "runs", tmp_path / "results"
  args = [f"--workdir={work}", f"--results={results}", *TINY]
  first = _run(tmp_path, args)
  assert first.returncode == 0, first.stderr[-3000:]
  # Our lines only: one per run, then what was written.
  lines = first.stdout.splitlines()
  assert len(lines) == 3, first.stdout
  for line, name in zip(lines, ("multisimilarity-global", "multisimilarity-diml")):
    assert re.match(rf"\[\d/2\] {name} seed 0: \d+ s, R@1 [\d.]+ -> [\d.]+ at K=\d+ \| "
                    rf"[\d:]+ elapsed, ~[\d:]+ left$", line), line
  assert lines[2].startswith("2 runs in ") and str(results) in lines[2]
  assert not re.search(r"Traceback|Warning|^[IWEF]\d{4} ", first.stderr, re.M), first.stderr

  cells = {(r["table"], r["row"], r["K"], r["metric"]): r
           for r in _rows(results / "results.csv")}
  assert {(t, row) for t, row, _, _ in cells} == {
      ("main", "multisimilarity / global"), ("main", "multisimilarity / DIML")}
  assert all(0 <= float(r["mean"]) <= 100 and r["seeds"] == "1" for r in cells.values())
  # The sweep's global R@1 is the one training measured on the same embeddings.
  for training in ("global", "diml"):
    trained = json.loads(next((work / f"multisimilarity-{training}" / "seed0" / "eval").glob(
        "step_3/retrieval_metrics.json")).read_text())
    label = "DIML" if training == "diml" else "global"
    assert float(cells[("main", f"multisimilarity / {label}", "0", "recall@1")]["mean"]) == (
        pytest.approx(100 * trained["metrics"]["0"]["recall@1"], abs=1e-3))
  differences = _rows(results / "differences.csv")
  assert len(differences) == 2 * (2 * 3 + 4)  # metrics x (K vs global, DIML vs global)
  assert {r["exceeds_2se"] for r in differences} == {"False"}  # one seed: no error bars
  markdown = (results / "results.md").read_text()
  for expected in ("| loss | trained on | R@1 global | R@1 K=10 | R@1 K=50 | R@1 K=100 |",
                   "| multisimilarity | global | ", "| multisimilarity | DIML | ",
                   "(main.png)", "Pearson r"):
    assert expected in markdown, markdown
  assert (results / "main.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert matplotlib.image.imread(results / "main.png").shape[1] > 400
  logs = {p: p.stat().st_size for p in work.rglob("train.log")}
  assert len(logs) == 2

  again = _run(tmp_path, args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert [l.split(": ", 1)[1].split(" (")[0] for l in again.stdout.splitlines()[:2]] == [
      "done before"] * 2, again.stdout
  assert {p: p.stat().st_size for p in work.rglob("train.log")} == logs  # nothing trained
  assert (results / "results.md").read_text() == markdown


MISTAKES = [
    (["--seeds=0"], "--seeds"),
    (["--losses=margin,nope"], "--losses: 'nope' not one of"),
    (["--ablations=grid,eps"], "--ablations: 'eps' not one of"),
    (["--config.lerning_rate=0.1"], "the config has no key 'lerning_rate'"),
    (["--bogus"], "unknown flag --bogus"),
    (["--ablation_loss=proxyanchor"], "--ablation_loss=proxyanchor: the ablations train "
                                      "with DIML"),
]


def test_a_mistake_is_one_message_exit_code_2_and_nothing_written(tmp_path):
  def run(case):
    args, _ = case
    cwd = tmp_path / "cwd" / str(MISTAKES.index(case))
    cwd.mkdir(parents=True)
    return _run(tmp_path, args, cwd=cwd), sorted(os.listdir(cwd))

  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    outcomes = list(pool.map(run, MISTAKES))
  for (args, message), (out, written) in zip(MISTAKES, outcomes):
    assert out.returncode == 2, (args, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("clipart.py: error: ") and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) <= 4, out.stderr
    assert written == [], (args, written)
