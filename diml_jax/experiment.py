"""What a run is made of, built from its config: mesh, data, model, state.

Shared by training (:mod:`diml_jax.train_lib`) and evaluation (:mod:`diml_jax.eval_lib`),
so that a checkpoint written by one (:mod:`diml_jax.checkpoints`) is read by the other
with the same model. Every config value is checked by :func:`check_config` before
anything heavy starts.
"""
from __future__ import annotations

import json
from absl import logging
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diml_jax import data, matching, models, moved_keys
from diml_jax.errors import UsageError
from diml_jax.losses import registry

BACKBONES = {
    "resnet18": models.ResNet18,
    "resnet34": models.ResNet34,
    "resnet50": models.ResNet50,
    "resnet101": models.ResNet101,
    "resnet_tiny": models.ResNetTiny,
    "efficientnet_lite0": models.EfficientNetLite0,
    "efficientnet_lite_tiny": models.EfficientNetLiteTiny,
    "bninception": models.BNInception,
    "vit_s16": models.ViTS16,
    "vit_b16": models.ViTB16,
    "vit_tiny": models.ViTTiny,
}
# Vision Transformers: no batch norm; their attention gives DIML's rollout marginals.
VITS = ("vit_s16", "vit_b16", "vit_tiny")
# Backbones whose ImageNet weights imagenet_variables() can provide; any backbone loads
# a weight file given as config.model.weights (timm/DeiT state dicts for the ViTs).
PRETRAINED = ("resnet50", "efficientnet_lite0", "bninception")
# Classifier keys of weight files, left out (the models have no classifier).
_CLASSIFIERS = {"vit": ("head.",), "cnn": ("fc.", "_fc.", "last_linear.")}
HEADS = ("embedding", "grouping")
MARGINALS = matching.MARGINAL_KINDS + ("weights",)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DATA_AXIS = "data"


