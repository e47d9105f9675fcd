"""BN-Inception (Inception with batch normalisation), returning its last feature map.

BN-Inception (Ioffe & Szegedy, ICML 2015) is GoogLeNet with batch norm after every
convolution and the 5x5 branches replaced by two stacked 3x3 convolutions. It is the
other backbone of the deep-metric-learning lineage the DIML and DGML code bases come from
(Roth et al., "Revisiting Training Strategies and Generalization Performance in Deep
Metric Learning", ICML 2020; the published DIML code's ``architectures/bninception.py``
wraps the PyTorch port in Cadene's ``pretrainedmodels``). The layout is that port's:

=========  =========  ======  ====  =====  ======  ======  ==========  ======
block      in         1x1     3x3   3x3    double  double  pool        out
                              red.         red.    3x3     (proj)
=========  =========  ======  ====  =====  ======  ======  ==========  ======
3a         192        64      64    64     64      96      avg 32      256
3b         256        64      64    96     64      96      avg 64      320
3c (s2)    320        --      128   160    64      96      max         576
4a         576        224     64    96     96      128     avg 128     576
4b         576        192     96    128    96      128     avg 128     576
4c         576        160     128   160    128     160     avg 128     608
4d         608        96      128   192    160     192     avg 128     608
4e (s2)    608        --      128   192    192     256     max         1056
5a         1056       352     192   320    160     224     avg 128     1024
5b         1024       352     192   320    192     224     max 128     1024
=========  =========  ======  ====  =====  ======  ======  ==========  ======

before a stem of a 7x7 stride-2 convolution (64), a 3x3 stride-2 max-pool, a 1x1 (64) and a
3x3 (192) convolution and another 3x3 stride-2 max-pool. Every convolution has a bias and
is followed by batch norm (``epsilon=1e-5``) and ReLU; each block concatenates its branches
in the order of the table. The max-pools round their output size up (PyTorch's
``ceil_mode=True``); the average pools (3x3, stride 1, padding 1) divide by 9 also at the
border (``count_include_pad=True``). In stride-2 blocks the strided convolution and the
max-pool only agree on the output size when the block's input is even, so image sides
must keep the maps even there: multiples of 32 always do (224 px gives a 7x7x1024 map).

Module names are the port's state-dict keys (``inception_3a_double_3x3_1`` and its
``inception_3a_double_3x3_1_bn``; the classifier ``last_linear``), so
:mod:`diml_jax.models.pretrained` converts its ImageNet weights one key at a time.

**Input convention.** The weights come from Caffe: BGR channels on the 0..255 scale minus
the mean ``[104, 117, 128]`` (BGR), no division (the port's ``input_space="BGR"``,
``input_range=[0, 255]``, ``mean=[104, 117, 128]``, ``std=[1, 1, 1]``). As for every
backbone here, inputs are RGB images ``(x - pixel_mean) / pixel_std``, with
``pixel_mean`` the same mean in RGB order, ``(128, 117, 104)``, and ``pixel_std`` 1; the
network reverses the channels to BGR as its first step. (The published DIML code divides
by ``0.0039 * 255 = 0.9945`` instead of 1, scaling its inputs by 0.55%.)

Like :mod:`diml_jax.models.resnet`, the backbone returns ``(pooled, aux)`` with
``aux["feature_map"]`` ``[b, h, w, 1024]`` and frozen batch norm by default.
"""
import functools
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from diml_jax.models.common import check_images

# PyTorch's default convolution initialisation, U(+-1/sqrt(fan_in)) (for training from
# scratch; the port's weights replace it).
conv_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class Block(NamedTuple):
  """One Inception block: the output channels of each branch (0: no such branch).

  A stride-2 block (``strides=2``) has no 1x1 branch and no pool projection: its
  3x3 and double-3x3 branches stride, and its max-pool passes the input's channels on.
  """
  name: str
  c1x1: int
  reduce3x3: int
  c3x3: int
  reduce_double: int
  double3x3: int
  pool: str              # "avg" or "max"
  pool_proj: int
  strides: int = 1


BLOCKS = (
    Block("3a", 64, 64, 64, 64, 96, "avg", 32),
    Block("3b", 64, 64, 96, 64, 96, "avg", 64),
    Block("3c", 0, 128, 160, 64, 96, "max", 0, strides=2),
    Block("4a", 224, 64, 96, 96, 128, "avg", 128),
    Block("4b", 192, 96, 128, 96, 128, "avg", 128),
    Block("4c", 160, 128, 160, 128, 160, "avg", 128),
    Block("4d", 96, 128, 192, 160, 192, "avg", 128),
    Block("4e", 0, 128, 192, 192, 256, "max", 0, strides=2),
    Block("5a", 352, 192, 320, 160, 224, "avg", 128),
    Block("5b", 352, 192, 320, 192, 224, "max", 128),
)


