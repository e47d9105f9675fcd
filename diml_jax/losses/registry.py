"""Losses by name: the one place where a config's ``loss`` section becomes a loss.

As big_vision picks a model module by its config name, training picks its criterion here:
``LOSSES[config.loss.name]`` says how to build the loss function, how to initialise the
loss's own parameters (margin's ``beta``, proxies, centroids, class weights) and which
learning rate each of them gets (for DGML, one set per group: :func:`per_group`). Adding a
loss is one module in :mod:`diml_jax.losses` and one entry below.

**Which losses train on DIML's structural quantity** (``loss.diml=True``): those that are
functions of the batch's pairwise similarities or distances between normalised
embeddings, because the DIML quantity of two images (``(sum T⊙S + <g_a, g_b>) / 2`` or
its distance) is such a pairwise quantity: margin, multi-similarity, triplet,
contrastive, quadruplet and histogram. The others cannot, each for the reason in its
entry's ``no_diml``:

- N-pair, angular and lifted structure are defined on unnormalised embeddings (inner
  products, and a penalty on the embeddings' norm), while DIML compares unit parts and is
  bounded by 1; the angular loss also needs the sum of two embedding vectors;
- SNR compares the variance of the difference of two embedding vectors, a function of
  the vectors themselves rather than of a pair similarity;
- ProxyAnchor, ProxyNCA, SoftTriple, ArcFace and normalised softmax compare each image
  with learned class proxies (or classifier weights), not with the other images, and a
  proxy has no parts to match.

All of them are evaluated with structural re-ranking (test-time DIML) either way.

Miners (``loss.miner``) for the tuple losses, on the global embeddings' distances (no
gradient), as the published ``batchminer/``: ``"distance"`` (distance-weighted),
``"semihard"``, ``"softhard"``, ``"random"`` and ``"all"`` (every pair or triplet).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from diml_jax import matching, miners
from diml_jax.errors import UsageError
from diml_jax.losses import (angular, arcface, contrastive, histogram, lifted, margin,
                             multi_similarity, npair, proxy_anchor, proxy_nca, quadruplet,
                             quantities, snr, softmax, softtriple, triplet)
from diml_jax.losses._reduce import LossOutput

__all__ = [
    "LOSSES", "LearningRate", "Loss", "PairQuantities", "build", "check", "init_params",
    "learning_rates", "matching_options", "per_group",
]

# (loss parameters, global embeddings [b, d], the model's aux, labels [b], key) -> output
LossFn = Callable[[Mapping[str, jax.Array], jax.Array, dict, jax.Array, jax.Array],
                  LossOutput]


class LearningRate(NamedTuple):
  """The optimiser of one loss parameter (Adam, as the model's).

  Attributes:
    value: the learning rate, or the factor of the model's (scheduled) one if
      ``relative``.
    relative: multiply the model's learning rate schedule.
    weight_decay: the model's weight decay applies too (the published criteria's own
      parameter groups have none).
  """

  value: float
  relative: bool = False
  weight_decay: bool = False


def matching_options(config: ml_collections.ConfigDict) -> matching.SinkhornOptions:
  """The solver's options from ``config.matching`` (all its keys but marginals and mass),
  read here for the losses and by evaluation."""
  options = {k: v for k, v in config.matching.items() if k not in ("marginals", "mass")}
  try:
    return matching.SinkhornOptions(**options)
  except (TypeError, ValueError) as e:
    raise UsageError(f"--config.matching: {e}") from None


class PairQuantities:
  """What the pair losses compare: the global embeddings, or DIML's structural quantity.

  Built once from the config. The structural quantities are those of ``aux["local"]``
  ``[b, r, d]`` with ``config.matching``: its marginals (cross-correlation, uniform, or
  ``"weights"``: a ViT's ``aux["part_weights"]``), partial mass and solver options, split
  over ``mesh`` (one :class:`quantities.StructuralOptions`).
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh | None, axis_name: str):
    self.diml = bool(config.loss.diml)
    self._marginals = config.matching.marginals
    self._structural = quantities.StructuralOptions(
        mass=config.matching.mass, solver=matching_options(config), mesh=mesh,
        axis_name=axis_name)

  def _options(self, aux: dict) -> quantities.StructuralOptions:
    marginals = aux["part_weights"] if self._marginals == "weights" else self._marginals
    return self._structural.replace(marginals=marginals)

  def similarity(self, g: jax.Array, aux: dict) -> jax.Array:
    """``[b, b]``: cosine of the global embeddings, or DIML's similarity."""
    if self.diml:
      return quantities.structural_matrix(aux["local"], g, quantity="similarity",
                                          structural=self._options(aux))
    return quantities.cosine_similarity(g)

  def distance(self, g: jax.Array, aux: dict) -> jax.Array:
    """``[b, b]``: Euclidean distance of the unit global embeddings, or DIML's distance."""
    if self.diml:
      return quantities.structural_matrix(aux["local"], g, quantity="distance",
                                          structural=self._options(aux))
    return quantities.euclidean_distance(g)

  def partner_distance(self, g: jax.Array, aux: dict, partners: jax.Array) -> jax.Array:
    """``[b, k]``: the distance of each image to its ``partners [b, k]`` only (with DIML,
    ``b k`` matchings instead of ``b²``)."""
    if self.diml:
      return quantities.structural_partners(aux["local"], partners, g, quantity="distance",
                                            structural=self._options(aux))
    return jnp.take_along_axis(quantities.euclidean_distance(g), partners, axis=1)


