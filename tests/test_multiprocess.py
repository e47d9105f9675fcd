"""Several processes, as a pod runs them: `train.py` and `eval.py` as 2 processes x 2 CPU
devices on this machine, joined by `jax.distributed` (Gloo collectives over TCP), against
the same commands as 1 process x 4 devices.

Every process is the real entry point, started as `python -c` with a Python audit hook
that records the files it opens for writing (then `runpy` runs the script as
`__main__`), so the tests can say which process wrote what. Each has its own log file,
a free port is picked at run time, every process has a deadline, and all of a run's
processes are killed if anything fails.
"""
import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo
from diml_jax import data, evaluation, experiment
from test_train import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# How long any one process of these tests may take (a loaded 2-core machine compiles the
# training step in tens of seconds).
DEADLINE_S = 480

# 24 steps of 16 images: checkpoints every 4 steps (all kept), one evaluation at the end,
# when the periodic checkpoint and the best one are saved at the same step (the two
# managers once met at one Orbax barrier there and hung). The loss is smooth: the global
# contrastive loss with every negative term active (a margin of 2 on unit vectors), as
# a miner's or a hinge's choices can flip on rounding-level differences; lr 1e-4 (the
# papers train at 1e-5), as Adam turns rounding differences of near-zero gradients into
# steps of up to the learning rate.
TRAIN = {"steps_per_epoch": 12, "num_epochs": 2, "eval.every_epochs": 2,
         "checkpoint_every_steps": 4, "keep_checkpoints": 6, "log_every_steps": 4,
         "loss.name": "contrastive", "loss.contrastive.neg_margin": 2.0, "loss.diml": False,
         "optimizer.lr": 1e-4, "eval.ks": (0,), "data.image_size": 32,
         "data.resize_size": 32}
# The two layouts sum gradients across devices in different orders (Gloo between the
# processes); the backbone's ReLUs turn such rounding differences into growing ones once
# a unit's input changes sign in one run only: measured here, 6e-7 up to step 16, then
# 7e-6 at step 20 and 3e-5 at 24. Parameters are compared at step 12.
COMPARED_STEP = 12

