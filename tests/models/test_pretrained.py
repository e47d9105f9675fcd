"""Converting state dicts key by key: every mismatch reported, deliberate drops, grafting into
the embedding model, and the checksummed download cache (through file:// URLs, no network)."""
import hashlib

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch

from diml_jax.models import (RESNET50_IMAGENET, BottleneckBlock, EmbeddingModel, ResNet,
                             ResNet50, ResNetTiny, WeightFile, backbone_variables, fetch,
                             imagenet_variables, load_state_dict, replace_backbone)
from diml_jax.models.pretrained import torch_key
from tests.models.helpers import assert_rel_close, random_variables
from tests.models.torch_reference import TorchBottleneck, TorchResNet, randomize_batch_norm

LAYERS = (1, 1, 1, 1)


@pytest.fixture(scope="module")
def reference() -> TorchResNet:
  torch.manual_seed(0)
  return randomize_batch_norm(TorchResNet(TorchBottleneck, LAYERS, width=8)).eval()


@pytest.fixture
def state_dict(reference) -> dict[str, np.ndarray]:
  return {k: v.numpy().copy() for k, v in reference.state_dict().items()}


def test_torch_key_names():
  assert torch_key(("params", "layer1_0", "downsample_0", "kernel")) == \
      "layer1.0.downsample.0.weight"
  assert torch_key(("batch_stats", "bn1", "var")) == "bn1.running_var"
  assert torch_key(("params", "blocks_12", "bn0", "scale"), module_prefix="_") == \
      "_blocks.12._bn0.weight"
  with pytest.raises(ValueError, match="no PyTorch name"):
    torch_key(("params", "attention", "query"))


def test_every_mismatch_is_reported_with_key_and_shapes(state_dict):
  model = ResNetTiny(num_classes=1000)
  del state_dict["layer1.0.bn1.running_var"]
  state_dict["layer2.0.conv2.weight"] = np.zeros((16, 16, 5, 5), np.float32)
  state_dict["layer5.0.conv1.weight"] = np.zeros((3, 3), np.float32)
  with pytest.raises(ValueError) as error:
    backbone_variables(state_dict, model)
  message = str(error.value)
  assert "3 problems" in message
  assert "missing layer1.0.bn1.running_var: the model expects shape (8,)" in message
  assert ("layer2.0.conv2.weight: the file has shape (16, 16, 5, 5), the model expects"
          " (16, 16, 3, 3)") in message
  assert "unexpected layer5.0.conv1.weight with shape (3, 3)" in message


def test_classifier_must_be_dropped_explicitly(state_dict, reference):
  model = ResNetTiny()  # no classifier
  with pytest.raises(ValueError, match=r"(?s)unexpected fc.weight .*ignore=\('fc.',\)"):
    backbone_variables(state_dict, model)
  variables = backbone_variables(state_dict, model, ignore=("fc.",))
  images = np.random.default_rng(0).normal(size=(1, 40, 40, 3)).astype(np.float32)
  _, aux = model.apply(variables, images)
  with torch.no_grad():
    ref_map, _ = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
  assert_rel_close(aux["feature_map"], ref_map.permute(0, 2, 3, 1).numpy())


def test_timm_style_safetensors_without_step_counters(tmp_path, state_dict):
  arrays = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  safetensors.numpy.save_file(arrays, tmp_path / "model.safetensors")
  model = ResNetTiny(num_classes=1000)
  from_safetensors = backbone_variables(load_state_dict(tmp_path / "model.safetensors"), model)
  from_torch = backbone_variables(state_dict, model)
  jax.tree.map(np.testing.assert_array_equal, from_safetensors, from_torch)
  kernel = from_torch["params"]["layer2_0"]["conv2"]["kernel"]
  np.testing.assert_array_equal(kernel, state_dict["layer2.0.conv2.weight"].transpose(2, 3, 1, 0))