# --- miners --------------------------------------------------------------------------------
SAMPLERS = ("distance", "semihard", "softhard")  # one (positive, negative) per anchor
TRIPLET_MINERS = SAMPLERS + ("random", "all")


def _sample(c: ml_collections.ConfigDict, key, g: jax.Array, labels) -> miners.Sampled:
  """One positive and one negative per anchor, by ``c.miner``, on the global distances."""
  d = quantities.euclidean_distance(g)
  m = c.mining
  if c.miner == "distance":
    return miners.distance_weighted(key, d, labels, dim=m.dim or g.shape[-1],
                                    cutoff=m.cutoff,
                                    nonzero_loss_cutoff=m.nonzero_loss_cutoff or None)
  if c.miner == "semihard":
    return miners.semihard(key, d, labels, margin=m.semihard_margin)
  return miners.softhard(key, d, labels)


def _triplets(c: ml_collections.ConfigDict, key, g: jax.Array, labels) -> jax.Array:
  """``[b, b, b]`` triplet mask by ``c.miner``."""
  if c.miner == "random":
    return miners.random_triplets(key, labels)
  if c.miner == "all":
    return miners.all_triplets(labels)
  return _sample(c, key, g, labels).triplets


# --- the losses ------------------------------------------------------------------------------
def _margin(c, pairs: PairQuantities) -> LossFn:
  def apply(params, g, aux, labels, key):
    picked = _sample(c, key, g, labels)
    d = pairs.partner_distance(g, aux, picked.partners)
    return margin.margin_loss(d, labels, params["beta"], margin=c.margin.margin,
                              pairs=picked.pairs)
  return apply


def _multisimilarity(c, pairs: PairQuantities) -> LossFn:
  return lambda params, g, aux, labels, key: multi_similarity.multi_similarity_loss(
      pairs.similarity(g, aux), labels, **c.multisimilarity)


def _triplet(c, pairs: PairQuantities) -> LossFn:
  return lambda params, g, aux, labels, key: triplet.triplet_loss(
      pairs.distance(g, aux), labels, triplets=_triplets(c, key, g, labels), **c.triplet)


def _contrastive(c, pairs: PairQuantities) -> LossFn:
  def apply(params, g, aux, labels, key):
    if c.miner == "all":
      return contrastive.contrastive_loss(pairs.distance(g, aux), labels, **c.contrastive)
    picked = _sample(c, key, g, labels)
    return contrastive.contrastive_loss(pairs.partner_distance(g, aux, picked.partners),
                                        labels, pairs=picked.pairs, **c.contrastive)
  return apply


def _quadruplet(c, pairs: PairQuantities) -> LossFn:
  def apply(params, g, aux, labels, key):
    key_sample, key_second = jax.random.split(key)
    picked = _sample(c, key_sample, g, labels)
    second = miners.quadruplet_negatives(key_second, labels, picked.negative)
    return quadruplet.quadruplet_loss(pairs.distance(g, aux), labels, sampled=picked,
                                      second_negative=second, **c.quadruplet)
  return apply


def _histogram(c, pairs: PairQuantities) -> LossFn:
  return lambda params, g, aux, labels, key: histogram.histogram_loss(
      pairs.similarity(g, aux), labels, **c.histogram)


def _snr(c, pairs: PairQuantities) -> LossFn:
  return lambda params, g, aux, labels, key: snr.snr_loss(
      g, labels, triplets=_triplets(c, key, g, labels), **c.snr)


