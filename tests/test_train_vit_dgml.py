"""Training with the two extensions: DIML on a ViT (rollout marginals, partial similarity)
and DGML's attentive grouping.

Default tier: the losses the training step computes against references written here (a
float64 NumPy attention rollout and match(mass=p) pair by pair; the per-group losses plus
a NumPy diversity loss; each group's margin loss with its own beta, and its gradient, in
float64), the weight file reached from the config, the config checks, and the refusal of a
checkpoint with one beta shared by the groups. Slow tier: short training runs of each on
the synthetic set, and the ViT step on 8 devices.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import torch

from configs import cars_dgml, cub_dgml, cub_vit_diml, inshop_dgml, sop_dgml
from diml_jax import UsageError, data, eval_lib, experiment, losses, matching, miners, models
from diml_jax import checkpoints as checkpoint_lib, train_lib
from diml_jax.losses import registry
from diml_jax.models.grid import grid_pool_matrix
from tests.models.torch_reference import TorchViT
from tests.test_train import (single_axis_mesh, step_on_1_and_8_devices, tiny_config,
                              train_on_one_batch)

LABELS = np.array([0, 0, 1, 1, 2, 2, 3, 3])
MASS = 0.5


def vit_config(**overrides):
  """ViT-tiny + DIML: rollout marginals over the last 2 of 3 blocks, half the mass matched."""
  return tiny_config(**{
      "model.backbone": "vit_tiny", "data.image_size": 48, "data.resize_size": 48,
      "matching.marginals": "weights", "matching.mass": MASS, "model.rollout_blocks": 2,
      "model.global_from": "feature_map", **overrides})


def dgml_config(**overrides):
  """DGML on the tiny ResNet: 3 groups of 8 dimensions, diversity weight 0.02."""
  return tiny_config(**{
      "model.backbone": "resnet_tiny", "model.head": "grouping", "model.embed_dim": 24,
      "loss.diml": False, "loss.diversity_weight": 0.02, "eval.ks": (0,),
      "data.image_size": 32, "data.resize_size": 32, **overrides})


def rollout_float64(attentions, last):
  """Truncated attention rollout, image by image and block by block, in float64: heads
  averaged, identity added, rows renormalised, the last ``last`` blocks composed; the class
  token's row over the patches."""
  blocks = [np.asarray(a, np.float64) for a in attentions][-last:]
  b, _, n, _ = blocks[0].shape
  relevance = np.zeros((b, n - 1))
  for i in range(b):
    r = np.eye(n)
    for a in blocks:
      step = a[i].mean(0) + np.eye(n)
      step /= step.sum(1, keepdims=True)
      r = step @ r
    relevance[i] = r[0, 1:]
  return relevance


@pytest.fixture(scope="module")
def vit_outputs():
  """The ViT-tiny embedding model's outputs on 8 random 48 px images (3x3 patches)."""
  config = vit_config()
  model = experiment.build_model(config)
  params, _ = experiment.init_variables(config, model, num_classes=4)
  images = jax.random.normal(jax.random.key(1), (8, 48, 48, 3))
  global_, aux = jax.jit(model.apply)({"params": params["model"]}, images)
  return config, global_, aux


def test_vit_part_weights_are_the_truncated_rollout_pooled_to_the_grid(vit_outputs):
  config, _, aux = vit_outputs
  relevance = rollout_float64(aux["attentions"], last=2).reshape(8, 3, 3)
  rows = grid_pool_matrix(3, config.model.grid_size)
  expected = np.einsum("gh,bhw,kw->bgk", rows, relevance, rows).reshape(8, -1)
  np.testing.assert_allclose(aux["part_weights"], expected, rtol=1e-5, atol=1e-7)
  # Truncation matters here: the rollout over all 3 blocks differs.
  everything = rollout_float64(aux["attentions"], last=3).reshape(8, 3, 3)
  assert np.abs(np.einsum("gh,bhw,kw->bgk", rows, everything, rows).reshape(8, -1)
                - expected).max() > 1e-3