def _one_of(name: str, value: Any, allowed) -> None:
  if value not in allowed:
    raise UsageError(f"--config.{name}={value!r} is not one of {tuple(allowed)}.")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks a config's values, so that a mistake fails at once and names the key.

  Raises:
    UsageError: a value is not allowed; the message names its key and the fix.
  """
  for old in moved_keys.MOVED:
    section, _, key = old.rpartition(".")
    if key in (config.get(section, {}) if section else config):
      raise UsageError(moved_keys.moved_message(old))
  _one_of("data.name", config.data.name, data.NAMES)
  _one_of("data.source", config.data.source, ("files", "tfds"))
  if config.data.fallback:
    _one_of("data.fallback", config.data.fallback, data.NAMES)
  model, loss = config.model, config.loss
  _one_of("model.backbone", model.backbone, BACKBONES)
  vit = model.backbone in VITS
  if model.weights and not model.pretrained:
    raise UsageError(
        f"--config.model.weights={model.weights!r} is set but --config.model.pretrained=False: "
        f"set --config.model.pretrained=True to load it, or --config.model.weights=''.")
  if model.weights and not os.path.exists(model.weights):
    raise UsageError(f"--config.model.weights={model.weights!r}: no such file.")
  if model.pretrained and not model.weights and model.backbone not in PRETRAINED:
    hint = ("a timm/DeiT state dict, e.g. --config.model.weights=/path/to/"
            "deit_small_patch16_224-cd65a155.pth --config.model.weights_key=model" if vit
            else "a weight file with --config.model.weights=PATH")
    raise UsageError(
        f"--config.model.pretrained=True, but ImageNet weights are provided for "
        f"{PRETRAINED} only, not {model.backbone!r}: give {hint}, or set "
        f"--config.model.pretrained=False."
    )
  _one_of("model.compute_dtype", model.compute_dtype, DTYPES)
  _one_of("model.global_from", model.global_from, ("feature_map", "grid"))
  if not 1 <= model.grid_size <= 7:
    raise UsageError(f"--config.model.grid_size={model.grid_size} must be in 1..7.")
  if vit:
    depth = BACKBONES[model.backbone].keywords["depth"]
    if not (isinstance(model.rollout_blocks, int) and 0 <= model.rollout_blocks <= depth):
      raise UsageError(
          f"--config.model.rollout_blocks={model.rollout_blocks!r} must be an integer in "
          f"0..{depth} (the last L blocks of {model.backbone} in the attention rollout; "
          f"0 = all).")
    if config.data.image_size % 16:
      raise UsageError(
          f"--config.data.image_size={config.data.image_size} must be a multiple of 16, the "
          f"patch size of {model.backbone}.")
  elif model.backbone == "bninception" and config.data.image_size % 32:
    raise UsageError(
        f"--config.data.image_size={config.data.image_size} must be a multiple of 32 for "
        f"bninception, whose stride-2 blocks need even feature maps (224 is the usual).")
  if not vit and model.rollout_blocks:
    raise UsageError(
        f"--config.model.rollout_blocks={model.rollout_blocks} applies to ViT backbones "
        f"{VITS} only, not {model.backbone!r}: set --config.model.rollout_blocks=0.")
  if model.freeze_backbone:  # training runs on cached feature maps (feature_cache)
    if not (vit or model.frozen_bn):
      raise UsageError(
          "--config.model.freeze_backbone=True trains the head on feature maps embedded once "
          "by the backbone in inference mode, but --config.model.frozen_bn=False would "
          "normalise each training batch by its own statistics: set "
          "--config.model.frozen_bn=True or --config.model.freeze_backbone=False.")
    if config.matching.marginals == "weights":
      raise UsageError(
          "--config.model.freeze_backbone=True trains on cached feature maps, which do not "
          "keep a ViT's attention rollout (--config.matching.marginals='weights'): set "
          "--config.matching.marginals=cross or --config.model.freeze_backbone=False.")
  _one_of("model.head", model.head, HEADS)
  registry.check(config)  # the loss's name, its miner, and whether it can train on DIML
  _one_of("matching.marginals", config.matching.marginals, MARGINALS)
  if config.matching.marginals == "weights" and not vit:
    raise UsageError(
        f"--config.matching.marginals='weights' weighs the parts by a ViT's attention "
        f"rollout; {model.backbone!r} has no attention: choose a backbone of {VITS} or "
        f"--config.matching.marginals=cross.")
  mass = config.matching.mass
  if isinstance(mass, bool) or not isinstance(mass, (int, float)) or not 0 < mass <= 1:
    raise UsageError(
        f"--config.matching.mass={mass!r} must be a number in (0, 1]: the fraction p of "
        f"each image's part weight that is matched (1 = ordinary matching).")
  registry.matching_options(config)
  query_decay = config.optimizer.query_weight_decay
  if query_decay is not None:
    if model.head != "grouping":
      raise UsageError(
          f"--config.optimizer.query_weight_decay={query_decay} is the weight decay of DGML's "
          f"group queries (model.head='grouping'): set --config.model.head=grouping, or "
          f"leave optimizer.query_weight_decay unset.")
    if not query_decay >= 0:
      raise UsageError(f"--config.optimizer.query_weight_decay={query_decay} must be >= 0.")
  if not loss.diversity_weight >= 0:
    raise UsageError(f"--config.loss.diversity_weight={loss.diversity_weight} must be >= 0.")
  if model.head == "grouping":
    if not 1 <= model.num_groups <= model.embed_dim:
      raise UsageError(
          f"--config.model.num_groups={model.num_groups} must be in 1..embed_dim "
          f"({model.embed_dim}): each group gets embed_dim // num_groups dimensions.")
    if loss.diml:
      raise UsageError(
          "--config.loss.diml=True matches parts, and the grouping head (model.head="
          "'grouping') has none: its metric loss runs on each group's embedding. Set "
          "--config.loss.diml=False.")
    if max(config.eval.ks) > 0:
      raise UsageError(
          f"--config.eval.ks={tuple(config.eval.ks)} re-ranks with parts, which the grouping "
          f"head has not: set --config.eval.ks='(0,)'.")
    if config.matching.marginals == "weights":
      raise UsageError("--config.matching.marginals='weights' needs model.head='embedding'.")
  elif loss.diversity_weight:
    raise UsageError(
        f"--config.loss.diversity_weight={loss.diversity_weight} is DGML's, for "
        f"model.head='grouping' only: set --config.model.head=grouping or "
        f"--config.loss.diversity_weight=0.")
  counts = {
      "num_epochs": config.num_epochs, "batch_size": config.batch_size,
      "images_per_class": config.images_per_class, "eval.batch_size": config.eval.batch_size,
      "data.image_size": config.data.image_size, "data.resize_size": config.data.resize_size,
      "log_every_steps": config.log_every_steps,
      "checkpoint_every_steps": config.checkpoint_every_steps,
  }
  for key, value in counts.items():
    if value < 1:
      raise UsageError(f"--config.{key}={value} must be >= 1.")
  if config.batch_size % config.images_per_class:
    raise UsageError(
        f"--config.batch_size={config.batch_size} must be a multiple of "
        f"--config.images_per_class={config.images_per_class}."
    )
  if config.batch_size % jax.device_count():
    raise UsageError(
        f"--config.batch_size={config.batch_size} must be divisible by the "
        f"{jax.device_count()} devices, each of which takes an equal share."
    )
  if config.eval.batch_size % jax.device_count():
    raise UsageError(
        f"--config.eval.batch_size={config.eval.batch_size} must be divisible by the "
        f"{jax.device_count()} devices."
    )
  if not config.optimizer.lr > 0:
    raise UsageError(f"--config.optimizer.lr={config.optimizer.lr} must be > 0.")
  if not config.optimizer.weight_decay >= 0:
    raise UsageError(
        f"--config.optimizer.weight_decay={config.optimizer.weight_decay} must be >= 0.")
  if not config.eval.ks or min(config.eval.ks) < 0:
    raise UsageError(f"--config.eval.ks={tuple(config.eval.ks)} must be re-ranking depths "
                     f">= 0 (0: the global ranking).")
  if 1 not in config.eval.recall_ks or min(config.eval.recall_ks) < 1:
    raise UsageError(
        f"--config.eval.recall_ks={tuple(config.eval.recall_ks)} must be cut-offs >= 1 "
        f"including 1 (R@1 picks the best checkpoint).")


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config (after command-line overrides) to ``workdir/config.json``."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config :func:`save_config` wrote to ``workdir/config.json``.

  JSON has no tuples: its lists come back as the tuples the configs hold.
  """
  def tuples(value):
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    if isinstance(value, list):
      return tuple(tuples(v) for v in value)
    return value

  with open(os.path.join(workdir, "config.json")) as f:
    return ml_collections.ConfigDict(tuples(json.load(f)))


