"""The entry points as a user meets them: a mistake is one message and exit code 2, a
normal run's console carries our lines only, and `eval.py --workdir` alone evaluates a run.

Every test runs the real `train.py` / `eval.py` in a subprocess, from an empty working
directory, so that anything they write there shows.
"""
import concurrent.futures
import json
import os
import re
import subprocess
import sys

import pytest

from configs import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, EVAL = os.path.join(ROOT, "train.py"), os.path.join(ROOT, "eval.py")
SOP = os.path.join(ROOT, "configs", "sop_margin.py")
DEMO = os.path.join(ROOT, "configs", "demo.py")

# (name, entry point, arguments, what the message must say). "{tmp}" is a directory of
# the test: "{tmp}/wrong_root" exists and holds no data set, "{tmp}/no_config" is an
# empty directory, "{tmp}/no_checkpoint" a run directory with a config but no checkpoint.
MISTAKES = [
    ("no_config", TRAIN, [], "--config is required"),
    ("negative_cpu_devices", TRAIN, ["--config", DEMO, "--cpu_devices=-1"],
     "--cpu_devices=-1: give a number of devices >= 1, or 0 for one per core"),
    ("unknown_flag", TRAIN, ["--config", SOP, "--bogus=1"], "unknown flag --bogus"),
    ("missing_config_file", TRAIN, ["--config", "configs/nope.py"],
     "--config=configs/nope.py: no such file"),
    ("value_of_the_wrong_type", TRAIN, ["--config", SOP, "--config.batch_size=abc"],
     "--config.batch_size=abc"),
    ("unknown_key", TRAIN, ["--config", SOP, "--config.lerning_rate=0.1"],
     "--config.lerning_rate: the config has no key 'lerning_rate'"),
    ("unknown_section", TRAIN, ["--config", SOP, "--config.nope.key=1"],
     "--config.nope.key: the config has no key 'nope'"),
    ("moved_key", TRAIN, ["--config", SOP, "--config.sinkhorn.epsilon=0.1"],
     r"--config.sinkhorn.epsilon has moved: set --config.matching.epsilon instead"),
    ("eval_moved_key", EVAL, ["--workdir", "{tmp}/no_checkpoint", "--config.loss.partial_mass=0.5"],
     r"--config.loss.partial_mass has moved: set --config.matching.mass instead"),
    ("negative_learning_rate", TRAIN, ["--config", SOP, "--config.optimizer.lr=-0.1"],
     "--config.optimizer.lr=-0.1 must be > 0"),
    ("unknown_loss", TRAIN, ["--config", SOP, "--config.loss.name=marginn"],
     "--config.loss.name='marginn' is not one of"),
    ("no_data_root", TRAIN, ["--config", SOP],
     r"sop needs --config.data.root=DIR(.|\n)*Ebay_train.txt(.|\n)*Get it: https://"),
    ("wrong_data_root", TRAIN, ["--config", SOP, "--config.data.root={tmp}/wrong_root"],
     r"--config.data.root=\S*wrong_root does not hold the sop data set(.|\n)*Found: "
     r"an empty directory(.|\n)*Get it: "),
    ("eval_without_workdir", EVAL, [], "--workdir is required"),
    ("eval_workdir_missing", EVAL, ["--workdir", "{tmp}/nowhere"],
     r"--workdir=\S*nowhere: no such directory"),
    ("eval_workdir_without_config", EVAL, ["--workdir", "{tmp}/no_config"],
     r"--workdir=\S*no_config holds no config.json"),
    ("eval_workdir_without_checkpoint", EVAL, ["--workdir", "{tmp}/no_checkpoint"],
     r"--workdir=\S*no_checkpoint holds no checkpoint"),
]