# Runs the entry point given as the first argument as __main__, recording in
# $WRITES_LOG every file this process opens for writing, renames or creates.
_WITH_WRITE_LOG = """
import os, runpy, sys
_log = open(os.environ["WRITES_LOG"], "w", buffering=1)
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
def _hook(event, args):
  if event == "open" and isinstance(args[2], int) and args[2] & _WRITE:
    _log.write(f"{os.path.abspath(os.fsdecode(args[0]))}\\n")
  elif event in ("os.rename", "os.mkdir") and isinstance(args[0], (str, bytes, os.PathLike)):
    _log.write(f"{os.path.abspath(os.fsdecode(args[-3] if event == 'os.rename' else args[0]))}\\n")
sys.addaudithook(_hook)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def config_flags(config) -> list[str]:
  """``--config.key=value`` for every value of ``config`` that differs from the demo's,
  so a run of ``train.py --config configs/demo.py`` has exactly ``config``."""
  def flat(d, prefix=""):
    for key, value in d.items():
      if isinstance(value, dict):
        yield from flat(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}", value
  base = dict(flat(demo.get_config().to_dict()))
  return [f"--config.{key}={value}" for key, value in flat(config.to_dict())
          if value != base[key]]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Run:
  """The processes of one run of an entry point, each with its log and its writes."""

  def __init__(self, directory: pathlib.Path, script: str, flags: list[str], *,
               processes: int, devices: int, cache: pathlib.Path):
    directory.mkdir(parents=True, exist_ok=True)
    self.directory = directory
    port = free_port()
    self.procs = []
    for i in range(processes):
      distributed = [] if processes == 1 else [
          "--distributed", f"--coordinator_address=127.0.0.1:{port}",
          f"--num_processes={processes}", f"--process_id={i}"]
      env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu",
             "JAX_NUM_CPU_DEVICES": str(devices), "PYTHONPATH": str(ROOT),
             "JAX_COMPILATION_CACHE_DIR": str(cache),
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "WRITES_LOG": str(self.writes_path(i))}
      with open(self.log_path(i), "w") as log:
        self.procs.append(subprocess.Popen(
            [sys.executable, "-c", _WITH_WRITE_LOG, script, *flags, *distributed],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    self.started = time.time()

  def log_path(self, i):
    return self.directory / f"process{i}.log"

  def writes_path(self, i):
    return self.directory / f"process{i}.writes"

  def log(self, i) -> str:
    return self.log_path(i).read_text(errors="replace")

  def writes(self, i) -> set[str]:
    return set(self.writes_path(i).read_text().split())

  def wait(self, timeout: float = DEADLINE_S) -> list[int]:
    """Return codes; kills every process and fails if one is not done in time."""
    codes = []
    for i, proc in enumerate(self.procs):
      try:
        codes.append(proc.wait(max(1.0, self.started + timeout - time.time())))
      except subprocess.TimeoutExpired:
        self.kill()
        pytest.fail(f"process {i} still running after {timeout} s:\n{self.log(i)[-3000:]}")
    return codes

  def kill(self) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()
    for proc in self.procs:
      proc.wait()

  def check(self) -> None:
    """Waits; fails with the logs unless every process succeeded."""
    codes = self.wait()
    for i, code in enumerate(codes):
      assert code == 0, f"process {i} exited with {code}:\n{self.log(i)[-3000:]}"


@contextlib.contextmanager
def launched(*args, **kwargs):
  """A :class:`Run` whose processes are all killed when the block ends, however."""
  run = Run(*args, **kwargs)
  try:
    yield run
  finally:
    run.kill()


def train(directory, workdir, *, processes, devices=None, cache, extra=()):
  """A finished `train.py` run of :data:`TRAIN` (4 devices in all by default)."""
  flags = ["--config", "configs/demo.py", "--workdir", str(workdir),
           *config_flags(tiny_config(**TRAIN)), *extra]
  with launched(directory, "train.py", flags, processes=processes,
                devices=devices or 4 // processes, cache=cache) as run:
    run.check()
  return run


def restore_params(workdir, step=None, name="checkpoints"):
  """``(step, state)`` of a checkpoint (default the latest), restored into this process."""
  directory = pathlib.Path(workdir, name)
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step() if step is None else step
  tree = ocp.StandardCheckpointer().metadata(directory / str(step) / "default").item_metadata.tree
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  return step, manager.restore(step, args=ocp.args.StandardRestore(abstract))


# What a multi-process run logs about the images each process read.
DECODED = re.compile(r"Process (\d+) of (\d+) decoded (\d+) training images for (\d+) "
                     r"steps of (\d+) rows")
EMBEDDED = re.compile(r"Process (\d+) of (\d+) embedded (\d+) of the (\d+) images")


def numbers(pattern: re.Pattern, log: str) -> list[list[int]]:
  """The numbers of each match of ``pattern`` in ``log``."""
  return [[int(g) for g in m.groups()] for m in pattern.finditer(log)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """One compilation cache for the module's runs: later runs compile less."""
  return tmp_path_factory.mktemp("xla")


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, cache):
  """The uninterrupted training run, 2 processes x 2 devices (shared by the tests)."""
  base = tmp_path_factory.mktemp("two_process")
  run = train(base / "logs", base / "run", processes=2, cache=cache)
  return base / "run", run


@pytest.mark.slow
def test_multiprocess_training_equals_one_process(two_process_run, tmp_path, cache):
  """2 processes x 2 devices: the parameters of 1 process x 4 devices to 1e-5, each
  process decoding only its rows, one checkpoint per step written by both, and the
  evaluation split between the processes with the single-process metrics."""
  workdir, run = two_process_run
  single = tmp_path / "single"
  train(tmp_path / "logs", single, processes=1, cache=cache)
  assert restore_params(workdir)[0] == restore_params(single)[0] == 24
  _, state_2 = restore_params(workdir, COMPARED_STEP)
  _, state_1 = restore_params(single, COMPARED_STEP)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5),
               state_2["params"], state_1["params"])
  moved = max(np.max(np.abs(a - b)) for a, b in zip(
      jax.tree.leaves(state_2["params"]), jax.tree.leaves(initial_params())) if a.size)
  assert moved > 1e-4  # training moved the parameters well beyond the tolerance

  # What each process read: its 8 rows of each of the 24 global batches of 16, and half
  # of the 96 test images (the padded rows of a last batch are not decoded).
  for i in range(2):
    assert numbers(DECODED, run.log(i)) == [[i, 2, 192, 24, 8]], run.log(i)[-2000:]
    assert numbers(EMBEDDED, run.log(i)) == [[i, 2, 48, 96]], run.log(i)[-2000:]

  # Checkpoints: one Orbax checkpoint per step, which both processes wrote a part of.
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [
      "12", "16", "20", "24", "4", "8"]
  assert sorted(p.name for p in (workdir / "best").iterdir()) == ["24"]
  for step in (workdir / "checkpoints" / "24", workdir / "best" / "24"):
    assert (step / "_CHECKPOINT_METADATA").is_file()
    assert {p.name for p in (step / "default").glob("ocdbt.process_*")} == {
        "ocdbt.process_0", "ocdbt.process_1"}

  # Only process 0 wrote files of its own; process 1 wrote only its parts of checkpoints.
  ours = lambda i: {pathlib.Path(p).relative_to(workdir).parts[0]
                    for p in run.writes(i) if p.startswith(str(workdir) + os.sep)}
  assert ours(0) >= {"config.json", "metrics.jsonl", "best.json", "eval", "tensorboard"}
  assert ours(1) <= {"checkpoints", "best"}, ours(1)

  # The evaluation the two processes shared equals one process's, on the embeddings
  # they computed together: each ranked half of the queries.
  out = workdir / "eval" / "step_24"
  results = json.loads((out / "retrieval_metrics.json").read_text())
  alone = evaluation.evaluate(
      evaluation.load_embeddings(out / "embeddings_grid4_px32.npz"), ks=(0,),
      with_nmi=False, devices=jax.devices()[:4], progress=False)
  assert results["metrics"] == alone["metrics"]