def make_mesh() -> Mesh:
  """A 1-D data-parallel mesh over every device of every host.

  The axis is ``Auto``: the compiler propagates shardings from the inputs (a batch split
  along ``"data"``, a replicated state), rather than every operation declaring its own.
  """
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def load_split(config: ml_collections.ConfigDict, split: str) -> data.Dataset:
  """The data set's ``split``; the fallback data set if the first is not installed.

  ``data.max_test_per_class`` keeps the first images of each test class (of a
  query/gallery split, In-Shop's, as many of its queries and of its gallery images).

  Raises:
    UsageError: the data set is not where ``config.data.root`` says (the message shows
      the layout expected there and where to get the data set), or the package its
      source needs is not installed; ``eval.include_query_in_r`` on a query/gallery split.
  """
  kwargs = dict(root=config.data.root or None, source=config.data.source)
  try:
    dataset = data.load(config.data.name, split, **kwargs)
  except (FileNotFoundError, ImportError) as e:
    if not config.data.fallback:
      if isinstance(e, data.DataNotFoundError):
        raise UsageError(e.message("--config.data.root")) from e
      raise UsageError(f"--config.data.name={config.data.name} "
                       f"--config.data.source={config.data.source}: {e}") from e
    logging.warning("%s: %s\nUsing the %r data set instead.", config.data.name, e,
                    config.data.fallback)
    dataset = data.load(config.data.fallback, split)
  if split == "test" and dataset.is_query is not None and config.eval.include_query_in_r:
    raise UsageError(f"--config.eval.include_query_in_r=True counts each query in its own "
                     f"gallery; {dataset} ranks its queries against a separate gallery: "
                     f"leave it False.")
  if split == "test" and config.data.max_test_per_class:  # per class and side
    side = 0 if dataset.is_query is None else dataset.is_query
    dataset = dataset.subset(_per_class(2 * dataset.labels + side,
                                        config.data.max_test_per_class))
  return dataset


