"""Reading weight files into NumPy without executing code from them, and without PyTorch.

Supported: PyTorch checkpoints in both of ``torch.save``'s formats (the zip archive of
PyTorch >= 1.6 and the older "legacy" stream of pickles followed by raw storages),
``.safetensors`` and ``.npz``.

A PyTorch checkpoint is a pickle, and unpickling may call any importable function. Here
the pickle is read by an unpickler that resolves only the handful of names a state dict
needs -- ``collections.OrderedDict``, the ``torch.*Storage`` dtype markers and the tensor
rebuild functions -- each to a local stand-in; any other global (``os.system``,
``builtins.eval``, ...) is refused with :class:`pickle.UnpicklingError` before anything
runs. Tensors are copied out of their storages after checking that every view stays inside
its storage, so a crafted shape or stride cannot read other memory.
"""
import collections
import dataclasses
import operator
import pathlib
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Mapping

import jax.numpy as jnp
import numpy as np
from safetensors import numpy as safetensors_numpy

__all__ = ["load_state_dict", "load_torch"]

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": jnp.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stand-in for a ``torch.*Storage`` class: only its dtype is used."""
  name: str
  dtype: np.dtype


@dataclasses.dataclass
class _Storage:
  """A flat typed buffer; ``data`` is filled once the file's raw bytes are read."""
  key: str
  dtype: np.dtype
  numel: int
  data: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class _TensorRef:
  """A strided view into a storage, materialised after all storages are read."""
  storage: _Storage
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> _TensorRef:
  """Stand-in for ``torch._utils._rebuild_tensor`` and ``_rebuild_tensor_v2``.

  ``unused`` are ``requires_grad``, ``backward_hooks`` and metadata, meaningless here.
  """
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError(f"tensor built from {type(storage).__name__}, not a storage")
  try:
    return _TensorRef(storage, operator.index(storage_offset),
                      tuple(map(operator.index, size)), tuple(map(operator.index, stride)))
  except TypeError as e:
    raise pickle.UnpicklingError(f"malformed tensor metadata: {e}") from None


def _rebuild_parameter(data, *unused) -> _TensorRef:
  """Stand-in for ``torch._utils._rebuild_parameter``: a parameter is its tensor."""
  if not isinstance(data, _TensorRef):
    raise pickle.UnpicklingError(f"parameter built from {type(data).__name__}, not a tensor")
  return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, np.dtype(dtype))
       for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """An unpickler that builds only state-dict objects and records the storages it meets."""

  def __init__(self, file: BinaryIO):
    super().__init__(file)
    self.storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f"refusing to load the global {module}.{name}: a weight file may only hold"
          " tensors in (ordered) dicts, lists and tuples, so this file is malformed or"
          " crafted to run code") from None

  def persistent_load(self, pid: Any) -> _Storage:
    # torch.save writes ('storage', type, key, location, numel), plus a view field in the
    # legacy format; other kinds (e.g. 'module', with source code) are refused.
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")):
      raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]!r}")
    storage_type, key, _, numel = pid[1:5]
    if len(pid) == 6 and pid[5] is not None:
      raise pickle.UnpicklingError("storage views (PyTorch < 0.4 checkpoints) are not"
                                   " supported; re-save the file with a recent torch.save")
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"storage of unknown type {storage_type!r}")
    if not isinstance(numel, int) or numel < 0:
      raise pickle.UnpicklingError(f"storage with invalid size {numel!r}")
    key = key.decode("ascii") if isinstance(key, bytes) else str(key)
    storage = self.storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
    if storage.dtype != storage_type.dtype or storage.numel != numel:
      raise pickle.UnpicklingError(f"storage {key!r} is declared with two types or sizes")
    return storage


def _restricted_load(file: BinaryIO) -> tuple[Any, dict[str, _Storage]]:
  unpickler = _RestrictedUnpickler(file)
  return unpickler.load(), unpickler.storages


def _set_storage(storage: _Storage, raw: bytes, byteorder: str) -> None:
  nbytes = storage.numel * storage.dtype.itemsize
  if len(raw) < nbytes:
    raise ValueError(f"storage {storage.key!r} is truncated: {len(raw)} of {nbytes} bytes")
  dtype = storage.dtype.newbyteorder("<" if byteorder == "little" else ">")
  storage.data = np.frombuffer(raw, dtype, count=storage.numel).astype(storage.dtype)


def _materialize(ref: _TensorRef) -> np.ndarray:
  """Copies a strided view out of its storage after checking it stays inside."""
  storage, shape, stride = ref.storage, ref.shape, ref.stride
  if len(shape) != len(stride) or min((ref.offset, *shape, *stride)) < 0:
    raise ValueError(f"tensor in storage {storage.key!r} has an invalid layout:"
                     f" offset {ref.offset}, shape {shape}, stride {stride}")
  if 0 in shape:
    return np.zeros(shape, storage.dtype)
  last = ref.offset + sum((n - 1) * s for n, s in zip(shape, stride))
  if last >= storage.numel:
    raise ValueError(f"tensor of shape {shape} reads element {last} of storage"
                     f" {storage.key!r}, which has only {storage.numel}")
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage.data[ref.offset:], shape, [s * itemsize for s in stride], writeable=False)
  return np.array(view)


