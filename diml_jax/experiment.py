"""What a run is made of, built from its config: mesh, data, model, state, checkpoints.

Shared by training (:mod:`diml_jax.train_lib`) and evaluation (:mod:`diml_jax.eval_lib`),
so that a checkpoint written by one is read by the other with the same model. Every
config value is checked by :func:`check_config` before anything heavy starts.
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
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diml_jax import data, losses, matching, models

BACKBONES = {
    "resnet18": models.ResNet18,
    "resnet34": models.ResNet34,
    "resnet50": models.ResNet50,
    "resnet101": models.ResNet101,
    "resnet_tiny": models.ResNetTiny,
    "efficientnet_lite0": models.EfficientNetLite0,
    "efficientnet_lite_tiny": models.EfficientNetLiteTiny,
    "vit_s16": models.ViTS16,
    "vit_b16": models.ViTB16,
    "vit_tiny": models.ViTTiny,
}
# Vision Transformers: no batch norm; their attention gives DIML's rollout marginals.
VITS = ("vit_s16", "vit_b16", "vit_tiny")
# Backbones whose ImageNet weights imagenet_variables() can provide; any backbone loads
# a weight file given as config.model.weights (timm/DeiT state dicts for the ViTs).
PRETRAINED = ("resnet50", "efficientnet_lite0")
# Classifier keys of weight files, left out (the models have no classifier).
_CLASSIFIERS = {"vit": ("head.",), "cnn": ("fc.", "_fc.")}
HEADS = ("embedding", "grouping")
MARGINALS = ("cross", "uniform", "weights")
LOSSES = ("margin", "multisimilarity", "proxyanchor", "triplet", "contrastive")
DIML_LOSSES = ("margin", "multisimilarity", "triplet", "contrastive")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DATA_AXIS = "data"


def _one_of(name: str, value: Any, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"config.{name}={value!r} is not one of {tuple(allowed)}.")


# Keys of earlier versions -> where they went.
_MOVED = {"sinkhorn": "matching (epsilon, threshold, max_iterations, ...)",
          "loss.marginals": "matching.marginals ('rollout' is now 'weights')",
          "loss.partial_mass": "matching.mass"}


def matching_options(config: ml_collections.ConfigDict) -> matching.SinkhornOptions:
  """The solver's options from ``config.matching`` (all its keys but marginals and mass)."""
  options = {k: v for k, v in config.matching.items() if k not in ("marginals", "mass")}
  try:
    return matching.SinkhornOptions(**options)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.matching: {e}") from None


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks a config's values, so that a mistake fails at once and names the key."""
  for old, new in _MOVED.items():
    section, _, key = old.rpartition(".")
    if key in (config.get(section, {}) if section else config):
      raise ValueError(f"config.{old} has moved: set config.{new} instead.")
  _one_of("data.name", config.data.name, data.NAMES)
  _one_of("data.source", config.data.source, ("files", "tfds"))
  if config.data.fallback:
    _one_of("data.fallback", config.data.fallback, data.NAMES)
  model, loss = config.model, config.loss
  _one_of("model.backbone", model.backbone, BACKBONES)
  vit = model.backbone in VITS
  if model.weights and not model.pretrained:
    raise ValueError(
        f"config.model.weights={model.weights!r} is set but config.model.pretrained=False: "
        f"set --config.model.pretrained=True to load it, or --config.model.weights=''.")
  if model.weights and not os.path.exists(model.weights):
    raise ValueError(f"config.model.weights={model.weights!r}: no such file.")
  if model.pretrained and not model.weights and model.backbone not in PRETRAINED:
    hint = ("a timm/DeiT state dict, e.g. --config.model.weights=/path/to/"
            "deit_small_patch16_224-cd65a155.pth --config.model.weights_key=model" if vit
            else "a weight file with --config.model.weights=PATH")
    raise ValueError(
        f"config.model.pretrained=True, but ImageNet weights are provided for "
        f"{PRETRAINED} only, not {model.backbone!r}: give {hint}, or set "
        f"--config.model.pretrained=False."
    )
  _one_of("model.compute_dtype", model.compute_dtype, DTYPES)
  _one_of("model.global_from", model.global_from, ("feature_map", "grid"))
  if not 1 <= model.grid_size <= 7:
    raise ValueError(f"config.model.grid_size={model.grid_size} must be in 1..7.")
  if vit:
    depth = BACKBONES[model.backbone].keywords["depth"]
    if not (isinstance(model.rollout_blocks, int) and 0 <= model.rollout_blocks <= depth):
      raise ValueError(
          f"config.model.rollout_blocks={model.rollout_blocks!r} must be an integer in "
          f"0..{depth} (the last L blocks of {model.backbone} in the attention rollout; "
          f"0 = all).")
    if config.data.image_size % 16:
      raise ValueError(
          f"config.data.image_size={config.data.image_size} must be a multiple of 16, the "
          f"patch size of {model.backbone}.")
  elif model.rollout_blocks:
    raise ValueError(
        f"config.model.rollout_blocks={model.rollout_blocks} applies to ViT backbones "
        f"{VITS} only, not {model.backbone!r}: set --config.model.rollout_blocks=0.")
  _one_of("model.head", model.head, HEADS)
  _one_of("loss.name", loss.name, LOSSES)
  if loss.diml and loss.name not in DIML_LOSSES:
    raise ValueError(
        f"config.loss.diml=True needs a pairwise loss {DIML_LOSSES}; {loss.name!r} "
        f"compares images with class proxies. Train it with diml=False and evaluate with "
        f"structural re-ranking (test-time DIML)."
    )
  _one_of("matching.marginals", config.matching.marginals, MARGINALS)
  if config.matching.marginals == "weights" and not vit:
    raise ValueError(
        f"config.matching.marginals='weights' weighs the parts by a ViT's attention "
        f"rollout; {model.backbone!r} has no attention: choose a backbone of {VITS} or "
        f"--config.matching.marginals=cross.")
  mass = config.matching.mass
  if isinstance(mass, bool) or not isinstance(mass, (int, float)) or not 0 < mass <= 1:
    raise ValueError(
        f"config.matching.mass={mass!r} must be a number in (0, 1]: the fraction p of "
        f"each image's part weight that is matched (1 = ordinary matching).")
  matching_options(config)
  if not loss.diversity_weight >= 0:
    raise ValueError(f"config.loss.diversity_weight={loss.diversity_weight} must be >= 0.")
  if model.head == "grouping":
    if not 1 <= model.num_groups <= model.embed_dim:
      raise ValueError(
          f"config.model.num_groups={model.num_groups} must be in 1..embed_dim "
          f"({model.embed_dim}): each group gets embed_dim // num_groups dimensions.")
    if loss.diml:
      raise ValueError(
          "config.loss.diml=True matches parts, and the grouping head (model.head="
          "'grouping') has none: its metric loss runs on each group's embedding. Set "
          "--config.loss.diml=False.")
    if max(config.eval.ks) > 0:
      raise ValueError(
          f"config.eval.ks={tuple(config.eval.ks)} re-ranks with parts, which the grouping "
          f"head has not: set --config.eval.ks='(0,)'.")
    if config.matching.marginals == "weights":
      raise ValueError("config.matching.marginals='weights' needs model.head='embedding'.")
  elif loss.diversity_weight:
    raise ValueError(
        f"config.loss.diversity_weight={loss.diversity_weight} is DGML's, for "
        f"model.head='grouping' only: set --config.model.head=grouping or "
        f"--config.loss.diversity_weight=0.")
  if config.batch_size % config.images_per_class:
    raise ValueError(
        f"config.batch_size={config.batch_size} must be a multiple of "
        f"config.images_per_class={config.images_per_class}."
    )
  if config.batch_size % jax.device_count():
    raise ValueError(
        f"config.batch_size={config.batch_size} must be divisible by the "
        f"{jax.device_count()} devices, each of which takes an equal share."
    )
  if config.eval.batch_size % jax.device_count():
    raise ValueError(
        f"config.eval.batch_size={config.eval.batch_size} must be divisible by the "
        f"{jax.device_count()} devices."
    )
  for name in ("num_epochs", "batch_size", "log_every_steps", "checkpoint_every_steps"):
    if config[name] < 1:
      raise ValueError(f"config.{name}={config[name]} must be >= 1.")


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config (after command-line overrides) to ``workdir/config.json``."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def make_mesh() -> Mesh:
  """A 1-D data-parallel mesh over every device of every host.

  The axis is ``Auto``: the compiler propagates shardings from the inputs (a batch split
  along ``"data"``, a replicated state), rather than every operation declaring its own.
  """
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def load_split(config: ml_collections.ConfigDict, split: str) -> data.Dataset:
  """The data set's ``split``; the fallback data set if the first is not installed."""
  kwargs = dict(root=config.data.root or None, source=config.data.source)
  try:
    dataset = data.load(config.data.name, split, **kwargs)
  except (FileNotFoundError, ModuleNotFoundError) as e:
    if not config.data.fallback:
      raise
    logging.warning("%s: %s\nUsing the %r data set instead.", config.data.name, e,
                    config.data.fallback)
    dataset = data.load(config.data.fallback, split)
  if split == "test" and config.data.max_test_per_class:
    dataset = dataset.subset(_per_class(dataset.labels, config.data.max_test_per_class))
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
      rollout_blocks=c.rollout_blocks or None,
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
  ``beta``, ProxyAnchor's ``proxies``). The data sampler's position is ``step``: batches
  are a function of ``(seed, step)``; so is each step's PRNG key.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def init_variables(config: ml_collections.ConfigDict, model: models.EmbeddingModel,
                   num_classes: int, *, pretrained: bool = True) -> tuple[dict, dict]:
  """Fresh ``(params, batch_stats)``, with ImageNet weights for the backbone if configured.

  ``pretrained=False`` skips loading them (for a template to restore a checkpoint into).
  """
  key_model, key_loss = jax.random.split(jax.random.key(config.seed))
  size = config.data.image_size
  variables = jax.jit(model.init)(key_model, jnp.zeros((1, size, size, 3), jnp.float32))
  if pretrained and config.model.pretrained:
    variables = models.replace_backbone(variables,
                                        pretrained_backbone(config, model.backbone))
  # DGML's groups share the loss's parameters: one criterion applied to each group.
  loss_params = {}
  if config.loss.name == "margin":
    loss_params["beta"] = losses.init_beta(num_classes, config.loss.margin.beta)
  elif config.loss.name == "proxyanchor":
    loss_params["proxies"] = losses.init_proxies(key_loss, num_classes,
                                                 embedding_dim(config))
  params = {"model": variables["params"], "loss": loss_params}
  return params, dict(variables.get("batch_stats", {}))