def _env(tmp):
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
          "JAX_COMPILATION_CACHE_DIR": str(tmp / "xla"),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory):
  """``{name: (returncode, stderr, files written in the working directory)}``; the
  programs run four at a time (each spends its seconds importing JAX)."""
  tmp = tmp_path_factory.mktemp("mistakes")
  (tmp / "wrong_root").mkdir()
  (tmp / "no_config").mkdir()
  (tmp / "no_checkpoint").mkdir()
  (tmp / "no_checkpoint" / "config.json").write_text(json.dumps(_tiny_config_json()))

  def run(case):
    name, program, args, _ = case
    cwd = tmp / "cwd" / name
    cwd.mkdir(parents=True)
    out = subprocess.run([sys.executable, program, *(a.format(tmp=tmp) for a in args)],
                         cwd=cwd, env=_env(tmp), capture_output=True, text=True, timeout=300)
    return name, (out.returncode, out.stderr, sorted(os.listdir(cwd)))

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    return dict(pool.map(run, MISTAKES))


def _tiny_config_json():
  """configs/demo.py as train.py saves it, on the synthetic set with a tiny backbone."""
  c = demo.get_config()
  c.data.name, c.data.fallback = "synthetic", ""
  c.model.backbone, c.model.pretrained = "efficientnet_lite_tiny", False
  return json.loads(c.to_json_best_effort())


@pytest.mark.parametrize("name, program, args, message", MISTAKES,
                         ids=[case[0] for case in MISTAKES])
def test_a_mistake_is_one_message_exit_code_2_and_nothing_written(
    mistakes, name, program, args, message):
  returncode, stderr, written = mistakes[name]
  assert returncode == 2, stderr
  assert "Traceback" not in stderr, stderr
  assert re.search(message, stderr), stderr
  lines = stderr.strip().splitlines()
  assert lines[0].startswith(f"{os.path.basename(program)}: error: "), stderr
  assert len(lines) <= 8, stderr  # one message: a line or a short block
  assert written == [], written


# A run of a few steps on the synthetic set with a tiny backbone and the global loss
# (compiled in seconds), decoded by a worker process (whose shared memory is what
# leaked), evaluated with DIML's re-ranking at its end.
TINY = [
    "--config.data.name=synthetic", "--config.data.fallback=",
    "--config.model.backbone=efficientnet_lite_tiny", "--config.model.pretrained=False",
    "--config.model.freeze_backbone=False", "--config.data.image_size=32",
    "--config.data.resize_size=32", "--config.batch_size=16", "--config.eval.batch_size=16",
    "--config.steps_per_epoch=3", "--config.num_epochs=1", "--config.eval.every_epochs=1",
    "--config.eval.with_nmi=False", "--config.data.num_workers=1", "--config.loss.diml=False",
    "--config.checkpoint_every_steps=3",
]


def _library_noise(stderr: str) -> list[str]:
  """Lines of stderr that are not ours: tracebacks, warnings, absl W/E/F records."""
  lines = re.split(r"[\r\n]+", stderr)
  return [l for l in lines if re.search(r"Traceback|Warning|WARNING|^[WEF]\d{4} ", l)]


def _table(stdout: str) -> list[str]:
  return [l for l in stdout.splitlines() if re.match(r"(global|10|50) ", l)]


def test_train_then_eval_with_the_workdir_alone_print_our_lines_only(tmp_path):
  """The demo's two commands on a tiny config: clean consoles; eval.py, given only the
  run's directory, reads its config.json and its checkpoint (not the embeddings
  training cached: they are removed) and prints training's table again. Training runs
  on the CPU split into 2 devices (``--cpu_devices``, as ``make demo`` does), evaluation
  on one."""
  workdir = tmp_path / "run"
  train = subprocess.run(
      [sys.executable, TRAIN, "--config", DEMO, "--workdir", str(workdir), "--cpu_devices=2",
       *TINY],
      cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
  assert train.returncode == 0, train.stderr[-3000:]
  assert _library_noise(train.stderr) == [], train.stderr[-3000:]
  assert " on 2 devices" in train.stderr
  trained = _table(train.stdout)
  assert len(trained) == 3, train.stdout
  for cache in (workdir / "eval").glob("step_*/*.npz"):
    cache.unlink()
  evaluated = subprocess.run(
      [sys.executable, EVAL, "--workdir", str(workdir)],
      cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert _library_noise(evaluated.stderr) == [], evaluated.stderr[-3000:]
  assert _table(evaluated.stdout) == trained
  assert list((workdir / "eval").glob("step_3/*.npz"))  # embedded again