def _resolve(obj: Any) -> Any:
  """Replaces every tensor reference in nested dicts / lists / tuples by an array."""
  if isinstance(obj, _TensorRef):
    return _materialize(obj)
  if isinstance(obj, dict):
    return type(obj)((k, _resolve(v)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v) for v in obj)
  return obj


def _load_torch_zip(path: pathlib.Path) -> Any:
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pickles) != 1:
      raise ValueError(f"{path} is a zip archive but not a PyTorch checkpoint: expected one"
                       f" 'data.pkl', found {pickles or 'none'}")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in archive.namelist():
      byteorder = archive.read(f"{prefix}byteorder").decode("ascii").strip()
    with archive.open(pickles[0]) as f:
      obj, storages = _restricted_load(f)
    names = set(archive.namelist())
    for storage in storages.values():
      member = f"{prefix}data/{storage.key}"
      if member not in names:
        raise ValueError(f"{path}: no data for storage {storage.key!r} ({member})")
      _set_storage(storage, archive.read(member), byteorder)
  return _resolve(obj)


def _load_torch_legacy(path: pathlib.Path) -> Any:
  with open(path, "rb") as f:
    header = [_restricted_load(f)[0] for _ in range(3)]
    magic, protocol, sys_info = header
    if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL or not isinstance(sys_info, dict):
      raise ValueError(f"{path} is not a PyTorch checkpoint (bad legacy header)")
    byteorder = "little" if sys_info.get("little_endian", True) else "big"
    obj, storages = _restricted_load(f)
    keys, _ = _restricted_load(f)
    if not isinstance(keys, list):
      raise ValueError(f"{path}: expected the list of storage keys after the pickle")
    for key in keys:
      if key not in storages:
        raise ValueError(f"{path}: raw data for storage {key!r}, which no tensor uses")
      (numel,) = struct.unpack("<q" if byteorder == "little" else ">q", f.read(8))
      storage = storages[key]
      if numel != storage.numel:
        raise ValueError(f"{path}: storage {key!r} holds {numel} elements, declared"
                         f" {storage.numel}")
      _set_storage(storage, f.read(numel * storage.dtype.itemsize), byteorder)
    missing = [s.key for s in storages.values() if s.data is None]
    if missing:
      raise ValueError(f"{path}: no raw data for storages {missing}")
  return _resolve(obj)


def load_torch(path: str | pathlib.Path) -> Any:
  """Reads a ``torch.save`` file (zip or legacy format) without PyTorch or running code.

  Args:
    path: the checkpoint.

  Returns:
    the saved object with every tensor as a NumPy array; only (ordered) dicts, lists,
    tuples, tensors and plain Python values can occur.

  Raises:
    pickle.UnpicklingError: the pickle names anything else (e.g. a function to call).
    ValueError: the file is not a PyTorch checkpoint or is inconsistent.
  """
  path = pathlib.Path(path)
  if zipfile.is_zipfile(path):
    return _load_torch_zip(path)
  with open(path, "rb") as f:
    first = f.read(1)
  if first != b"\x80":
    raise ValueError(f"{path} is neither a zip nor a legacy PyTorch checkpoint (PyTorch"
                     " < 0.4 tar checkpoints are not supported)")
  return _load_torch_legacy(path)


def load_state_dict(path: str | pathlib.Path, *, key: str | None = None
                    ) -> dict[str, np.ndarray]:
  """Reads a flat ``{name: array}`` state dict from a weight file, never running its code.

  Args:
    path: ``.safetensors``, ``.npz``, or anything else as a ``torch.save`` file (``.pth``,
      ``.pt``, ``.bin``, ``.ckpt``).
    key: for checkpoints that nest the state dict, e.g. ``{"state_dict": {...}}``, the
      top-level key to read.

  Returns:
    the arrays by their names in the file, in the file's order.

  Raises:
    ValueError: the file does not hold a flat mapping of names to arrays (the message lists
      the top-level keys, to choose ``key``).
    pickle.UnpicklingError: a PyTorch pickle tries to load anything but tensors.
  """
  path = pathlib.Path(path)
  if path.suffix == ".safetensors":
    obj = safetensors_numpy.load_file(str(path))
  elif path.suffix == ".npz":
    with np.load(path, allow_pickle=False) as npz:
      obj = {name: npz[name] for name in npz.files}
  else:
    obj = load_torch(path)
  if key is not None:
    if not isinstance(obj, Mapping) or key not in obj:
      top = list(obj) if isinstance(obj, Mapping) else type(obj).__name__
      raise ValueError(f"`key`={key!r} is not a top-level key of {path}; it has {top}")
    obj = obj[key]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
  not_arrays = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
  if not_arrays:
    raise ValueError(f"{path} is not a flat state dict: {not_arrays[:5]} are not tensors;"
                     " pass `key=` to pick the nested state dict")
  return dict(obj)
