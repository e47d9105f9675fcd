"""DGML attentive grouping: k embeddings per image, each pooled by a learned spatial query.

DGML (Xu, Wang, Deng, Yuan, Ji, "Towards Improved and Interpretable Deep Metric Learning via
Attentive Grouping", arXiv 2011.08877; reference code ``architectures/group_layers.py``,
``LearnQ_fen``) replaces global pooling by ``k`` attention-pooled groups. From a backbone's
feature map ``X`` (``r = h * w`` positions of ``c`` channels):

- keys ``K = X W_k``, a 1x1 convolution to ``c / 8`` channels (``key_reduction = 8``);
- values ``V = X W_v``, a 1x1 convolution straight to the group's embedding size ``d``
  (the reference's ``dim_per = full_dim // k``: 512 // 3 = 170; no further projection);
- group ``g`` has one learned query ``q_g`` (the reference's 1x1 convolution ``c / 8 -> 1``);
  its attention over the positions is ``a_g = softmax_r(K q_g)`` and its embedding
  ``e_g = sum_r a_g[r] V[r]``, L2-normalised per group.

All three projections have no bias, as in the reference. The attention maps ``a_g`` are the
interpretation: which region each group looks at. Since only 1x1 convolutions, a softmax
over positions and a weighted sum touch the positions, the embeddings are invariant to any
permutation of the positions (a claim of the paper; tested), and the attention maps
permute with them.

Training adds :func:`diversity_loss` between the groups of each image, weighted by
``0.02`` (CUB-200), ``0.01`` (Cars196) or ``0.03`` (SOP) in the reference configs, to the
metric loss, which the reference applies to each group's embedding separately and averages
over the groups.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diml_jax.models.common import check_images, l2_normalize

# PyTorch's default Conv2d initialisation, U(+-1/sqrt(fan_in)), as the reference leaves it.
_torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class AttentiveGrouping(nn.Module):
  """DGML's grouping head on a feature map; see the module docstring.

  Parameters: ``key`` ``[c, c / key_reduction]``, ``value`` ``[c, group_dim]`` (1x1
  convolutions as dense kernels) and ``queries`` ``[c / key_reduction, num_groups]``.

  Attributes:
    num_groups: ``k`` (3 in the paper).
    group_dim: ``d``, each group's embedding size (170 in the paper: 512 // 3).
    key_reduction: the keys have ``c // key_reduction`` channels (8).
    normalize: L2-normalise each group's embedding (the reference's ``*_normalize`` models).
  """
  num_groups: int = 3
  group_dim: int = 170
  key_reduction: int = 8
  normalize: bool = True

  @nn.compact
  def __call__(self, feature_map: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Groups a feature map.

    Args:
      feature_map: ``[b, h, w, c]``, any backbone's.

    Returns:
      ``(groups, attention)``: the group embeddings ``[b, k, d]`` and their attention maps
      ``[b, k, h, w]`` (each sums to 1 over the positions), float32.

    Raises:
      ValueError: a feature map that is not ``[b, h, w, c]`` with ``c >= key_reduction``,
        or ``num_groups``/``group_dim`` below 1.
    """
    shape = jnp.shape(feature_map)
    if len(shape) != 4 or min(shape) < 1:
      raise ValueError(f"`feature_map` must be a non-empty [b, h, w, c]; got shape {shape}.")
    key_dim = shape[-1] // self.key_reduction
    if key_dim < 1:
      raise ValueError(f"the feature map's {shape[-1]} channels give no key channel with"
                       f" `key_reduction`={self.key_reduction}; it must be at most the"
                       " channel count.")
    if self.num_groups < 1 or self.group_dim < 1:
      raise ValueError(f"`num_groups` and `group_dim` must be >= 1; got {self.num_groups} and"
                       f" {self.group_dim}.")
    x = jnp.asarray(feature_map, jnp.float32)
    dense = lambda features, name: nn.Dense(features, use_bias=False, name=name,
                                            kernel_init=_torch_default_init)
    keys = dense(key_dim, "key")(x)
    values = dense(self.group_dim, "value")(x)
    queries = self.param("queries", _torch_default_init, (key_dim, self.num_groups))
    b, h, w, _ = shape
    logits = jnp.einsum("bhwc,ck->bkhw", keys, queries).reshape(b, self.num_groups, h * w)
    attention = jax.nn.softmax(logits, axis=-1)
    groups = jnp.einsum("bkr,brd->bkd", attention, values.reshape(b, h * w, self.group_dim))
    if self.normalize:
      groups = l2_normalize(groups)
    return groups, attention.reshape(b, self.num_groups, h, w)