def _per_class(labels: np.ndarray, limit: int) -> np.ndarray:
  """The first ``limit`` images of each class, in their original order."""
  order = np.argsort(labels, kind="stable")
  rank = np.arange(len(labels)) - np.searchsorted(labels[order], labels[order])
  return np.sort(order[rank < limit])


def build_model(config: ml_collections.ConfigDict
                ) -> models.EmbeddingModel | models.GroupingModel:
  """The configured backbone with its head: DIML's embedding head or DGML's grouping."""
  c = config.model
  dtype = DTYPES[c.compute_dtype]
  if c.backbone in VITS:  # no batch norm
    backbone = BACKBONES[c.backbone](dtype=dtype)
  else:
    backbone = BACKBONES[c.backbone](frozen_bn=c.frozen_bn, dtype=dtype)
  if c.head == "grouping":
    return models.GroupingModel(
        backbone=backbone, num_groups=c.num_groups, group_dim=c.embed_dim // c.num_groups,
        freeze_backbone=c.freeze_backbone)
  return models.EmbeddingModel(
      backbone=backbone, embed_dim=c.embed_dim, grid_size=c.grid_size,
      global_from=c.global_from, freeze_backbone=c.freeze_backbone,
      rollout_blocks=c.rollout_blocks or None, normalize=c.normalize,
  )


def embedding_dim(config: ml_collections.ConfigDict) -> int:
  """Size of the vectors the metric loss compares (each group's, for DGML)."""
  if config.model.head == "grouping":
    return config.model.embed_dim // config.model.num_groups
  return config.model.embed_dim


def pretrained_backbone(config: ml_collections.ConfigDict, backbone) -> dict:
  """The backbone's variables from ``config.model.weights``, or its ImageNet weights."""
  if not config.model.weights:
    return models.imagenet_variables(backbone)
  state_dict = models.load_state_dict(config.model.weights,
                                      key=config.model.weights_key or None)
  if config.model.backbone in VITS:
    return models.vit_variables(state_dict, backbone, ignore=_CLASSIFIERS["vit"])
  return models.backbone_variables(state_dict, backbone, ignore=_CLASSIFIERS["cnn"])