def _reference_matrices(global_, aux):
  """DIML similarity and distance of every pair from match(mass=p) with float64-rollout
  marginals: (sum T*S / p + cos) / 2 and (sum T*D / p + ||g_a - g_b||) / 2."""
  local = np.asarray(aux["local"])
  weights = rollout_float64(aux["attentions"], last=2).reshape(8, 3, 3)
  rows = grid_pool_matrix(3, 4)
  weights = np.einsum("gh,bhw,kw->bgk", rows, weights, rows).reshape(8, -1)
  g = np.asarray(global_, np.float64)
  g /= np.linalg.norm(g, axis=1, keepdims=True)
  similarity, distance = np.zeros((8, 8)), np.zeros((8, 8))
  for a in range(8):
    for b in range(8):
      m = matching.match(local[a], local[b], global_[a], global_[b], mass=MASS,
                         marginals=(weights[a], weights[b]))
      s, flow = np.asarray(m.part_similarity, np.float64), np.asarray(m.flow, np.float64)
      local_d = np.sqrt(np.maximum(2 - 2 * s, 0) + 1e-6)  # criteria/margin_diml.py's floor
      global_d = np.sqrt(max(2 - 2 * g[a] @ g[b], 0) + 1e-6)
      similarity[a, b] = (float(m.similarity) + g[a] @ g[b]) / 2
      distance[a, b] = ((flow * local_d).sum() / MASS + global_d) / 2
  return similarity, distance


def test_vit_rollout_partial_losses_equal_partial_matching_pair_by_pair(vit_outputs):
  config, global_, aux = vit_outputs
  similarity, distance = _reference_matrices(global_, aux)
  labels = jnp.asarray(LABELS)
  key = jax.random.key(0)
  ms = train_lib.make_loss(config, None)({}, global_, aux, labels, key)
  expected = losses.multi_similarity_loss(jnp.asarray(similarity, jnp.float32), labels,
                                          **config.loss.multisimilarity)
  assert float(ms.loss) > 0
  np.testing.assert_allclose(ms.loss, expected.loss, rtol=1e-4)
  config.loss.name, config.loss.miner = "contrastive", "all"
  contrastive = train_lib.make_loss(config, None)({}, global_, aux, labels, key)
  expected = losses.contrastive_loss(jnp.asarray(distance, jnp.float32), labels,
                                     **config.loss.contrastive)
  assert float(contrastive.loss) > 0
  np.testing.assert_allclose(contrastive.loss, expected.loss, rtol=1e-4)


def diversity_float64(groups, beta1=2.0, beta2=0.5, cost=25.0):
  """DGML's binomial-deviance diversity: every pair of groups of an image, by the formula."""
  e = np.asarray(groups, np.float64)
  e /= np.linalg.norm(e, axis=-1, keepdims=True)
  b, k, _ = e.shape
  total = 0.0
  for i in range(k):
    for j in range(i + 1, k):
      cos = np.einsum("bd,bd->b", e[:, i], e[:, j])
      total += np.mean(np.log1p(np.exp(beta1 * cost * (cos - beta2))))
  return total / (k - 1)


# Multi-similarity has no parameters (an empty set per group); margin with one beta
# shared by the groups (loss.per_group_params=False, the per-group one is tested below).
@pytest.mark.parametrize("loss, per_group_params", [("multisimilarity", True),
                                                    ("margin", False)])
def test_dgml_loss_is_the_mean_group_loss_plus_weighted_diversity(loss, per_group_params):
  config = dgml_config(**{"loss.name": loss, "loss.per_group_params": per_group_params})
  rng = np.random.default_rng(0)
  groups = rng.normal(size=(8, 3, 8)) + 0.8 * rng.normal(size=(8, 1, 8))  # similar groups
  groups = jnp.asarray(groups / np.linalg.norm(groups, axis=-1, keepdims=True), jnp.float32)
  labels, key = jnp.asarray(LABELS), jax.random.key(4)
  params = registry.init_params(config, jax.random.key(0), 4, 8)
  out = train_lib.make_loss(config, None)(params, None, {"groups": groups}, labels, key)
  keys = jax.random.split(key, 3)
  per_group = []
  for g in range(3):
    if loss == "margin":
      per_group.append(losses.margin_global(groups[:, g], labels, params["beta"], keys[g],
                                            margin=0.2, cutoff=0.5).loss)
    else:
      per_group.append(losses.multi_similarity_loss(
          losses.cosine_similarity(groups[:, g]), labels, **config.loss.multisimilarity).loss)
  diversity = diversity_float64(groups)
  assert diversity > 0.1 and min(per_group) > 0
  np.testing.assert_allclose(out.loss, np.mean(per_group) + 0.02 * diversity, rtol=1e-5)