def test_replace_backbone(state_dict):
  model = EmbeddingModel(backbone=ResNetTiny(), embed_dim=8)
  variables = random_variables(model, (1, 32, 32, 3))
  backbone = backbone_variables(state_dict, model.backbone, ignore=("fc.",))
  replaced = replace_backbone(variables, backbone)
  np.testing.assert_array_equal(replaced["params"]["backbone"]["conv1"]["kernel"],
                                backbone["params"]["conv1"]["kernel"])
  assert replaced["params"]["embedding"] is variables["params"]["embedding"]
  wider = backbone_variables(
      {k: v.numpy() for k, v in TorchResNet(TorchBottleneck, LAYERS, width=16).state_dict()
       .items()}, ResNet(stage_sizes=LAYERS, block_cls=BottleneckBlock, width=16),
      ignore=("fc.",))
  with pytest.raises(ValueError, match=r"conv1/kernel: \(7, 7, 3, 8\) in the model, "
                     r"\(7, 7, 3, 16\) given"):
    replace_backbone(variables, wider)


def test_backbone_without_torch_layout_is_rejected(state_dict):
  with pytest.raises(ValueError, match="ResNet, EfficientNetLite or BNInception"):
    backbone_variables(state_dict, EmbeddingModel(backbone=ResNetTiny()))


def _weight_file(tmp_path, content: bytes, sha256: str | None = None) -> WeightFile:
  source = tmp_path / "source" / "weights-1234.pth"
  source.parent.mkdir(exist_ok=True)
  source.write_bytes(content)
  return WeightFile(url=source.as_uri(), sha256=sha256 or hashlib.sha256(content).hexdigest())


def test_fetch_downloads_once_into_the_cache(tmp_path):
  weights = _weight_file(tmp_path, b"weights")
  cache = tmp_path / "cache"
  path = fetch(weights, cache_dir=cache)
  assert path == cache / "weights-1234.pth" and path.read_bytes() == b"weights"
  (tmp_path / "source" / "weights-1234.pth").unlink()  # a second download would fail now
  assert fetch(weights, cache_dir=cache) == path
  assert [p.name for p in cache.iterdir()] == ["weights-1234.pth"]


def test_fetch_rejects_a_wrong_checksum_and_caches_nothing(tmp_path):
  weights = _weight_file(tmp_path, b"tampered", sha256="0" * 64)
  cache = tmp_path / "cache"
  with pytest.raises(ValueError, match="expected 0000"):
    fetch(weights, cache_dir=cache)
  assert list(cache.iterdir()) == []


def test_fetch_rejects_a_corrupted_cache(tmp_path):
  (tmp_path / RESNET50_IMAGENET.filename).write_bytes(b"truncated download")
  with pytest.raises(ValueError, match="delete it to download it again"):
    imagenet_variables(ResNet50(), cache_dir=tmp_path)


def test_fetch_without_a_published_digest_caches_the_download(tmp_path):
  weights = _weight_file(tmp_path, b"weights")._replace(sha256=None)
  path = fetch(weights, cache_dir=tmp_path / "cache")
  assert path.read_bytes() == b"weights"
  assert [p.name for p in (tmp_path / "cache").iterdir()] == ["weights-1234.pth"]


def test_fetch_failure_says_where_to_put_the_file(tmp_path):
  weights = WeightFile(url=(tmp_path / "missing.pth").as_uri(), sha256="0" * 64)
  with pytest.raises(OSError, match="place the file at"):
    fetch(weights, cache_dir=tmp_path / "cache")
  assert list((tmp_path / "cache").iterdir()) == []


def test_imagenet_weights_only_for_known_architectures():
  with pytest.raises(ValueError, match="ResNet50\\(\\), EfficientNetLite0\\(\\) and"
                     " BNInception\\(\\)"):
    imagenet_variables(ResNetTiny())
  assert RESNET50_IMAGENET.sha256.startswith(RESNET50_IMAGENET.filename[9:17])
