"""Read PyTorch (.pth zip or legacy) and .safetensors weights without torch, and copy them into NNX models.

Pickled files are read with an unpickler that only builds tensors and plain containers: any other
global (os.system, builtins.eval, ...) is refused before it can run.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from sscjax.errors import ModelError
from sscjax.models.layers import at_path

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True)
class StorageRef:
    """A pickled reference to raw storage `key` (its bytes are read after unpickling)."""

    key: str
    dtype: np.dtype
    offset: int = 0  # in elements, for the legacy format's storage views


@dataclass(frozen=True)
class TensorRef:
    """A tensor as pickled by torch: a strided view of a storage."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self, storages: dict[str, np.ndarray]) -> np.ndarray:
        """A copy of the tensor's elements; ValueError if they do not all lie inside the storage."""
        flat = storages[self.storage.key]
        start = self.storage.offset + self.offset
        if 0 in self.shape:
            return np.zeros(self.shape, flat.dtype)
        last = start + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        if start < 0 or min(self.stride, default=0) < 0 or last >= flat.size:
            raise ValueError(f"tensor {self.shape} lies outside its storage {self.storage.key}")
        strides = tuple(s * flat.dtype.itemsize for s in self.stride)
        return np.lib.stride_tricks.as_strided(flat[start:], self.shape, strides, writeable=False).copy()


def _rebuild_tensor(storage: StorageRef, offset: int, shape: tuple, stride: tuple, *_: Any) -> TensorRef:
    return TensorRef(storage, offset, tuple(shape), tuple(stride))


def _rebuild_parameter(data: TensorRef, *_: Any) -> TensorRef:
    return data


SAFE_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): np.dtype(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class TensorUnpickler(pickle.Unpickler):
    """Unpickles torch state dicts into TensorRefs; refuses every global not in SAFE_GLOBALS."""

    def __init__(self, file: BinaryIO, path: Path):
        super().__init__(file)
        self.path = path
        self.storage_dtypes: dict[str, np.dtype] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in SAFE_GLOBALS:
            raise ModelError(f"{self.path}: refused to unpickle the global '{module}.{name}' "
                             "(only tensors and plain containers are loaded)")
        return SAFE_GLOBALS[module, name]

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], np.dtype)):
            raise ModelError(f"{self.path}: unknown persistent id {pid!r:.80}")
        key, view = str(pid[2]), (pid[5] if len(pid) > 5 else None)
        self.storage_dtypes[key] = pid[1]
        return StorageRef(key, pid[1], int(view[1]) if view else 0)


def _materialise(obj: Any, storages: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, TensorRef):
        return obj.to_numpy(storages)
    if isinstance(obj, dict):
        return {k: _materialise(v, storages) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, storages) for v in obj)
    return obj


def _read_zip_pth(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        pkl = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
        if pkl is None:
            raise ModelError(f"{path}: a zip file without data.pkl is not a PyTorch checkpoint")
        prefix = pkl[: -len("data.pkl")]
        with archive.open(pkl) as f:
            unpickler = TensorUnpickler(f, path)
            obj = unpickler.load()
        byteorder = ">" if (prefix + "byteorder" in archive.namelist()
                            and archive.read(prefix + "byteorder").strip() == b"big") else "<"
        storages = {key: np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype.newbyteorder(byteorder))
                    .astype(dtype) for key, dtype in unpickler.storage_dtypes.items()}
    return _materialise(obj, storages)


def _read_legacy_pth(path: Path) -> Any:
    with open(path, "rb") as f:
        if pickle.load(f) != LEGACY_MAGIC:
            raise ModelError(f"{path}: not a PyTorch checkpoint (no zip archive, no legacy magic number)")
        pickle.load(f), pickle.load(f)  # protocol version, sys_info
        unpickler = TensorUnpickler(f, path)
        obj = unpickler.load()
        storages = {}
        for key in TensorUnpickler(f, path).load():  # then each storage: int64 numel, raw data
            dtype = unpickler.storage_dtypes[key]
            (numel,) = struct.unpack("<q", f.read(8))
            storages[key] = np.frombuffer(f.read(numel * dtype.itemsize), dtype, count=numel)
    return _materialise(obj, storages)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8: 8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ModelError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        flat = np.frombuffer(data[8 + n + begin: 8 + n + end], SAFETENSORS_DTYPES[info["dtype"]])
        out[name] = flat.reshape(info["shape"]).copy()
    return out


