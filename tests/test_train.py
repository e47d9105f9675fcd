"""Training: sharded equals single-device, kill -9 and resume equals uninterrupted, errors.

Everything runs on the synthetic data set with a tiny backbone, so it takes seconds per
run; the processes of the kill-and-resume test are real `train.py`-like runs.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import demo
from diml_jax import data, eval_lib, experiment, train_lib
from diml_jax.experiment import TrainState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  c = demo.get_config()
  c.data.name, c.data.fallback = "synthetic", ""
  c.model.backbone, c.model.pretrained = "efficientnet_lite_tiny", False
  c.model.freeze_backbone = False
  c.data.image_size = c.data.resize_size = 48
  c.data.num_workers = 0
  c.batch_size, c.eval.batch_size = 16, 16
  c.optimizer.lr = 1e-3
  c.eval.with_nmi = False
  for key, value in overrides.items():
    target = c
    *path, last = key.split(".")
    for part in path:
      target = target[part]
    target[last] = value
  return c


def train_on_one_batch(config, mesh, steps=1):
  """Losses and the parameters after ``steps`` updates on `mesh`, all on the same batch,
  from the same state."""
  train_set = data.load("synthetic", "train")
  model = experiment.build_model(config)
  params, batch_stats = experiment.init_variables(config, model, train_set.num_classes)
  tx = experiment.make_optimizer(config, params, steps_per_epoch=10)
  state = experiment.replicate(
      TrainState(step=np.int32(0), params=params, batch_stats=batch_stats,
                 opt_state=tx.init(params)), mesh)
  batch = next(iter(data.train_iterator(
      train_set, batch_size=config.batch_size, image_size=config.data.image_size,
      num_workers=0, normalization=experiment.normalization(model))))
  batch = jax.tree.map(
      lambda x: jax.device_put(x, NamedSharding(mesh, P("data"))), batch)
  loss_mesh = mesh if mesh.size > 1 else None
  step = train_lib.make_train_step(model, train_lib.make_loss(config, loss_mesh), tx, mesh)
  losses = []
  for _ in range(steps):
    state, measurements = step(state, batch, jax.random.key(3))
    losses.append(float(measurements["loss"]))
  return losses, jax.device_get(state.params)


def step_on_1_and_8_devices(config):
  """``[(loss, params)]`` after one training step on a mesh of 1 and of 8 devices."""
  results = []
  for n in (1, 8):
    losses, params = train_on_one_batch(config, single_axis_mesh(n))
    results.append((losses[0], params))
  return results


def single_axis_mesh(n):
  return jax.make_mesh((n,), ("data",), devices=jax.devices()[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))


# Slow tier: in the default tier the sharded losses equal the single-device ones
# (test_losses_sharded) and a 2-process x 2-device run trains as a 1 x 4 one
# (test_multiprocess).
@pytest.mark.slow
@pytest.mark.parametrize("loss", ["multisimilarity", "margin"])
def test_one_step_on_8_devices_equals_one_device(loss):
  """Same loss and parameters to 1e-5 (absolute: Adam's first step, about g / |g|, turns
  float rounding in near-zero gradients into differences of a few 1e-6)."""
  config = tiny_config(**{"loss.name": loss, "data.image_size": 32, "data.resize_size": 32})
  (loss_1, params_1), (loss_8, params_8) = step_on_1_and_8_devices(config)
  assert np.isfinite(loss_1) and loss_1 > 0
  assert abs(loss_1 - loss_8) < 1e-5 * max(1.0, abs(loss_1))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5),
               params_1, params_8)


_RUN = """
import sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from absl import logging
from test_train import tiny_config
from diml_jax import train_lib
if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)  # as under train.py's app.run
  # The global margin loss: resumption is about checkpoints, the data position and the
  # per-step PRNG keys (its miner samples with them), and it compiles in seconds.
  config = tiny_config(**{{"steps_per_epoch": 24, "num_epochs": 1, "eval.every_epochs": 0,
                          "checkpoint_every_steps": 4, "keep_checkpoints": 2,
                          "loss.name": "margin", "loss.diml": False}})
  train_lib.train_and_evaluate(config, sys.argv[1])