def margin_float64(groups, labels, beta, positive, negative, margin=0.2):
  """Margin loss of one group (Wu et al. 2017) in float64, and its gradient in beta: each
  anchor's sampled positive and negative, its class's boundary, the sum of the terms over
  the number of nonzero ones."""
  e = np.asarray(groups, np.float64)
  e /= np.linalg.norm(e, axis=1, keepdims=True)
  loss, active, grad = 0.0, 0, np.zeros_like(beta)
  for i, y in enumerate(labels):
    d_pos = np.sqrt(np.sum((e[i] - e[positive[i]]) ** 2) + 1e-8)
    d_neg = np.sqrt(np.sum((e[i] - e[negative[i]]) ** 2) + 1e-8)
    for term, sign in ((d_pos - beta[y] + margin, -1.0), (beta[y] - d_neg + margin, 1.0)):
      if term > 0:
        loss, active, grad[y] = loss + term, active + 1, grad[y] + sign
  return loss / max(active, 1), grad / max(active, 1)


def test_dgml_groups_train_their_own_beta():
  """Two groups, each with its own beta (beta [2, n_classes], as the reference DGML
  code's criterion): the loss is the mean over the groups of the margin loss with the
  group's beta, its gradient in beta is each group's own, and Adam moves the two rows
  differently. References in float64 on the miner's picks (one key per group)."""
  config = dgml_config(**{"loss.name": "margin", "model.num_groups": 2,
                          "loss.diversity_weight": 0.0})  # 2 groups of 12 dimensions
  params = registry.init_params(config, jax.random.key(0), 4, 12)
  np.testing.assert_array_equal(params["beta"], np.full((2, 4), 1.2, np.float32))
  params = {"beta": jnp.array([[1.2, 1.0, 1.3, 0.9], [0.8, 1.1, 1.25, 1.4]], jnp.float32)}
  rng = np.random.default_rng(5)
  groups = rng.normal(size=(8, 2, 12)) + rng.normal(size=(4, 1, 12))[LABELS]
  groups = jnp.asarray(groups / np.linalg.norm(groups, axis=-1, keepdims=True), jnp.float32)
  labels, key = jnp.asarray(LABELS), jax.random.key(6)
  loss_of = lambda p: train_lib.make_loss(config, None)(p, None, {"groups": groups}, labels,
                                                        key).loss
  loss, grads = jax.jit(jax.value_and_grad(loss_of))(params)
  beta64 = np.asarray(params["beta"], np.float64)
  expected, expected_grad = [], []
  for g, k in enumerate(jax.random.split(key, 2)):
    picked = miners.distance_weighted(k, losses.euclidean_distance(groups[:, g]), labels,
                                      dim=12, cutoff=0.5)
    value, grad = margin_float64(groups[:, g], LABELS, beta64[g], np.asarray(picked.positive),
                                 np.asarray(picked.negative))
    expected.append(value)
    expected_grad.append(grad / 2)  # the mean over the 2 groups
  assert min(expected) > 0
  np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)
  np.testing.assert_allclose(grads["beta"], np.stack(expected_grad), rtol=1e-5, atol=1e-7)
  assert np.abs(expected_grad[0] - expected_grad[1]).max() > 0.01
  # One Adam step at beta's rate: about lr * sign(gradient), row by row.
  state = {"model": {}, "loss": params}
  tx = experiment.make_optimizer(config, state, steps_per_epoch=10)
  updates, _ = tx.update({"model": {}, "loss": grads}, tx.init(state), state)
  lr = config.loss.margin.beta_lr
  grad64 = np.stack(expected_grad)
  np.testing.assert_allclose(updates["loss"]["beta"], -lr * grad64 / (np.abs(grad64) + 1e-8),
                             rtol=1e-4, atol=1e-10)
  assert np.abs(updates["loss"]["beta"][0] - updates["loss"]["beta"][1]).max() > lr / 2