def initial_params():
  """The parameters the runs start from."""
  config = tiny_config(**TRAIN)
  model = experiment.build_model(config)
  params, _ = experiment.init_variables(config, model, data.load("synthetic", "train").num_classes)
  return params


# Two checkpoint managers of a run saving the same step at once, as training's periodic
# and best managers do after an evaluation at a checkpoint step.
_TWO_SAVES = """
import sys
import numpy as np
from absl import flags
from diml_jax import runtime
_, workdir = flags.FLAGS(sys.argv)
runtime.start()
import orbax.checkpoint as ocp
from diml_jax import checkpoints as checkpoint_lib
from diml_jax import experiment
state = experiment.replicate({"w": np.arange(1000, dtype=np.float32)}, experiment.make_mesh())
periodic = checkpoint_lib.checkpoint_manager(workdir, "checkpoints", 2)
best = checkpoint_lib.checkpoint_manager(workdir, "best", 1)
periodic.save(6, args=ocp.args.StandardSave(state))
best.save(6, args=ocp.args.StandardSave(state), force=True)
periodic.wait_until_finished()
best.wait_until_finished()
"""


def test_multiprocess_checkpoint_managers_save_one_step_at_once(tmp_path, cache):
  """2 processes, two managers saving step 6 asynchronously at once: both checkpoints
  are written (Orbax's barriers were named after the step alone, so the two saves met
  at one barrier, "Barrier _async_write_complete.6 is already ongoing", and hung)."""
  script = tmp_path / "two_saves.py"
  script.write_text(_TWO_SAVES)
  workdir = tmp_path / "run"
  with launched(tmp_path / "logs", str(script), [str(workdir)], processes=2, devices=2,
                cache=cache) as run:
    codes = run.wait(timeout=240)
  assert codes == [0, 0], run.log(0)[-3000:]
  for name in ("checkpoints", "best"):
    step, state = restore_params(workdir, name=name)
    assert step == 6
    np.testing.assert_array_equal(state["w"], np.arange(1000, dtype=np.float32))