class GroupingModel(nn.Module):
  """A backbone with DGML's grouping head: ``k`` embeddings per image and their attention.

  Parameters: ``params["backbone"]`` (and ``batch_stats["backbone"]``) and
  ``params["grouping"]`` (:class:`AttentiveGrouping`).

  Attributes:
    backbone: a module called as ``backbone(images, train=...)`` returning
      ``(pooled [b, c], aux)`` with ``aux["feature_map"]`` ``[b, h, w, c]``.
    num_groups: ``k``.
    group_dim: ``d`` per group.
    key_reduction: see :class:`AttentiveGrouping`.
    freeze_backbone: stop gradients at the backbone's feature map, so only the head
      trains (as :class:`~diml_jax.models.EmbeddingModel`'s).
  """
  backbone: nn.Module
  num_groups: int = 3
  group_dim: int = 170
  key_reduction: int = 8
  freeze_backbone: bool = False

  def __call__(self, images: jnp.ndarray, *, train: bool = False
               ) -> tuple[jnp.ndarray, dict[str, Any]]:
    """Embeds a batch of images.

    Args:
      images: normalised images ``[b, h, w, 3]`` (see the backbone's ``pixel_mean`` /
        ``pixel_std``).
      train: training mode, passed to the backbone.

    Returns:
      ``(embedding, aux)``: the concatenated group embeddings divided by ``sqrt(k)``,
      ``[b, k * d]`` with unit norm (the reference retrieves with the plain concatenation,
      which ranks identically); in ``aux``: ``"groups"`` ``[b, k, d]`` (each unit norm: the
      input of the per-group metric loss and of :func:`diversity_loss`),
      ``"group_attention"`` ``[b, k, h', w']`` over the backbone's feature map, and the
      backbone's ``"feature_map"`` and ``"pooled"``.
    """
    check_images(images)
    pooled, backbone_aux = self.backbone(images, train=train)
    feature_map = backbone_aux["feature_map"]
    if self.freeze_backbone:
      pooled, feature_map = jax.lax.stop_gradient((pooled, feature_map))
    return self.embed_features(pooled, feature_map)

  @nn.compact
  def embed_features(self, pooled: jnp.ndarray, feature_map: jnp.ndarray
                     ) -> tuple[jnp.ndarray, dict[str, Any]]:
    """The head alone: the group embeddings of a backbone's outputs.

    What :meth:`__call__` applies after the backbone; on its own it trains the head on a
    frozen backbone's cached outputs (:mod:`diml_jax.feature_cache`).

    Args:
      pooled: the backbone's pooled features ``[b, c]`` (passed through to ``aux``).
      feature_map: its last-stage feature map ``[b, h, w, c]``.

    Returns:
      ``(embedding [b, k * d], aux)`` as :meth:`__call__`'s.
    """
    groups, attention = AttentiveGrouping(self.num_groups, self.group_dim, self.key_reduction,
                                          name="grouping")(feature_map)
    embedding = groups.reshape(groups.shape[0], -1) / math.sqrt(self.num_groups)
    aux = {"groups": groups, "group_attention": attention, "feature_map": feature_map,
           "pooled": pooled}
    return embedding, aux


def diversity_loss(groups: jnp.ndarray, *, beta1: float = 2.0, beta2: float = 0.5,
                   cost: float = 25.0) -> jnp.ndarray:
  """DGML's binomial-deviance diversity loss between the groups of each image.

  Every pair of groups ``i < j`` of the same image is a negative pair of the binomial
  deviance loss (Yi et al., 2014): ``log(1 + exp(beta1 * cost * (cos(e_i, e_j) - beta2)))``,
  averaged over the images, summed over the pairs and divided by ``k - 1`` -- the
  reference's ``criteria/diversity.py`` (``dirdiv_bd``), whose ``bd_loss`` with an identity
  negative mask reduces to this.

  Args:
    groups: group embeddings ``[b, k, d]`` (normalised here).
    beta1: scale of the binomial deviance (2).
    beta2: similarity margin (0.5).
    cost: weight of negative pairs, the reference's ``cn`` (25).

  Returns:
    the scalar loss (0 for ``k = 1``); weight it by 0.01-0.03 in the total loss.

  Raises:
    ValueError: ``groups`` not ``[b, k, d]``.

  References:
    Xu, Wang, Deng, Yuan, Ji. Towards Improved and Interpretable Deep Metric Learning via
    Attentive Grouping. arXiv 2011.08877 (the diversity loss).
  """
  if jnp.ndim(groups) != 3:
    raise ValueError(f"`groups` must be group embeddings [b, k, d]; got shape"
                     f" {jnp.shape(groups)}.")
  k = groups.shape[1]
  if k < 2:
    return jnp.zeros((), jnp.float32)
  e = l2_normalize(jnp.asarray(groups, jnp.float32))
  sims = jnp.einsum("bid,bjd->bij", e, e)
  pairs = jnp.triu(jnp.ones((k, k), bool), 1)
  deviance = jax.nn.softplus(beta1 * cost * (sims - beta2))
  return jnp.sum(jnp.where(pairs, deviance.mean(0), 0.0)) / (k - 1)
