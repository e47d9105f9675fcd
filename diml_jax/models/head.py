"""The DIML embedding head: a backbone's feature map -> global and local (part) embeddings.

DIML (Zhao et al., ICCV 2021; TPAMI 2023; reference code ``architectures/resnet50_diml.py``
and ``evaluation/eval_diml.py``) keeps the spatial layout of the last-stage feature map: it
is resized to 16x16 (bilinear, ``align_corners=True``), average-pooled to a ``g x g`` grid
(PyTorch ``adaptive_avg_pool2d`` bins, which overlap or differ in size when ``g`` does not
divide 16) and sent through the embedding layer, a 1x1 convolution to ``d`` channels, giving
``R = g * g`` local embeddings per image.

Resizing and pooling are fixed linear maps whose weights sum to one, and the embedding
layer is affine, so the two orders are equal: pooling the map and then embedding (this
module) gives exactly what the reference computes for a *baseline* model at test time --
the embedding layer applied at every position of the map, then pooled to the grid. One
code path therefore serves DIML training and test-time DIML on any baseline (tested).

The global embedding is, by default (``global_from="feature_map"``), the embedding of the
globally average-pooled feature map: the ordinary metric-learning embedding, identical to
the reference baseline's ``last_linear(avgpool(x))``. ``global_from="grid"`` gives the
reference DIML-trained model's choice instead: the mean of the (unnormalised) local
embeddings. Both outputs are L2-normalised as in the reference ``*_normalize`` models.
"""
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from diml_jax.models import rollout
from diml_jax.models.common import check_images, l2_normalize
from diml_jax.models.grid import RESIZE_TO, grid_pool


class EmbeddingModel(nn.Module):
  """A backbone with the DIML embedding head: global and local embeddings of images.

  Serves baseline metric learning (use the global embedding), DIML training (both), and
  test-time DIML on a baseline (the same code; see the module docstring). The grid can be
  changed after training without touching the parameters: ``model.clone(grid_size=2)``.

  Parameters: ``params["backbone"]`` (and ``batch_stats["backbone"]``), and
  ``params["embedding"]``, the 1x1 convolution as a dense layer ``[c, d]``, initialised
  like PyTorch's default (uniform ``+-1/sqrt(c)`` kernel) with a zero bias.

  Attributes:
    backbone: a module called as ``backbone(images, train=...)`` returning
      ``(pooled [b, c], aux)`` with ``aux["feature_map"]`` ``[b, h, w, c]``, e.g.
      ``ResNet50()`` or ``EfficientNetLite0()``.
    embed_dim: ``d``, the embedding size (128 in the papers).
    grid_size: ``g``, cells per side of the part grid (4 in the papers; 1..7 studied).
    resize_to: side of the bilinear resize before pooling (16); ``None`` follows the
      reference's test-time rule for baselines (see :func:`diml_jax.models.grid.grid_pool_matrix`).
    global_from: ``"feature_map"`` (embedding of the average-pooled map, the baseline
      embedding) or ``"grid"`` (mean of the local embeddings, the reference DIML model's).
    normalize: L2-normalise both outputs (the reference ``*_normalize`` variants).
    freeze_backbone: stop gradients at the backbone's outputs, so only the head trains
      and no backward pass runs through the backbone (a cheap fine-tuning regime, used
      by the CPU demo).
    rollout_blocks: for a backbone that returns attention weights (a ViT), the ``L`` of
      the truncated attention rollout that gives ``aux["part_weights"]``; ``None``: all
      blocks.
  """
  backbone: nn.Module
  embed_dim: int = 128
  grid_size: int = 4
  resize_to: int | None = RESIZE_TO
  global_from: Literal["feature_map", "grid"] = "feature_map"
  normalize: bool = True
  freeze_backbone: bool = False
  rollout_blocks: int | None = None

  def __call__(self, images: jnp.ndarray, *, train: bool = False
               ) -> tuple[jnp.ndarray, dict]:
    """Embeds a batch of images.

    Args:
      images: normalised images ``[b, h, w, 3]`` (see the backbone's ``pixel_mean`` /
        ``pixel_std``).
      train: training mode, passed to the backbone.

    Returns:
      ``(global, aux)``: the global embedding ``[b, d]``, and in ``aux``:
      ``"local"`` ``[b, g * g, d]`` (the ``g = self.grid_size`` cells per side in
      row-major order: ``local.reshape(b, g, g, d)`` is the grid), the backbone's
      ``"feature_map"`` ``[b, h, w, c]`` and ``"pooled"`` ``[b, c]`` (the average-pooled
      map), and whatever else the backbone returns in its ``aux`` (a ViT's
      ``"attentions"``). The grid size is not in ``aux``: an int returned from ``jit`` would become an
      array, while ``self.grid_size`` stays static. With attentions, also
      ``"part_weights"`` ``[b, g * g]``: each cell's share of the class token in the
      truncated attention rollout over the last ``rollout_blocks`` blocks, pooled to the
      grid as the local embeddings are (:func:`diml_jax.models.rollout.pool_relevance`):
      the marginals of DIML's transport problem for ViTs (TPAMI 2023).
    """
    check_images(images)
    pooled, backbone_aux = self.backbone(images, train=train)
    feature_map = backbone_aux["feature_map"]
    if self.freeze_backbone:
      pooled, feature_map = jax.lax.stop_gradient((pooled, feature_map))
    global_, head_aux = self.embed_features(pooled, feature_map)
    # The backbone's own outputs (e.g. a ViT's "attentions") pass through.
    aux = {**backbone_aux, **head_aux}
    if "attentions" in backbone_aux:
      relevance = rollout.patch_relevance(backbone_aux["attentions"],
                                          num_blocks=self.rollout_blocks)
      aux["part_weights"] = rollout.pool_relevance(
          relevance.reshape(feature_map.shape[:3]), self.grid_size, resize_to=self.resize_to)
    return global_, aux

  @nn.compact
  def embed_features(self, pooled: jnp.ndarray, feature_map: jnp.ndarray
                     ) -> tuple[jnp.ndarray, dict]:
    """The head alone: the embeddings of a backbone's outputs.

    What :meth:`__call__` applies after the backbone; called on its own (``model.apply(
    variables, pooled, feature_map, method="embed_features")``) it trains the head on a
    frozen backbone's cached outputs (:mod:`diml_jax.feature_cache`).

    Args:
      pooled: the backbone's pooled features ``[b, c]``.
      feature_map: its last-stage feature map ``[b, h, w, c]``.

    Returns:
      ``(global [b, d], {"local": [b, g * g, d], "feature_map", "pooled"})``, as
      :meth:`__call__`'s.
    """
    if self.global_from not in ("feature_map", "grid"):
      raise ValueError("`global_from` must be 'feature_map' or 'grid'; got"
                       f" {self.global_from!r}.")
    grid = grid_pool(feature_map.astype(jnp.float32), self.grid_size,
                     resize_to=self.resize_to)
    # U(-1/sqrt(c), 1/sqrt(c)), PyTorch's default for the reference's Conv2d.
    embed = nn.Dense(self.embed_dim, name="embedding",
                     kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"))
    local = embed(grid).reshape(grid.shape[0], self.grid_size**2, self.embed_dim)
    if self.global_from == "grid":
      global_ = jnp.mean(local, axis=1)
    else:
      global_ = embed(pooled.astype(jnp.float32))
    if self.normalize:
      local, global_ = l2_normalize(local), l2_normalize(global_)
    return global_, {"local": local, "feature_map": feature_map, "pooled": pooled}