def _unwrap(obj: Any, path: Path) -> dict[str, np.ndarray]:
    """The state dict inside a checkpoint: itself, or under "state_dict" / "model"; DataParallel's
    "module." prefix removed."""
    while isinstance(obj, dict) and not all(isinstance(v, np.ndarray) for v in obj.values()):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise ModelError(f"{path}: no state dict found (top-level keys: {sorted(map(str, obj))[:10]})")
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise ModelError(f"{path}: holds no tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a .pth/.pt/.bin (torch zip or legacy pickle) or .safetensors file, by name."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            return _read_safetensors(path)
        obj = _read_zip_pth(path) if zipfile.is_zipfile(path) else _read_legacy_pth(path)
    except ModelError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, struct.error, zipfile.BadZipFile, json.JSONDecodeError, OSError) as e:
        raise ModelError(f"{path}: unreadable weights file ({type(e).__name__}: {e})") from e
    return _unwrap(obj, path)


# timm and the original ConvNeXt release -> torchvision key names (torchvision keys match no rule)
CONVNEXT_RENAMES = (
    (r"^stem\.([01])\.", lambda m: f"features.0.{m[1]}."),
    (r"^(?:downsample_layers\.(\d+)|stages\.(\d+)\.downsample)\.([01])\.",
     lambda m: f"features.{2 * int(m[1] or m[2])}.{m[3]}."),
    (r"^stages\.(\d+)\.(?:blocks\.)?(\d+)\.", lambda m: f"features.{2 * int(m[1]) + 1}.{m[2]}."),
    (r"^(features\.\d+\.\d+)\.(?:conv_dw|dwconv)\.", r"\1.block.0."),
    (r"^(features\.\d+\.\d+)\.norm\.", r"\1.block.2."),
    (r"^(features\.\d+\.\d+)\.(?:mlp\.fc1|pwconv1)\.", r"\1.block.3."),
    (r"^(features\.\d+\.\d+)\.(?:mlp\.fc2|pwconv2)\.", r"\1.block.5."),
    (r"^(features\.\d+\.\d+)\.gamma$", r"\1.layer_scale"),
    (r"^(?:head\.norm|norm)\.", "classifier.0."),
    (r"^(?:head\.fc|head)\.", "classifier.2."),
)
IGNORED_SUFFIXES = (".num_batches_tracked",)  # torch's BatchNorm step counter: nothing to load
MAX_LISTED = 8


def torchvision_convnext_keys(state: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """The same tensors under torchvision's names, whether they came from torchvision, timm or the
    original ConvNeXt release."""
    renamed = {}
    for original, value in state.items():
        key = original
        for pattern, replacement in CONVNEXT_RENAMES:
            key = re.sub(pattern, replacement, key)
        if key in renamed:
            raise ModelError(f"{source}: two tensors are both {key} in torchvision's naming "
                             f"(one is {original})")
        renamed[key] = value
    return renamed


def _to_nnx(a: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """Array -> NNX layout (conv OIHW -> HWIO, linear (out, in) -> (in, out), "same": as is);
    None if it does not fit."""
    if layout == "conv" and a.ndim == 4:
        a = a.transpose(2, 3, 1, 0)
    elif layout == "linear" and a.ndim == 2:
        a = a.T
    elif layout == "vector" and a.ndim > 1 and all(d == 1 for d in a.shape[1:]):
        a = a.reshape(a.shape[0])
    return a if a.shape == tuple(shape) else None


def _torch_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if layout == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(shape[::-1]) if layout == "linear" else tuple(shape)


def _listing(label: str, items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"{label} {len(items)}: {', '.join(items[:MAX_LISTED])}{more}"


def assign_state(model: nnx.Module, state: dict[str, np.ndarray],
                 names: dict[str, tuple[tuple, str]], source: str) -> None:
    """Copy named arrays into `model` (`names`: key -> (NNX path, layout of the array)).

    Every missing or unexpected key and every shape mismatch is reported by name in one ModelError;
    nothing is loaded unless everything fits.
    """
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    missing = sorted(names.keys() - state.keys())
    unexpected = sorted(state.keys() - names.keys())
    wrong, values = [], []
    for key in sorted(names.keys() & state.keys()):
        path, layout = names[key]
        var = at_path(model, path)
        value = _to_nnx(state[key], layout, var.shape)
        if value is None:
            wrong.append(f"{key} is {tuple(state[key].shape)}, the model needs "
                         f"{_torch_shape(layout, var.shape)}")
        else:
            values.append((var, value))
    problems = [_listing(label, items) for label, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
    if problems:
        raise ModelError(f"{source}: the weights do not fit the model; " + "; ".join(problems))
    for var, value in values:
        var.set_value(jnp.asarray(value, dtype=var.dtype))
