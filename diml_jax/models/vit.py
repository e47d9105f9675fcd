"""Vision Transformers in the DeiT / timm layout, returning patch tokens and attention maps.

The architecture is ViT's (Dosovitskiy et al., ICLR 2021) as DeiT (Touvron et al., ICML 2021)
and timm ship it: a ``patch_size`` x ``patch_size`` stride-``patch_size`` convolution embeds
the patches, a learned class token is prepended and learned position embeddings are added;
``depth`` pre-norm blocks ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` (LayerNorm with
``epsilon=1e-6``, multi-head self-attention with a fused ``qkv`` projection, a two-layer MLP
with exact GELU), then a final LayerNorm. No dropout or stochastic depth: the backbone is
fine-tuned from pretrained weights for metric learning.

Like the CNN backbones, a ViT returns ``(pooled, aux)``: ``pooled`` is the class token after
the final norm, ``[b, c]`` (what DeiT classifies from), ``aux["feature_map"]`` the patch tokens
``[b, h / p, w / p, c]`` in row-major patch order, and ``aux["attentions"]`` the attention
weights of every block, a tuple of ``depth`` arrays ``[b, heads, n + 1, n + 1]`` (token 0 is
the class token) -- the input of the truncated attention rollout
(:mod:`diml_jax.models.rollout`) that weights the patches in DIML's transport problem (TPAMI
2023). As a tuple nothing is copied into one array, and under ``jit`` the weights of blocks
that a caller does not use are not kept.

Position embeddings are learned for an ``image_size`` x ``image_size`` input; other sizes
(multiples of ``patch_size``) resample the grid part bicubically as timm does
(``resample_abs_pos_embed``; PyTorch's ``interpolate(mode="bicubic", align_corners=False)``).

Module names mirror timm's state-dict keys (``blocks_3/attn/qkv`` <-> ``blocks.3.attn.qkv``)
so :func:`vit_variables` converts DeiT and timm checkpoints one key at a time.
"""
import functools
import math
from typing import Any, ClassVar, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diml_jax.models.common import check_images
from diml_jax.models.pretrained import convert_state_dict

# timm initialises linear layers and the learned tokens with a truncated normal, std 0.02.
_dense_init = nn.initializers.truncated_normal(0.02)
# Parameters that are not a layer's kernel/scale/bias: named as in timm, copied as they are.
_TOKENS = ("cls_token", "pos_embed")
_CUBIC_A = -0.75  # PyTorch's bicubic kernel coefficient


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """Weights ``[out_size, in_size]`` of 1-D bicubic resampling as PyTorch computes it.

  ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`` without
  antialiasing: output ``o`` samples input coordinate ``(o + 0.5) * in / out - 0.5`` with Keys'
  cubic kernel (``a = -0.75``) over four neighbours, clamped at the borders.
  """
  weights = np.zeros((out_size, in_size))
  for o in range(out_size):
    src = (o + 0.5) * in_size / out_size - 0.5
    base = math.floor(src)
    t = src - base
    for tap in range(-1, 3):
      d = abs(t - tap)
      if d <= 1:
        w = ((_CUBIC_A + 2) * d - (_CUBIC_A + 3)) * d * d + 1
      else:
        w = ((_CUBIC_A * d - 5 * _CUBIC_A) * d + 8 * _CUBIC_A) * d - 4 * _CUBIC_A
      weights[o, min(max(base + tap, 0), in_size - 1)] += w
  return weights


def resample_pos_embed(pos_embed: jnp.ndarray, grid: tuple[int, int]) -> jnp.ndarray:
  """Resamples learned position embeddings to another patch grid (timm's rule).

  Args:
    pos_embed: ``[1, 1 + g * g, c]``: the class token's embedding, then a square ``g x g``
      grid in row-major order.
    grid: ``(gh, gw)``, the new grid.

  Returns:
    ``[1, 1 + gh * gw, c]``: the class token's embedding unchanged, the grid resampled
    bicubically (:func:`bicubic_matrix`); unchanged if the grid is the same.
  """
  side = math.isqrt(pos_embed.shape[1] - 1)
  if side * side != pos_embed.shape[1] - 1:
    raise ValueError(f"`pos_embed` must be [1, 1 + g * g, c] for a square grid; got shape"
                     f" {pos_embed.shape}.")
  if grid == (side, side):
    return pos_embed
  rows = bicubic_matrix(side, grid[0]).astype(pos_embed.dtype)
  cols = bicubic_matrix(side, grid[1]).astype(pos_embed.dtype)
  patches = pos_embed[:, 1:].reshape(1, side, side, -1)
  patches = jnp.einsum("gh,bhwc,kw->bgkc", rows, patches, cols)
  return jnp.concatenate([pos_embed[:, :1], patches.reshape(1, grid[0] * grid[1], -1)], 1)