def normalization(model) -> data.Normalization:
  """The pixel normalisation the backbone was trained with."""
  return data.Normalization(mean=model.backbone.pixel_mean, std=model.backbone.pixel_std)


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, and all that a checkpoint holds.

  ``params`` is ``{"model": ..., "loss": ...}`` (the loss's own parameters: margin's
  ``beta``, proxies, centroids or class weights; :mod:`diml_jax.losses.registry`). The
  data sampler's position is ``step``: batches are a function of ``(seed, step)``; so is
  each step's PRNG key.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def init_variables(config: ml_collections.ConfigDict, model: models.EmbeddingModel,
                   num_classes: int) -> tuple[dict, dict]:
  """Fresh ``(params, batch_stats)``, with ImageNet weights for the backbone if configured."""
  key_model, key_loss = jax.random.split(jax.random.key(config.seed))
  size = config.data.image_size
  images = jnp.zeros((1, size, size, 3), jnp.float32)
  if config.model.pretrained:
    # The backbone's random values would be replaced: only the head is initialised, on
    # the backbone's output shapes (the same values as a whole-model init), which saves
    # compiling the backbone's initialisation (most of a minute for Lite0 on a CPU).
    shapes = jax.eval_shape(model.init, key_model, images)
    _, aux = jax.eval_shape(model.apply, shapes, images)
    head = jax.jit(model.init, static_argnames="method")(
        key_model, jnp.zeros(aux["pooled"].shape), jnp.zeros(aux["feature_map"].shape),
        method="embed_features")
    variables = models.replace_backbone(shapes, pretrained_backbone(config, model.backbone))
    for collection, tree in head.items():
      variables[collection].update(tree)
  else:
    variables = jax.jit(model.init)(key_model, images)
  # DGML: one set of loss parameters per group, or one shared (registry.per_group).
  loss_params = registry.init_params(config, key_loss, num_classes, embedding_dim(config))
  params = {"model": variables["params"], "loss": loss_params}
  return params, dict(variables.get("batch_stats", {}))


def make_optimizer(config: ml_collections.ConfigDict, params: Any,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam with one learning rate per parameter group: the model, and each loss parameter.

  Every learning rate (beta's and the proxies' too, as ``torch.optim.lr_scheduler.MultiStepLR``
  in the published DIML and DGML code) is multiplied by ``decay_factor`` at each of
  ``decay_epochs``. Weight
  decay is added to the gradients before Adam, as ``torch.optim.Adam(weight_decay=...)``
  in the published code, or decoupled (AdamW). Each loss parameter (margin's ``beta``,
  proxies, centroids, class weights) has the learning rate its registry entry gives
  (:func:`diml_jax.losses.registry.learning_rates`): a fixed one, or a multiple of the
  model's, with or without weight decay. A frozen backbone gets no updates at all (not
  even weight decay). DGML's group queries take ``query_weight_decay`` when it is set
  (the reference DGML code's ``que_decay``, ``outline.set_lr``), else ``weight_decay``
  like the rest of the model.
  """
  opt = config.optimizer
  decay = optax.piecewise_constant_schedule(
      1.0, {int(e * steps_per_epoch): opt.decay_factor for e in opt.decay_epochs}
  )
  lr = lambda step: opt.lr * decay(step)

  def adam(learning_rate, weight_decay):
    if opt.decoupled_weight_decay:
      return optax.adamw(learning_rate, weight_decay=weight_decay)
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))

  transforms = {"model": adam(lr, opt.weight_decay), "frozen": optax.set_to_zero()}
  for name, rate in registry.learning_rates(config).items():
    scale = lr if rate.relative else decay
    value = lambda step, f=rate.value, scale=scale: scale(step) * f
    transforms[name] = adam(value, opt.weight_decay) if rate.weight_decay else optax.adam(value)
  frozen = config.model.freeze_backbone
  labels = {
      "model": {
          name: "frozen" if frozen and name == "backbone" else "model"
          for name in params["model"]
      },
      "loss": {name: name for name in params["loss"]},  # e.g. "beta", "proxies"
  }
  if opt.query_weight_decay is not None:
    transforms["queries"] = adam(lr, opt.query_weight_decay)
    labels["model"]["grouping"] = {
        name: "queries" if name == "queries" else "model"
        for name in params["model"]["grouping"]
    }
  used = set(jax.tree.leaves(labels))
  return optax.multi_transform({k: v for k, v in transforms.items() if k in used}, labels)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Host values, identical on every host, as arrays replicated over the mesh."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
  )


def write_json(path: str, payload: dict) -> None:
  """Process 0 writes ``payload`` to ``path``, complete or not at all (a run killed while
  writing leaves the previous file, which the next run reads)."""
  if jax.process_index() == 0:
    with open(f"{path}.partial", "w") as f:
      json.dump(payload, f, indent=2)
    os.replace(f"{path}.partial", path)