def _shared_beta_checkpoint(workdir, model_params, num_classes):
  """A checkpoint of step 4 whose beta is ``[num_classes]``: one set shared by the groups,
  as DGML runs wrote before loss.per_group_params."""
  old = experiment.TrainState(step=np.int32(4), batch_stats={}, opt_state={}, params={
      "model": model_params, "loss": {"beta": np.full(num_classes, 1.2, np.float32)}})
  manager = checkpoint_lib.checkpoint_manager(str(workdir), "checkpoints", 2)
  manager.save(4, args=ocp.args.StandardSave(old))
  manager.wait_until_finished()


def _refused(num_classes, groups=3):
  """The message of a checkpoint with one shared beta restored into per-group ones."""
  return pytest.raises(UsageError, match=(
      rf"checkpoints/4 holds parameters of other shapes than the config builds \(1 differ, "
      rf"e.g. params\['loss'\]\['beta'\]: \({num_classes},\) in the checkpoint, "
      rf"\({groups}, {num_classes}\) in the config's\).*"
      rf"--config.loss.per_group_params=False"))


def test_dgml_checkpoint_with_one_shared_beta_is_refused_by_name(tmp_path):
  """Restoring a shared beta [n_classes] into per-group parameters [k, n_classes] fails
  with one message naming the variable, both shapes and the key that resumes it (Orbax's
  own error names the shapes only)."""
  model = {"grouping": {"queries": np.ones((2, 3), np.float32)}}
  _shared_beta_checkpoint(tmp_path, model, 4)
  template = experiment.TrainState(step=np.int32(0), batch_stats={}, opt_state={}, params={
      "model": model, "loss": {"beta": np.full((3, 4), 1.2, np.float32)}})
  manager = checkpoint_lib.checkpoint_manager(str(tmp_path), "checkpoints", 2)
  with _refused(4):
    checkpoint_lib.restore(manager, template, experiment.make_mesh())


@pytest.mark.slow
def test_dgml_training_refuses_a_shared_beta_checkpoint_and_keeps_its_config(tmp_path):
  """train_and_evaluate on a workdir of the former layout: the message, and config.json
  left as it was (it is written after the restore)."""
  config = dgml_config(**{"loss.name": "margin"})
  num_classes = data.load("synthetic", "train").num_classes
  shapes = jax.eval_shape(experiment.build_model(config).init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))
  _shared_beta_checkpoint(
      tmp_path, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"]),
      num_classes)
  (tmp_path / "config.json").write_text("{}")
  with _refused(num_classes):
    train_lib.train_and_evaluate(config, str(tmp_path))
  assert (tmp_path / "config.json").read_text() == "{}"


def test_dgml_model_from_the_config_exposes_groups_and_attention():
  config = dgml_config()
  model = experiment.build_model(config)
  assert isinstance(model, models.GroupingModel) and model.group_dim == 8
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  embedding, aux = jax.eval_shape(model.apply, variables, images)  # shapes only: no compile
  assert embedding.shape == (2, 24) and aux["groups"].shape == (2, 3, 8)
  assert aux["group_attention"].shape[:2] == (2, 3)
  assert set(variables["params"]) == {"backbone", "grouping"}


def test_vit_weights_file_is_loaded_from_the_config(tmp_path):
  """--config.model.weights reaches vit_variables: a DeiT-style .pth (state dict under
  "model", with a classifier) of a PyTorch twin loads into the backbone key by key."""
  torch.manual_seed(0)
  reference = TorchViT(24, 3, 2, 48, 16, 64, 10)
  state_dict = {k: v.detach().clone() for k, v in reference.state_dict().items()}
  torch.save({"model": state_dict}, tmp_path / "deit_tiny.pth")
  config = vit_config(**{"model.pretrained": True,
                         "model.weights": str(tmp_path / "deit_tiny.pth"),
                         "model.weights_key": "model"})
  experiment.check_config(config)
  model = experiment.build_model(config)
  params, _ = experiment.init_variables(config, model, num_classes=4)
  backbone = params["model"]["backbone"]
  np.testing.assert_array_equal(backbone["cls_token"], state_dict["cls_token"].numpy())
  np.testing.assert_array_equal(backbone["blocks_2"]["attn"]["qkv"]["kernel"],
                                state_dict["blocks.2.attn.qkv.weight"].numpy().T)
  assert "head" not in backbone