class PatchEmbed(nn.Module):
  """Non-overlapping ``patch_size`` x ``patch_size`` patches embedded by one convolution.

  Its single layer is named ``proj``, as timm's ``patch_embed.proj``.
  """
  hidden_size: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
    """``[b, h, w, 3] -> [b, h / patch_size, w / patch_size, hidden_size]``."""
    p = self.patch_size
    # PyTorch's default Conv2d initialisation, U(+-1/sqrt(fan_in)), as timm leaves it.
    return nn.Conv(self.hidden_size, (p, p), strides=p, padding="VALID", dtype=self.dtype,
                   kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                   name="proj")(images)


class Attention(nn.Module):
  """Multi-head self-attention with a fused ``qkv`` projection (timm's ``Attention``).

  Attributes:
    num_heads: attention heads; the width must be divisible by it.
    dtype: computation dtype; the softmax is taken in float32.
  """
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``[b, n, c] -> ([b, n, c], attention weights [b, heads, n, n] float32)``."""
    b, n, c = x.shape
    head_dim = c // self.num_heads
    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=_dense_init)
    # timm's qkv output is laid out as (3, heads, head_dim) along the features.
    qkv = dense(3 * c, name="qkv")(x).reshape(b, n, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * head_dim**-0.5
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v).reshape(b, n, c)
    return dense(c, name="proj")(out), weights


class Mlp(nn.Module):
  """``fc2(gelu(fc1(x)))`` with the exact (erf) GELU of PyTorch's ``nn.GELU``."""
  hidden_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """``[b, n, c] -> [b, n, c]``."""
    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=_dense_init)
    y = nn.gelu(dense(self.hidden_features, name="fc1")(x), approximate=False)
    return dense(x.shape[-1], name="fc2")(y)


class Block(nn.Module):
  """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``[b, n, c] -> ([b, n, c], attention weights [b, heads, n, n])``."""
    norm = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=self.dtype)
    y, weights = Attention(self.num_heads, dtype=self.dtype, name="attn")(norm(name="norm1")(x))
    x = x + y
    x = x + Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(norm(name="norm2")(x))
    return x, weights


class VisionTransformer(nn.Module):
  """ViT in the DeiT / timm layout; see the module docstring.

  Inputs are RGB images ``(x - pixel_mean) / pixel_std`` with ``x`` in 0..255: ImageNet
  statistics, as DeiT was trained with. (timm's "augreg" ViT weights were trained with
  ``(x - 127.5) / 127.5`` instead.)

  Attributes:
    hidden_size: token width ``c``.
    depth: number of blocks.
    num_heads: attention heads per block.
    mlp_dim: hidden width of the MLPs (``4 * hidden_size`` in ViT/DeiT).
    patch_size: side of the square patches (16).
    image_size: side of the square images the position embeddings are learned for; other
      sizes are resampled (see the module docstring).
    num_classes: if set, a linear classifier ``head`` on the class token gives
      ``aux["logits"]``.
    dtype: computation dtype; parameters stay float32, attention weights are float32.
  """
  hidden_size: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int = 16
  image_size: int = 224
  num_classes: int | None = None
  dtype: Any = jnp.float32

  pixel_mean: ClassVar[tuple[float, float, float]] = (123.675, 116.28, 103.53)
  pixel_std: ClassVar[tuple[float, float, float]] = (58.395, 57.12, 57.375)

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool = False
               ) -> tuple[jnp.ndarray, dict[str, Any]]:
    """Runs the network.

    Args:
      images: normalised images ``[b, h, w, 3]``, ``h`` and ``w`` multiples of
        ``patch_size``.
      train: accepted for the backbone interface; the network has no dropout or batch norm.

    Returns:
      ``(pooled, aux)``: the class token after the final norm ``[b, c]``;
      ``aux["feature_map"]`` the patch tokens after the final norm ``[b, h / p, w / p, c]``;
      ``aux["attentions"]`` a tuple of ``depth`` float32 arrays ``[b, heads, n + 1, n + 1]``
      with ``n = (h / p) * (w / p)`` (index 0 is the class token, then the patches in
      row-major order); with ``num_classes``, ``aux["logits"]`` ``[b, num_classes]``.

    Raises:
      ValueError: images that are not ``[b, h, w, 3]``, or whose sides are not multiples of
        ``patch_size``; an ``image_size`` that is not either; a width not divisible by
        ``num_heads``.
    """
    del train  # no dropout or batch norm
    check_images(images)
    p = self.patch_size
    if images.shape[1] % p or images.shape[2] % p:
      raise ValueError(f"`images` height and width must be multiples of the patch size {p};"
                       f" got shape {images.shape}.")
    if self.image_size % p:
      raise ValueError(f"`image_size` ({self.image_size}) must be a multiple of `patch_size`"
                       f" ({p}).")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"`hidden_size` ({self.hidden_size}) must be divisible by `num_heads`"
                       f" ({self.num_heads}).")
    grid = (images.shape[1] // p, images.shape[2] // p)
    side = self.image_size // p
    x = PatchEmbed(self.hidden_size, p, dtype=self.dtype, name="patch_embed")(
        jnp.asarray(images, self.dtype))
    b = x.shape[0]
    x = x.reshape(b, grid[0] * grid[1], self.hidden_size)
    cls = self.param("cls_token", _dense_init, (1, 1, self.hidden_size))
    pos = self.param("pos_embed", _dense_init, (1, 1 + side * side, self.hidden_size))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.hidden_size)).astype(self.dtype),
                         x], axis=1)
    x = x + resample_pos_embed(pos, grid).astype(self.dtype)
    attentions = []
    for i in range(self.depth):
      x, weights = Block(self.num_heads, self.mlp_dim, dtype=self.dtype, name=f"blocks_{i}")(x)
      attentions.append(weights)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
    pooled = x[:, 0]
    aux = {"feature_map": x[:, 1:].reshape(b, *grid, self.hidden_size),
           "attentions": tuple(attentions)}
    if self.num_classes is not None:
      aux["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_dense_init,
                               name="head")(pooled)
    return pooled, aux