"""


def _final_params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.StandardRestore())
  return step, restored["params"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(tmp_path):
  script = tmp_path / "run.py"
  script.write_text(textwrap.dedent(_RUN.format(root=ROOT, tests=os.path.join(ROOT, "tests"))))
  env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

  def run(workdir, **kw):
    return subprocess.Popen([sys.executable, str(script), str(workdir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)

  # One after the other, sharing a compilation cache: the later runs compile nothing.
  straight = run(tmp_path / "straight")
  out_straight = straight.communicate(timeout=600)[0].decode()
  assert straight.returncode == 0, out_straight[-3000:]
  killed = run(tmp_path / "killed")
  # Kill -9 as soon as the run has a finished checkpoint past the first, mid-epoch.
  checkpoints = tmp_path / "killed" / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and killed.poll() is None:
    done = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()] if checkpoints.exists() else []
    if any(s >= 8 for s in done):
      break
    time.sleep(0.01)
  assert killed.poll() is None, "the run finished before it could be killed"
  os.kill(killed.pid, signal.SIGKILL)
  killed.wait()
  killed_at = max(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit())
  assert killed_at < 24
  resumed = run(tmp_path / "killed")
  out_resumed = resumed.communicate(timeout=600)[0].decode()
  assert resumed.returncode == 0, out_resumed[-3000:]
  assert "Resumed from step" in out_resumed
  step_a, params_a = _final_params(tmp_path / "straight")
  step_b, params_b = _final_params(tmp_path / "killed")
  assert step_a == step_b == 24
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def test_bad_config_values_are_named_before_anything_heavy():
  with pytest.raises(ValueError, match=r"config.loss.name='marginn'"):
    experiment.check_config(tiny_config(**{"loss.name": "marginn"}))
  with pytest.raises(ValueError, match=r"config.batch_size=15 must be a multiple"):
    experiment.check_config(tiny_config(batch_size=15))
  with pytest.raises(ValueError, match="pretrained=True"):
    experiment.check_config(tiny_config(**{"model.pretrained": True}))
  with pytest.raises(ValueError, match="proxies"):
    experiment.check_config(tiny_config(**{"loss.name": "proxyanchor", "loss.diml": True}))


@pytest.mark.slow
def test_nan_guard_stops_naming_the_step_and_the_last_checkpoint(tmp_path):
  config = tiny_config(**{"optimizer.lr": 1e38, "steps_per_epoch": 6, "num_epochs": 1,
                          "checkpoint_every_steps": 1, "eval.every_epochs": 0,
                          "loss.name": "margin", "loss.diml": False})
  with pytest.raises(FloatingPointError, match=r"Step \d+: the loss .* not finite") as error:
    train_lib.train_and_evaluate(config, str(tmp_path))
  assert "Last good checkpoint: step" in str(error.value)


def test_training_writes_logs_config_checkpoints_and_evaluation(tmp_path):
  config = tiny_config(**{"steps_per_epoch": 3, "num_epochs": 2, "eval.every_epochs": 2,
                          "checkpoint_every_steps": 2, "log_every_steps": 1,
                          "eval.ks": (0, 10)})
  results = train_lib.train_and_evaluate(config, str(tmp_path))
  assert set(results["metrics"]) == {"0", "10"}
  for name in ("config.json", "metrics.jsonl", "best.json",
               "eval/step_6/retrieval_metrics.json",
               "eval/step_6/embeddings_grid4_px48.npz"):
    assert (tmp_path / name).exists(), name
  assert any((tmp_path / "tensorboard").iterdir())
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len([l for l in lines if '"train/loss"' in l]) == 6
  # A second call finds the run finished and does nothing.
  assert train_lib.train_and_evaluate(config, str(tmp_path)) == {}
  # eval.py's path: the best checkpoint, the cached embeddings, the same metrics, and
  # the HTML report with its flow figures.
  again = eval_lib.run(config, str(tmp_path), explain_results=True)
  assert again["metrics"]["0"] == results["metrics"]["0"]
  out = tmp_path / "eval" / "step_6"
  report = (out / "report.html").read_text()
  figures = sorted(p.name for p in out.glob("flow_query*.png"))
  assert len(figures) == 4 and all((out / f.replace(".png", ".svg")).exists() for f in figures)
  assert "<img" in report and "DIML" in report
