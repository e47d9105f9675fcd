"""The README's flow figure: DIML's matching between two views of one photo.

The two images are crops of scikit-image's astronaut photo: the second is zoomed in,
shifted and mirrored, so its parts sit elsewhere. The part features are real ImageNet
features, not a metric-learning model: EfficientNet-Lite0's last-stage map (ImageNet
weights) pooled to a ``g x g`` grid as DIML's head pools it
(:func:`diml_jax.models.grid_pool`); the global vectors are the average-pooled maps.
(``EmbeddingModel``'s embedding layer would be random without training, so it is left
out.) DIML's matching then says which part went where and what each contributed.

  python examples/explain_pair.py                        # writes docs/flow_figure.png
  python examples/explain_pair.py --grid 3 --out /tmp/pair.svg
"""
import argparse
import io
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from skimage import data

from diml_jax import matching
from diml_jax.explain import figure_bytes, flow_figure
from diml_jax.models import EfficientNetLite0, grid_pool, imagenet_variables

SIZE = 224


def views() -> tuple[np.ndarray, np.ndarray]:
  """Two uint8 ``[224, 224, 3]`` views of the astronaut: wide, and zoomed + mirrored."""
  photo = data.astronaut()  # [512, 512, 3]
  wide = photo[0:400, 56:456]
  close = photo[40:340, 130:430][:, ::-1]
  resize = lambda a: np.asarray(Image.fromarray(a).resize((SIZE, SIZE), Image.LANCZOS))
  return resize(wide), resize(np.ascontiguousarray(close))


def features(images: np.ndarray, grid: int) -> tuple[jax.Array, jax.Array]:
  """ImageNet features of uint8 ``[b, h, w, 3]``: parts ``[b, g*g, c]``, globals ``[b, c]``."""
  backbone = EfficientNetLite0()
  variables = imagenet_variables(backbone)
  x = (images.astype(np.float32) - np.array(backbone.pixel_mean)) / np.array(backbone.pixel_std)
  pooled, aux = jax.jit(backbone.apply)(variables, jnp.asarray(x))
  parts = grid_pool(aux["feature_map"], grid)
  return parts.reshape(len(images), grid * grid, -1), pooled


def small_png(png: bytes) -> bytes:
  """The PNG with a 256-colour palette (dithered): a third of the size, for the README."""
  image = Image.open(io.BytesIO(png)).convert("RGB")
  palette = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                           dither=Image.Dither.FLOYDSTEINBERG)
  out = io.BytesIO()
  palette.save(out, "PNG", optimize=True)
  return out.getvalue()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--grid", type=int, default=4, help="cells per side (1..7)")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/flow_figure.png"),
                      help="output file; .png or .svg")
  parser.add_argument("--dpi", type=float, default=80)
  args = parser.parse_args()

  a, b = views()
  parts, globals_ = features(np.stack([a, b]), args.grid)
  m = matching.match(parts[0], parts[1], globals_[0], globals_[1])
  global_cos = float(matching.normalize(globals_[0]) @ matching.normalize(globals_[1]))
  figure = flow_figure(a, b, m, global_similarity=global_cos, names=("wide view", "close-up"))
  encoded = figure_bytes(figure.figure, args.out.suffix[1:], dpi=args.dpi)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_bytes(small_png(encoded) if args.out.suffix == ".png" else encoded)
  print(f"structural {float(m.similarity):.3f}, global cosine {global_cos:.3f}, "
        f"{len(figure.lines)} flow lines -> {args.out}")


if __name__ == "__main__":
  main()