ViTS16 = functools.partial(VisionTransformer, hidden_size=384, depth=12, num_heads=6,
                           mlp_dim=1536)
ViTB16 = functools.partial(VisionTransformer, hidden_size=768, depth=12, num_heads=12,
                           mlp_dim=3072)
# For tests: several heads and blocks (to fuse and truncate the rollout) at toy width.
ViTTiny = functools.partial(VisionTransformer, hidden_size=24, depth=3, num_heads=2,
                            mlp_dim=48, image_size=64)


def vit_variables(state_dict: Mapping[str, np.ndarray], model: VisionTransformer, *,
                  ignore: Iterable[str] = ()) -> dict[str, Any]:
  """Converts a DeiT / timm ViT state dict into variables of ``model``, key by key.

  The rules of :func:`~diml_jax.models.pretrained.convert_state_dict` (every variable from
  exactly one key, every key used, kernels transposed to Flax's layout), plus the two token
  parameters ``cls_token`` and ``pos_embed``, copied as they are. DeiT's ``.pth`` files
  nest the state dict: read them with ``load_state_dict(path, key="model")``. Distilled
  DeiT checkpoints (``dist_token``, ``head_dist``) and timm variants with extra layers
  (layer scale, register tokens, ``fc_norm``) are reported as unexpected keys.

  Args:
    state_dict: ``{key: array}`` with timm's names (``blocks.0.attn.qkv.weight``, ...).
    model: the :class:`VisionTransformer` to load into; its ``image_size`` must be the one
      the position embeddings were trained for (224 for DeiT-S/B; other input sizes are
      resampled at run time).
    ignore: key prefixes to leave out, e.g. ``("head.",)`` for a model without classifier.

  Returns:
    ``{"params": ...}`` for ``model.apply``.

  Raises:
    ValueError: listing every missing, unexpected or mis-shaped key with both shapes; also
      for ``model`` that is not a :class:`VisionTransformer`.
  """
  if not isinstance(model, VisionTransformer):
    raise ValueError(f"`model` must be a VisionTransformer; got {type(model).__name__}.")
  side = model.image_size
  images = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
  template = jax.eval_shape(model.init, jax.random.key(0), images)
  params = dict(template["params"])
  problems = []
  tokens = {}
  for name in _TOKENS:
    expected = params.pop(name).shape
    if name not in state_dict:
      problems.append(f"missing {name}: the model expects shape {expected}")
    elif np.shape(state_dict[name]) != expected:
      hint = (" (position embeddings for another image size: build the model with that"
              " `image_size`)" if name == "pos_embed" else "")
      problems.append(f"{name}: the file has shape {np.shape(state_dict[name])}, the model"
                      f" expects {expected}{hint}")
    else:
      tokens[name] = np.asarray(state_dict[name], np.float32)
  rest = {k: v for k, v in state_dict.items() if k not in _TOKENS}
  try:
    converted = convert_state_dict(rest, {"params": params}, ignore=ignore)
  except ValueError as error:
    if not problems:
      raise
    raise ValueError(f"{error}\nand the token parameters:\n  " + "\n  ".join(problems)
                     ) from None
  if problems:
    raise ValueError(f"the state dict does not match the model ({len(problems)} problems):"
                     "\n  " + "\n  ".join(problems))
  converted["params"].update(tokens)
  return converted