@pytest.mark.parametrize("overrides, message", [
    ({"matching.marginals": "weights"}, r"'efficientnet_lite_tiny' has no attention"),
    ({"matching.mass": 0.0}, r"config.matching.mass=0.0 must be a number in \(0, 1\]"),
    ({"matching.mass": 1.5}, r"config.matching.mass=1.5"),
    ({"matching.epsilon": 0.0}, r"config.matching: epsilon must be a Python number > 0"),
    ({"matching.gradient": "exact"}, r"config.matching: gradient must be 'constant'"),
    ({"model.rollout_blocks": 2}, r"rollout_blocks=2 applies to ViT backbones"),
    ({"model.backbone": "vit_tiny", "model.rollout_blocks": 4},
     r"rollout_blocks=4 must be an integer in 0..3"),
    ({"model.backbone": "vit_tiny", "data.image_size": 40},
     r"image_size=40 must be a multiple of 16"),
    ({"model.backbone": "vit_tiny", "model.pretrained": True},
     r"--config.model.weights=.*deit_small"),
    ({"model.pretrained": True, "model.weights": "/nonexistent/w.pth"}, r"no such file"),
    ({"model.weights": "/nonexistent/w.pth"}, r"pretrained=False: set"),
    ({"model.head": "groups"}, r"config.model.head='groups' is not one of"),
    ({"loss.diversity_weight": 0.02}, r"diversity_weight=0.02 is DGML's"),
    ({"model.head": "grouping", "eval.ks": (0,)}, r"--config.loss.diml=False"),
    ({"model.head": "grouping", "loss.diml": False}, r"--config.eval.ks='\(0,\)'"),
    ({"model.head": "grouping", "loss.diml": False, "eval.ks": (0,),
      "model.num_groups": 200}, r"num_groups=200 must be in 1..embed_dim"),
    ({"model.head": "grouping", "loss.diml": False, "eval.ks": (0,),
      "loss.diversity_weight": -1.0}, r"diversity_weight=-1.0 must be >= 0"),
    ({"optimizer.query_weight_decay": 1e-3}, r"query_weight_decay=0.001 is the weight decay"
     r" of DGML's group queries"),
    ({"model.head": "grouping", "loss.diml": False, "eval.ks": (0,),
      "optimizer.query_weight_decay": -1.0}, r"query_weight_decay=-1.0 must be >= 0"),
])
def test_bad_values_of_the_new_keys_are_named(overrides, message):
  with pytest.raises(ValueError, match=message):
    experiment.check_config(tiny_config(**overrides))


@pytest.mark.parametrize("section, key, new", [
    ("", "sinkhorn", r"--config.sinkhorn has moved: set --config.matching \(epsilon"),
    ("loss", "marginals",
     r"--config.loss.marginals has moved: set --config.matching.marginals"),
    ("loss", "partial_mass", r"--config.loss.partial_mass has moved: set --config.matching.mass"),
])
def test_keys_of_earlier_versions_name_their_new_place(section, key, new):
  config = tiny_config()
  with config.unlocked():
    (config[section] if section else config)[key] = {} if key == "sinkhorn" else 1.0
  with pytest.raises(ValueError, match=new):
    experiment.check_config(config)


def test_the_two_configs_pass_the_checks():
  vit = cub_vit_diml.get_config()
  with pytest.raises(ValueError, match="model.weights"):  # no DeiT file given
    experiment.check_config(vit)
  vit.model.pretrained = False
  experiment.check_config(vit)
  assert (vit.model.backbone, vit.matching.marginals, vit.loss.diml) == (
      "vit_s16", "weights", True)
  assert 0 < vit.matching.mass < 1 and vit.model.rollout_blocks > 0
  dgml = cub_dgml.get_config()
  experiment.check_config(dgml)
  assert (dgml.model.head, dgml.model.num_groups, dgml.loss.diversity_weight) == (
      "grouping", 3, 0.02)


