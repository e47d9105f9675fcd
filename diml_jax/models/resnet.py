"""ResNet backbones in torchvision's layout, returning their last-stage feature map.

The layout is torchvision's (He et al., CVPR 2016, "ResNet v1.5"): a 7x7 stride-2 stem,
a 3x3 stride-2 max-pool, four stages, and in bottleneck blocks the stride on the 3x3
convolution. Padding is symmetric and explicit (3 for 7x7, 1 for 3x3) as in PyTorch: XLA's
``"SAME"`` pads stride-2 layers asymmetrically and would not match pretrained weights.
Module names mirror torchvision's state-dict keys (``layer1_0/conv1`` <-> ``layer1.0.conv1``)
so :mod:`diml_jax.models.pretrained` converts weights one key at a time.

Every backbone returns ``(pooled, aux)``: the globally average-pooled features ``[b, c]``
and ``aux["feature_map"]``, the last-stage map ``[b, h, w, c]`` (``7x7x2048`` for ResNet-50
at 224 px), plus ``aux["logits"]`` when built with ``num_classes``.

Batch norm is *frozen* by default, as in the DIML papers: it always normalises with the
running statistics (never with batch statistics, never updating them) while its scale and
bias still train. ``frozen_bn=False`` gives ordinary batch norm (batch statistics and a
``batch_stats`` update when ``train=True``).
"""
import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from diml_jax.models.common import check_images

ModuleDef = Any

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out", relu).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34).

  Attributes:
    features: output channels.
    strides: stride of the first 3x3 convolution.
    conv: convolution constructor.
    norm: batch-norm constructor.
  """
  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """``[b, h, w, c_in] -> [b, h / strides, w / strides, features]``."""
    pad = ((1, 1), (1, 1))
    y = self.conv(self.features, (3, 3), strides=self.strides, padding=pad, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), padding=pad, name="conv2")(y)
    y = self.norm(name="bn2")(y)
    return nn.relu(y + _shortcut(x, self.features, self.strides, self.conv, self.norm))


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 convolutions with 4x expansion (ResNet-50/101).

  Attributes:
    features: channels of the 3x3 convolution; the block outputs ``4 * features``.
    strides: stride of the 3x3 convolution (torchvision's v1.5 placement).
    conv: convolution constructor.
    norm: batch-norm constructor.
  """
  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """``[b, h, w, c_in] -> [b, h / strides, w / strides, 4 * features]``."""
    out_features = self.features * self.expansion
    y = self.conv(self.features, (1, 1), padding="VALID", name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), strides=self.strides, padding=((1, 1), (1, 1)),
                  name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(out_features, (1, 1), padding="VALID", name="conv3")(y)
    y = self.norm(name="bn3")(y)
    return nn.relu(y + _shortcut(x, out_features, self.strides, self.conv, self.norm))


def _shortcut(x: jnp.ndarray, features: int, strides: int, conv: ModuleDef,
              norm: ModuleDef) -> jnp.ndarray:
  """Identity, or a strided 1x1 projection + norm where the shape changes (torchvision)."""
  if strides == 1 and x.shape[-1] == features:
    return x
  x = conv(features, (1, 1), strides=strides, padding="VALID", name="downsample_0")(x)
  return norm(name="downsample_1")(x)


class ResNet(nn.Module):
  """ResNet in torchvision's layout; see the module docstring.

  Inputs are RGB images normalised with ImageNet statistics on the 0..255 scale:
  ``(x - pixel_mean) / pixel_std``.

  Attributes:
    stage_sizes: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
    block_cls: :class:`BasicBlock` or :class:`BottleneckBlock`.
    width: channels of the stem and of the first stage's blocks (64 in torchvision);
      doubled at each later stage.
    num_classes: if set, a linear classifier ``fc`` on the pooled features gives
      ``aux["logits"]`` (needed to use or check ImageNet classifiers).
    frozen_bn: normalise with running statistics even when ``train=True``.
    dtype: computation dtype (e.g. ``jnp.bfloat16`` on accelerators); parameters stay
      float32.
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  width: int = 64
  num_classes: int | None = None
  frozen_bn: bool = True
  dtype: Any = jnp.float32

  pixel_mean: ClassVar[tuple[float, float, float]] = (123.675, 116.28, 103.53)
  pixel_std: ClassVar[tuple[float, float, float]] = (58.395, 57.12, 57.375)

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool = False
               ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Runs the network.

    Args:
      images: normalised images ``[b, h, w, 3]``.
      train: training mode; only matters for ordinary (non-frozen) batch norm, whose
        ``batch_stats`` must then be mutable.

    Returns:
      ``(pooled, aux)``: pooled features ``[b, c]``; ``aux["feature_map"]``
      ``[b, ceil(h / 32), ceil(w / 32), c]`` and, with ``num_classes``,
      ``aux["logits"]`` ``[b, num_classes]``.
    """
    check_images(images)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=conv_kernel_init)
    norm = functools.partial(nn.BatchNorm, use_running_average=self.frozen_bn or not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    x = jnp.asarray(images, self.dtype)
    x = conv(self.width, (7, 7), strides=2, padding=((3, 3), (3, 3)), name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = self.block_cls(self.width * 2**i, strides=2 if i > 0 and j == 0 else 1,
                           conv=conv, norm=norm, name=f"layer{i + 1}_{j}")(x)
    pooled = jnp.mean(x, axis=(1, 2))
    aux = {"feature_map": x}
    if self.num_classes is not None:
      aux["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(pooled)
    return pooled, aux


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock)
# For tests: every code path of ResNet-50 (stem, projections, strides) at 1/8 width.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BottleneckBlock,
                               width=8)