def test_distributed_flags_without_a_cluster_are_a_usage_error(tmp_path):
  """--distributed where JAX detects no cluster and no coordinator is given, or the
  address flags without --distributed: one message naming the flags, exit code 2, no
  traceback, nothing written."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                              "SLURM_", "OMPI_"))}
  for extra, named in ((["--distributed"], "--coordinator_address=HOST:PORT"),
                       (["--num_processes=2"], "add --distributed")):
    out = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/demo.py",
         "--workdir", str(tmp_path / "run"), *extra],
        cwd=ROOT, env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
        timeout=DEADLINE_S)
    assert out.returncode == 2, out.stderr[-2000:]
    assert named in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def finished_steps(directory: pathlib.Path) -> list[int]:
  """Steps of the committed checkpoints in ``directory`` (Orbax renames a step's
  temporary directory to its number when all processes have written their parts)."""
  return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit())


@pytest.mark.slow
def test_multiprocess_run_killed_and_restarted_ends_with_the_same_parameters(
    two_process_run, tmp_path, cache):
  """kill -9 of both processes mid-run, then the same command again on both: the
  parameters of the uninterrupted run, exactly."""
  workdir = tmp_path / "run"
  flags = ["--config", "configs/demo.py", "--workdir", str(workdir),
           *config_flags(tiny_config(**TRAIN))]
  checkpoints = workdir / "checkpoints"
  with launched(tmp_path / "killed", "train.py", flags, processes=2, devices=2,
                cache=cache) as run:
    deadline = time.time() + DEADLINE_S
    while time.time() < deadline and all(p.poll() is None for p in run.procs):
      if checkpoints.exists() and any(s >= 8 for s in finished_steps(checkpoints)):
        break
      time.sleep(0.01)
    assert all(p.poll() is None for p in run.procs), "the run ended before it was killed"
    for proc in run.procs:
      os.kill(proc.pid, signal.SIGKILL)
  killed_at = max(finished_steps(checkpoints))
  assert 8 <= killed_at < 24
  resumed = train(tmp_path / "resumed", workdir, processes=2, cache=cache)
  for i in range(2):
    assert f"Resumed from step {killed_at}" in resumed.log(i)
  step, state = restore_params(workdir)
  uninterrupted_step, uninterrupted = restore_params(two_process_run[0])
  assert step == uninterrupted_step == 24
  jax.tree.map(np.testing.assert_array_equal, state["params"], uninterrupted["params"])


@pytest.mark.slow
def test_distributed_run_ends_when_one_process_dies(tmp_path, cache):
  """kill -9 of process 1 mid-training: process 0, the coordinator, ends on its own
  within the heartbeat timeout (10 s here) plus slack for a loaded machine, with JAX's
  message naming the process that stopped, rather than waiting for it forever."""
  heartbeat_s = 10
  workdir = tmp_path / "run"
  long_run = tiny_config(**{**TRAIN, "steps_per_epoch": 100_000, "num_epochs": 1,
                            "eval.every_epochs": 0})
  flags = ["--config", "configs/demo.py", "--workdir", str(workdir),
           *config_flags(long_run), f"--heartbeat_timeout_seconds={heartbeat_s}"]
  with launched(tmp_path / "logs", "train.py", flags, processes=2, devices=2,
                cache=cache) as run:
    checkpoints = workdir / "checkpoints"
    deadline = time.time() + DEADLINE_S
    while time.time() < deadline and not (checkpoints.exists() and finished_steps(checkpoints)):
      assert all(p.poll() is None for p in run.procs), run.log(0)[-3000:]
      time.sleep(0.05)
    os.kill(run.procs[1].pid, signal.SIGKILL)
    killed = time.time()
    try:
      code = run.procs[0].wait(timeout=heartbeat_s + 60)
    except subprocess.TimeoutExpired:
      pytest.fail(f"process 0 still running {heartbeat_s + 60} s after process 1 died")
    ended_after = time.time() - killed
  log = run.log(0)
  assert code != 0
  assert ended_after < heartbeat_s + 60
  assert "stopped sending heartbeats" in log and "another task died" in log, log[-3000:]


@pytest.mark.slow
def test_multiprocess_evaluation_equals_one_process(two_process_run, tmp_path, cache):
  """eval.py with structural re-ranking on 2 processes x 2 devices: each process embeds
  half of the test images and ranks half of the queries; embeddings and metrics are
  exactly those of 1 process x 4 devices; process 1 writes nothing."""
  trained, _ = two_process_run
  runs = {}
  for processes in (2, 1):
    workdir = tmp_path / f"run{processes}"
    shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("eval"))
    flags = ["--config", "configs/demo.py", "--workdir", str(workdir),
             *config_flags(tiny_config(**{**TRAIN, "eval.ks": (0, 10)}))]
    with launched(tmp_path / f"logs{processes}", "eval.py", flags, processes=processes,
                  devices=4 // processes, cache=cache) as run:
      run.check()
    runs[processes] = workdir, run
  (two, run), (one, _) = runs[2], runs[1]
  out = pathlib.Path("eval", "step_24")
  metrics = [json.loads((w / out / "retrieval_metrics.json").read_text())["metrics"]
             for w in (two, one)]
  assert set(metrics[0]) == {"0", "10"}
  assert metrics[0] == metrics[1]
  embeddings = [evaluation.load_embeddings(w / out / "embeddings_grid4_px32.npz")
                for w in (two, one)]
  for a, b in zip(*embeddings):
    np.testing.assert_array_equal(a, b)
  for i in range(2):
    assert numbers(EMBEDDED, run.log(i)) == [[i, 2, 48, 96]], run.log(i)[-2000:]
  assert not [p for p in run.writes(1) if p.startswith(str(two) + os.sep)]
  assert {str(two / out / "retrieval_metrics.json"),
          str(two / out / "embeddings_grid4_px32.npz")} <= run.writes(0)