# The reference DGML code's configs/{cub200,cars196,online_products,in_shop}.yaml: n_epochs, tau,
# ft_params_lr, decay, que_decay, loss_margin_beta_lr, lam_div.
@pytest.mark.parametrize("module, data_name, recipe", [
    (cub_dgml, "cub200", (100, (55,), 1e-5, 3e-3, 1e-3, 5e-5, 0.02)),
    (cars_dgml, "cars196", (200, (100,), 1e-5, 2e-3, 1e-3, 5e-5, 0.01)),
    (sop_dgml, "sop", (150, (100,), 9e-6, 3e-4, 1e-4, 1e-5, 0.03)),
    (inshop_dgml, "inshop", (150, (100,), 1e-5, 3e-4, 1e-4, 5e-5, 0.03)),
])
def test_dgml_configs_hold_the_reference_recipe(module, data_name, recipe):
  c = module.get_config()
  experiment.check_config(c)
  assert (c.data.name, c.model.backbone, c.model.head, c.loss.name, c.loss.diml) == (
      data_name, "resnet50", "grouping", "margin", False)
  assert (c.model.num_groups, experiment.embedding_dim(c), c.batch_size,
          c.images_per_class) == (3, 170, 112, 2)
  assert (c.loss.margin.margin, c.loss.margin.beta) == (0.2, 1.2)
  assert (c.num_epochs, tuple(c.optimizer.decay_epochs), c.optimizer.lr,
          c.optimizer.weight_decay, c.optimizer.query_weight_decay, c.loss.margin.beta_lr,
          c.loss.diversity_weight) == recipe
  assert c.optimizer.decay_factor == 0.3 and not c.optimizer.decoupled_weight_decay


def test_dgml_optimizer_matches_torch_adam_with_the_reference_parameter_groups():
  """Three updates equal torch.optim.Adam over the reference's groups (outline.set_lr):
  backbone, keys and values decayed by `decay`, the queries by `que_decay`, beta without
  decay at its own rate; MultiStepLR's step decay of every rate. Large rates and decays
  here, so that a wrong decay would show."""
  config = sop_dgml.get_config()
  opt = config.optimizer
  opt.lr, opt.weight_decay, opt.query_weight_decay = 1e-2, 0.5, 0.1
  opt.decay_epochs = (0.2,)  # step 2 of 10 per epoch: the third update is decayed
  beta_lr = config.loss.margin.beta_lr = 3e-2
  experiment.check_config(config)
  rng = np.random.default_rng(0)
  shapes = {"backbone": {"conv": (3, 4)},
            "grouping": {"key": (4, 2), "value": (4, 5), "queries": (2, 3)}}
  params = {"model": jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), shapes,
                                  is_leaf=lambda s: isinstance(s, tuple)),
            "loss": {"beta": np.full(4, 1.2, np.float32)}}
  grads = [jax.tree.map(lambda p: (0.1 * rng.normal(size=p.shape)).astype(np.float32), params)
           for _ in range(3)]

  def ours(config):
    tx = experiment.make_optimizer(config, params, steps_per_epoch=10)
    state, current = tx.init(params), params
    for g in grads:
      updates, state = tx.update(g, state, current)
      current = optax.apply_updates(current, updates)
    return jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, current, params)

  torch_params = jax.tree.map(
      lambda p: torch.tensor(p, dtype=torch.float64, requires_grad=True), params)
  model, grouping = torch_params["model"], torch_params["model"]["grouping"]
  reference = torch.optim.Adam([
      {"params": [model["backbone"]["conv"]], "lr": opt.lr, "weight_decay": opt.weight_decay},
      {"params": [grouping["key"], grouping["value"]], "lr": opt.lr,
       "weight_decay": opt.weight_decay},
      {"params": [grouping["queries"]], "lr": opt.lr, "weight_decay": opt.query_weight_decay},
      {"params": [torch_params["loss"]["beta"]], "lr": beta_lr, "weight_decay": 0.0},
  ])
  scheduler = torch.optim.lr_scheduler.MultiStepLR(reference, milestones=[2], gamma=0.3)
  for g in grads:
    for p, gp in zip(jax.tree.leaves(torch_params), jax.tree.leaves(g)):
      p.grad = torch.tensor(gp, dtype=torch.float64)
    reference.step()
    scheduler.step()
  expected = jax.tree.map(lambda t, p: t.detach().numpy() - p, torch_params, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               ours(config), expected)
  # Without query_weight_decay the queries take the model's decay, and move differently.
  config.optimizer.query_weight_decay = None
  moved = ours(config)["model"]["grouping"]["queries"]
  assert np.abs(moved - expected["model"]["grouping"]["queries"]).max() > 1e-3


# ------------------------------------------------------------------------------------
# Slow tier: training runs.