def _npair(c, pairs: PairQuantities) -> LossFn:
  return lambda params, g, aux, labels, key: npair.npair_loss(
      g, labels, pairs=miners.npair(key, labels), **c.npair)


def _angular(c, pairs: PairQuantities) -> LossFn:
  return lambda params, g, aux, labels, key: angular.angular_loss(
      g, labels, pairs=miners.npair(key, labels), **c.angular)


def _lifted(c, pairs: PairQuantities) -> LossFn:
  return lambda params, g, aux, labels, key: lifted.lifted_loss(g, labels, **c.lifted)


def _proxy_anchor(c, pairs: PairQuantities) -> LossFn:
  return lambda params, g, aux, labels, key: proxy_anchor.proxy_anchor_loss(
      proxy_anchor.proxy_similarity(g, params["proxies"]), labels,
      alpha=c.proxyanchor.alpha, margin=c.proxyanchor.margin)


def _proxy_nca(c, pairs: PairQuantities) -> LossFn:
  return lambda params, g, aux, labels, key: proxy_nca.proxy_nca_loss(
      proxy_anchor.proxy_similarity(g, params["proxies"]), labels, scale=c.proxynca.scale)


def _softtriple(c, pairs: PairQuantities) -> LossFn:
  s = c.softtriple
  return lambda params, g, aux, labels, key: softtriple.softtriple_loss(
      softtriple.centroid_similarity(g, params["centroids"]), labels,
      centroids=params["centroids"], gamma=s.gamma, lam=s.lam, margin=s.margin,
      reg_weight=s.reg_weight)


def _arcface(c, pairs: PairQuantities) -> LossFn:
  return lambda params, g, aux, labels, key: arcface.arcface_loss(
      proxy_anchor.proxy_similarity(g, params["class_weights"]), labels,
      margin=c.arcface.margin, scale=c.arcface.scale)


def _softmax(c, pairs: PairQuantities) -> LossFn:
  return lambda params, g, aux, labels, key: softmax.normalized_softmax_loss(
      proxy_anchor.proxy_similarity(g, params["class_weights"]), labels,
      temperature=c.softmax.temperature)


# --- the registry ------------------------------------------------------------------------------
_NO_PARAMS = lambda c, key, n_classes, dim: {}
_NONE = lambda c: {}
_UNNORMALISED = ("is defined on unnormalised embeddings (inner products and a penalty on "
                 "their norm), while DIML's quantity compares unit parts and is bounded by 1")
_PROXIES = ("compares each image with learned class proxies, not with the other images of "
            "the batch; a proxy has no parts to match")


@dataclasses.dataclass(frozen=True)
class Loss:
  """One entry of :data:`LOSSES`.

  Attributes:
    build: ``(config.loss, pairs) -> loss_fn(params, g [b, d], aux, labels, key)``.
    init: ``(config.loss, key, n_classes, dim) -> {name: array}``, the loss's parameters.
    learning_rates: ``config.loss -> {name: LearningRate}``, one per parameter.
    miners: the values ``config.loss.miner`` may take; empty: the loss mines by itself.
    no_diml: why it cannot train on DIML's quantity; ``""``: it can.
  """

  build: Callable[[ml_collections.ConfigDict, PairQuantities], LossFn]
  init: Callable[..., dict[str, jax.Array]] = _NO_PARAMS
  learning_rates: Callable[[ml_collections.ConfigDict], dict[str, LearningRate]] = _NONE
  miners: tuple[str, ...] = ()
  no_diml: str = ""


