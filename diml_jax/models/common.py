"""Checks and small functions shared by the backbones and the embedding head."""
from typing import Any

import jax.numpy as jnp


def check_images(images: Any, *, name: str = "images") -> None:
  """Raises ``ValueError`` unless ``images`` is an NHWC batch of RGB images.

  Args:
    images: the array to check, expected ``[b, h, w, 3]``.
    name: the argument name used in the error message.
  """
  shape = tuple(getattr(images, "shape", ()))
  if len(shape) == 4 and shape[-1] == 3 and min(shape) > 0:
    return
  hint = ""
  if len(shape) == 4 and shape[1] == 3:
    hint = (" It looks like NCHW (PyTorch layout): transpose it with"
            " `x.transpose(0, 2, 3, 1)`.")
  elif len(shape) == 3:
    hint = " For a single image add a batch axis: `x[None]`."
  raise ValueError(
      f"`{name}` must be a non-empty batch of RGB images [b, h, w, 3] (NHWC);"
      f" got shape {shape}.{hint}")


def l2_normalize(x: jnp.ndarray, *, axis: int = -1,
                 eps: float = 1e-12) -> jnp.ndarray:
  """``x / max(||x||, eps)`` along ``axis``, as ``torch.nn.functional.normalize``."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)