@pytest.mark.slow
def test_vit_step_on_8_devices_equals_one_device():
  """The rollout weights are split and gathered with the batch: same loss and update.

  The loss agrees to 1e-5; parameters to 1e-4 absolute (10% of the learning rate): Adam's
  first step is about ``lr * g / |g|``, so an element whose gradient is near zero (one
  entry of a ViT MLP kernel here) moves by a rounding-sensitive amount of up to ``lr``.
  A wrong split of the weights would shift whole tensors by about ``lr``."""
  config = vit_config(**{"data.image_size": 32, "data.resize_size": 32})
  (loss_1, params_1), (loss_8, params_8) = step_on_1_and_8_devices(config)
  assert np.isfinite(loss_1) and loss_1 > 0
  assert abs(loss_1 - loss_8) < 1e-5 * max(1.0, abs(loss_1))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-4),
               params_1, params_8)


def _train_losses(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(l)["train/loss"] for l in lines if '"train/loss"' in l]


@pytest.mark.slow
def test_vit_diml_trains_evaluates_and_checkpoints(tmp_path):
  config = vit_config(**{"steps_per_epoch": 6, "num_epochs": 2, "eval.every_epochs": 2,
                         "checkpoint_every_steps": 4, "log_every_steps": 1,
                         "eval.ks": (0, 10), "data.image_size": 32,
                         "data.resize_size": 32})
  results = train_lib.train_and_evaluate(config, str(tmp_path))
  assert set(results["metrics"]) == {"0", "10"}
  assert results["settings"]["marginals"] == "weights"
  assert results["settings"]["mass"] == MASS
  for name in ("best.json", "checkpoints/12", "eval/step_12/retrieval_metrics.json",
               "eval/step_12/embeddings_grid4_px32_rollout2.npz"):
    assert (tmp_path / name).exists(), name
  train_losses = _train_losses(tmp_path)
  assert len(train_losses) == 12 and np.all(np.isfinite(train_losses))
  # eval.py's path: cached embeddings (with their part weights), the same metrics, and the
  # report whose flow figures are partial flows with rollout marginals.
  again = eval_lib.run(config, str(tmp_path), explain_results=True)
  assert again["metrics"] == results["metrics"]
  out = tmp_path / "eval" / "step_12"
  assert (out / "report.html").exists() and len(list(out.glob("flow_query*.png"))) == 4


@pytest.mark.slow
def test_dgml_trains_evaluates_and_checkpoints(tmp_path):
  config = dgml_config(**{"steps_per_epoch": 6, "num_epochs": 2, "eval.every_epochs": 2,
                          "checkpoint_every_steps": 4, "log_every_steps": 1,
                          "optimizer.query_weight_decay": 1e-4, "eval.with_nmi": True})
  results = train_lib.train_and_evaluate(config, str(tmp_path))
  assert set(results["metrics"]) == {"0"}
  assert 0 <= results["nmi"] <= 1 and 0 <= results["f1"] <= 1  # DGML's clustering scores
  for name in ("best.json", "checkpoints/12", "eval/step_12/retrieval_metrics.json",
               "eval/step_12/embeddings_grid4_px32.npz"):
    assert (tmp_path / name).exists(), name
  train_losses = _train_losses(tmp_path)
  assert len(train_losses) == 12 and np.all(np.isfinite(train_losses))


@pytest.mark.parametrize("make_config", [
    lambda: vit_config(**{"data.image_size": 32, "data.resize_size": 32,
                          "optimizer.lr": 2e-4}),
    dgml_config],
    ids=["vit_diml", "dgml"])
@pytest.mark.slow
def test_training_steps_lower_the_loss_on_a_fixed_batch(make_config):
  """30 updates on one batch: the last 10 losses average below 90% of the first. (Over a
  few steps of fresh batches the losses of these tiny random networks are flat within
  their noise; DGML's, whose groups keep collapsing and being pushed apart by the
  diversity term at this learning rate, jumps between about 0.75 and 1.3. At the tests'
  usual 1e-3 the tiny ViT's loss falls for about 20 updates and then, depending on
  rounding-level differences in the matching, may jump back to its first value and stay
  there; at 2e-4 it descends steadily.)"""
  history, _ = train_on_one_batch(make_config(), single_axis_mesh(1), steps=30)
  assert np.all(np.isfinite(history))
  assert np.mean(history[-10:]) < 0.9 * history[0], history