LOSSES: dict[str, Loss] = {
    "margin": Loss(
        _margin, miners=SAMPLERS,
        init=lambda c, key, n, dim: {"beta": margin.init_beta(n, c.margin.beta)},
        learning_rates=lambda c: {"beta": LearningRate(c.margin.beta_lr)}),
    "multisimilarity": Loss(_multisimilarity),
    "triplet": Loss(_triplet, miners=TRIPLET_MINERS),
    "contrastive": Loss(_contrastive, miners=SAMPLERS + ("all",)),
    "quadruplet": Loss(_quadruplet, miners=SAMPLERS),
    "histogram": Loss(_histogram),
    "snr": Loss(_snr, miners=TRIPLET_MINERS,
                no_diml="compares the variance of the difference of two embedding vectors, "
                        "a function of the vectors rather than of a pair similarity"),
    "npair": Loss(_npair, no_diml=_UNNORMALISED),
    "angular": Loss(_angular, no_diml=_UNNORMALISED),
    "lifted": Loss(_lifted, no_diml=_UNNORMALISED),
    "proxyanchor": Loss(
        _proxy_anchor, no_diml=_PROXIES,
        init=lambda c, key, n, dim: {"proxies": proxy_anchor.init_proxies(key, n, dim)},
        learning_rates=lambda c: {"proxies": LearningRate(
            c.proxyanchor.lr_multiplier, relative=True, weight_decay=True)}),
    "proxynca": Loss(
        _proxy_nca, no_diml=_PROXIES,
        init=lambda c, key, n, dim: {"proxies": proxy_nca.init_proxy_nca(key, n, dim)},
        learning_rates=lambda c: {"proxies": LearningRate(c.proxynca.lr_multiplier,
                                                          relative=True)}),
    "softtriple": Loss(
        _softtriple, no_diml=_PROXIES,
        init=lambda c, key, n, dim: {"centroids": softtriple.init_centroids(
            key, n, dim, c.softtriple.n_centroids)},
        learning_rates=lambda c: {"centroids": LearningRate(c.softtriple.lr_multiplier,
                                                            relative=True)}),
    "arcface": Loss(
        _arcface, no_diml=_PROXIES,
        init=lambda c, key, n, dim: {"class_weights": softmax.init_class_weights(key, n, dim)},
        learning_rates=lambda c: {"class_weights": LearningRate(c.arcface.lr)}),
    "softmax": Loss(
        _softmax, no_diml=_PROXIES,
        init=lambda c, key, n, dim: {"class_weights": softmax.init_class_weights(key, n, dim)},
        learning_rates=lambda c: {"class_weights": LearningRate(c.softmax.lr)}),
}


def build(config: ml_collections.ConfigDict, mesh: Mesh | None,
          axis_name: str = "data") -> LossFn:
  """``loss_fn(params, g [b, d], aux, labels [b], key) -> LossOutput`` of ``config.loss``.

  Args:
    config: a run's config (``config.loss``, and ``config.matching`` for DIML).
    mesh: the device mesh the structural matching is split over, or ``None``.
    axis_name: the mesh axis the batch is split along.
  """
  entry = LOSSES[config.loss.name]
  return entry.build(config.loss, PairQuantities(config, mesh, axis_name))


def per_group(config: ml_collections.ConfigDict) -> bool:
  """Whether each of DGML's groups has its own loss parameters (``loss.per_group_params``
  with ``model.head="grouping"``), as the reference DGML code's margin criterion keeps one
  beta per group and class (XinyiXuXD/DGML-master ``criteria/margin.py``); else one set serves
  every group."""
  return config.model.head == "grouping" and bool(config.loss.per_group_params)


def init_params(config: ml_collections.ConfigDict, key: jax.Array, num_classes: int,
                dim: int) -> dict[str, jax.Array]:
  """The loss's own parameters for ``num_classes`` classes and ``dim``-d embeddings.

  With :func:`per_group`, ``model.num_groups`` sets (each from its own key), stacked along
  a leading group axis: margin's beta ``[k, n_classes]``, proxies ``[k, n_classes, dim]``.
  """
  init = LOSSES[config.loss.name].init
  if not per_group(config):
    return init(config.loss, key, num_classes, dim)
  sets = [init(config.loss, k, num_classes, dim)
          for k in jax.random.split(key, config.model.num_groups)]
  return jax.tree.map(lambda *group: jnp.stack(group), *sets)


def learning_rates(config: ml_collections.ConfigDict) -> dict[str, LearningRate]:
  """The optimiser of each of the loss's parameters."""
  return LOSSES[config.loss.name].learning_rates(config.loss)


def check(config: ml_collections.ConfigDict) -> None:
  """:class:`~diml_jax.errors.UsageError` naming the key if ``config.loss`` names no loss, a miner the loss does
  not take, or DIML for a loss that cannot train on it."""
  c = config.loss
  if c.name not in LOSSES:
    raise UsageError(f"--config.loss.name={c.name!r} is not one of {tuple(LOSSES)}.")
  entry = LOSSES[c.name]
  if entry.miners and c.miner not in entry.miners:
    raise UsageError(f"--config.loss.miner={c.miner!r} is not one of {entry.miners}, the "
                     f"miners of the {c.name!r} loss.")
  if c.diml and entry.no_diml:
    raise UsageError(
        f"--config.loss.diml=True: the {c.name!r} loss {entry.no_diml}. Train it with "
        f"--config.loss.diml=False and evaluate with structural re-ranking (test-time "
        f"DIML); losses that train on DIML's quantity: "
        f"{tuple(n for n, e in LOSSES.items() if not e.no_diml)}.")