def max_pool_ceil(x: jnp.ndarray, window: int, strides: int, padding: int = 0) -> jnp.ndarray:
  """Max-pooling of ``[b, h, w, c]`` with PyTorch's ``ceil_mode=True`` output size.

  The output has ``ceil((n + 2 padding - window) / strides) + 1`` positions per axis
  (one fewer if the last window would start in the right padding), its last window
  reaching past the input where the floor would drop it; positions outside count as -inf.
  """
  pads = []
  for n in x.shape[1:3]:
    out = -(-(n + 2 * padding - window) // strides) + 1
    if (out - 1) * strides >= n + padding:
      out -= 1
    pads.append((padding, (out - 1) * strides + window - n - padding))
  return nn.max_pool(x, (window, window), strides=(strides, strides), padding=pads)


class BNInception(nn.Module):
  """BN-Inception in the layout of Cadene's PyTorch port; see the module docstring.

  Attributes:
    num_classes: if set, a linear classifier ``last_linear`` on the pooled features gives
      ``aux["logits"]``.
    frozen_bn: normalise with running statistics even when ``train=True``.
    dtype: computation dtype; parameters stay float32.
  """
  num_classes: int | None = None
  frozen_bn: bool = True
  dtype: Any = jnp.float32

  # The port's BGR mean [104, 117, 128] in RGB order, on 0..255 pixels, and no scaling.
  pixel_mean: ClassVar[tuple[float, float, float]] = (128.0, 117.0, 104.0)
  pixel_std: ClassVar[tuple[float, float, float]] = (1.0, 1.0, 1.0)

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool = False
               ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Runs the network.

    Args:
      images: normalised RGB images ``[b, h, w, 3]``.
      train: training mode; only matters for ordinary (non-frozen) batch norm, whose
        ``batch_stats`` must then be mutable.

    Returns:
      ``(pooled, aux)``: pooled features ``[b, 1024]``; ``aux["feature_map"]``
      ``[b, h / 32, w / 32, 1024]`` (for sides that are multiples of 32) and, with
      ``num_classes``, ``aux["logits"]``.

    Raises:
      ValueError: images that are not ``[b, h, w, 3]``, or whose sides make an odd map
        enter a stride-2 block.
    """
    check_images(images)
    norm = functools.partial(nn.BatchNorm, use_running_average=self.frozen_bn or not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype)

    def unit(x, features, kernel, name, strides=1):
      """Convolution (with bias, "same" padding) -> batch norm -> ReLU."""
      pad = kernel // 2
      x = nn.Conv(features, (kernel, kernel), strides=strides, padding=((pad, pad), (pad, pad)),
                  dtype=self.dtype, kernel_init=conv_kernel_init, name=name)(x)
      return nn.relu(norm(name=f"{name}_bn")(x))

    # Caffe's weights expect BGR: reverse the RGB channels once, here.
    x = jnp.asarray(images, self.dtype)[..., ::-1]
    x = unit(x, 64, 7, "conv1_7x7_s2", strides=2)
    x = max_pool_ceil(x, 3, 2)
    x = unit(x, 64, 1, "conv2_3x3_reduce")
    x = unit(x, 192, 3, "conv2_3x3")
    x = max_pool_ceil(x, 3, 2)
    for block in BLOCKS:
      x = _inception(x, block, unit, images.shape)
    pooled = jnp.mean(x, axis=(1, 2))
    aux = {"feature_map": x}
    if self.num_classes is not None:
      aux["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="last_linear")(pooled)
    return pooled, aux


def _inception(x: jnp.ndarray, block: Block, unit, image_shape) -> jnp.ndarray:
  """One block: its branches, concatenated in the port's order (1x1, 3x3, double, pool)."""
  prefix = f"inception_{block.name}"
  if block.strides == 2 and (x.shape[1] % 2 or x.shape[2] % 2):
    raise ValueError(
        f"BN-Inception's stride-2 block {prefix} needs an even feature map, and images of "
        f"{image_shape[1]}x{image_shape[2]} give {x.shape[1]}x{x.shape[2]} there: use image "
        f"sides that are multiples of 32 (e.g. 224).")
  branches = []
  if block.c1x1:
    branches.append(unit(x, block.c1x1, 1, f"{prefix}_1x1"))
  y = unit(x, block.reduce3x3, 1, f"{prefix}_3x3_reduce")
  branches.append(unit(y, block.c3x3, 3, f"{prefix}_3x3", strides=block.strides))
  y = unit(x, block.reduce_double, 1, f"{prefix}_double_3x3_reduce")
  y = unit(y, block.double3x3, 3, f"{prefix}_double_3x3_1")
  branches.append(unit(y, block.double3x3, 3, f"{prefix}_double_3x3_2", strides=block.strides))
  if block.strides == 2:
    branches.append(max_pool_ceil(x, 3, 2))
  else:
    if block.pool == "avg":
      y = nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)), count_include_pad=True)
    else:
      y = max_pool_ceil(x, 3, 1, padding=1)
    branches.append(unit(y, block.pool_proj, 1, f"{prefix}_pool_proj"))
  return jnp.concatenate(branches, axis=-1)