def make_optimizer(config: ml_collections.ConfigDict, params: Any,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam with one learning rate per parameter group (backbone+head, beta, proxies).

  The model's learning rate decays by ``decay_factor`` at each of ``decay_epochs``. Weight
  decay is added to the gradients before Adam, as ``torch.optim.Adam(weight_decay=...)``
  in the published code, or decoupled (AdamW). The margin loss's ``beta`` has its own
  learning rate and no weight decay; ProxyAnchor's proxies train ``lr_multiplier`` times
  faster. A frozen backbone gets no updates at all (not even weight decay).
  """
  opt = config.optimizer
  lr = optax.piecewise_constant_schedule(
      opt.lr, {int(e * steps_per_epoch): opt.decay_factor for e in opt.decay_epochs}
  )

  def adam(learning_rate, weight_decay):
    if opt.decoupled_weight_decay:
      return optax.adamw(learning_rate, weight_decay=weight_decay)
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))

  transforms = {
      "model": adam(lr, opt.weight_decay),
      "frozen": optax.set_to_zero(),
      "beta": optax.adam(config.loss.margin.beta_lr),
      "proxies": adam(
          lambda step: lr(step) * config.loss.proxyanchor.lr_multiplier, opt.weight_decay
      ),
  }
  frozen = config.model.freeze_backbone
  labels = {
      "model": {
          name: "frozen" if frozen and name == "backbone" else "model"
          for name in params["model"]
      },
      "loss": {name: name for name in params["loss"]},
  }
  used = set(jax.tree.leaves(labels))
  return optax.multi_transform({k: v for k, v in transforms.items() if k in used}, labels)


def state_template(config, model, num_classes: int, steps_per_epoch: int) -> TrainState:
  """The structure, shapes and dtypes of a run's :class:`TrainState`, computing nothing."""
  def build():
    params, batch_stats = init_variables(config, model, num_classes, pretrained=False)
    tx = make_optimizer(config, params, steps_per_epoch)
    return TrainState(step=jnp.int32(0), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params))
  return jax.eval_shape(build)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Host values, identical on every host, as arrays replicated over the mesh."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
  )


def checkpoint_manager(workdir: str, name: str, keep: int | None = None
                       ) -> ocp.CheckpointManager:
  """Orbax manager of ``workdir/name``: saves asynchronously and keeps the last ``keep``;
  with ``keep=None`` it only reads (evaluation never deletes a run's checkpoints)."""
  options = (ocp.CheckpointManagerOptions(read_only=True) if keep is None else
             ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, name)), options=options)


def restore(manager: ocp.CheckpointManager, template: Any, mesh: Mesh,
            step: int | None = None) -> Any:
  """The checkpoint at ``step`` (default: the latest), replicated over ``mesh``.

  ``template`` gives the structure, shapes and dtypes: a state or :func:`state_template`.
  """
  step = manager.latest_step() if step is None else step
  replicated = NamedSharding(mesh, P())
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), template)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def write_json(path: str, payload: dict) -> None:
  if jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump(payload, f, indent=2)
