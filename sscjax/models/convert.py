"""Read PyTorch (.pth zip or legacy) and .safetensors weights without torch, and copy them into NNX models.

Every pickle in a file (the legacy format's header records too) is read with an unpickler that only builds
tensors and plain containers: any other global (os.system, builtins.eval, ...) is refused before it can run.
Every size a file declares (zip entries, tensor shapes, storage lengths, safetensors headers and offsets) is
checked against the file itself before memory is allocated for it.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from sscjax.errors import ModelError
from sscjax.models.layers import at_path

STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# A zip entry may inflate to at most this many times its compressed size (plus ZIP_SLACK bytes): torch stores
# tensors uncompressed (ratio 1) and weights compress poorly, so more than this is a zip bomb, not weights.
MAX_INFLATION = 16
ZIP_SLACK = 1 << 16


@dataclass(frozen=True)
class StorageRef:
    """A pickled reference to raw storage `key` (its bytes are read after unpickling)."""

    key: str
    dtype: np.dtype
    offset: int = 0  # in elements, for the legacy format's storage views
    numel: int | None = None  # elements of the whole storage, as the zip format's pickle declares it


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
        if not all(isinstance(v, int) and v >= 0 for v in (*self.shape, *self.stride)) or len(self.shape) != len(
            self.stride
        ):
            raise ValueError(f"tensor of shape {self.shape!r:.80} and stride {self.stride!r:.80} is malformed")
        if math.prod(self.shape) > flat.size:  # a stride-0 view may not make more elements than its storage has
            raise ValueError(f"tensor {self.shape} has more elements than its storage {self.storage.key} ({flat.size})")
        if 0 in self.shape:
            return np.zeros(self.shape, flat.dtype)
        last = start + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        if start < 0 or last >= flat.size:
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


class RefusedGlobalError(ModelError):
    """A pickle that names a global other than a tensor or a plain container (a pickled model, or worse)."""

    def __init__(self, path: Path, global_name: str):
        self.global_name = global_name
        super().__init__(
            f"{path}: refused to unpickle the global '{global_name}' (only tensors and plain containers are loaded)"
        )


class BoundedReader:
    """A view of a binary file whose reads may not ask for more bytes than the file has left, so that a length
    field in a pickle is checked before anything is allocated for it."""

    def __init__(self, file: BinaryIO, path: Path):
        self.file, self.path = file, path
        here = file.tell()
        self.end = file.seek(0, io.SEEK_END)
        file.seek(here)

    def read(self, n: int = -1) -> bytes:
        left = self.end - self.file.tell()
        if n > left:
            raise ModelError(
                f"{self.path}: unreadable weights file (a pickled field claims {n:,} bytes, the file has {left:,} left)"
            )
        return self.file.read(n)

    def readline(self) -> bytes:
        return self.file.readline()

    def tell(self) -> int:
        return self.file.tell()


class TensorUnpickler(pickle.Unpickler):
    """Unpickles torch state dicts into TensorRefs; refuses every global not in SAFE_GLOBALS. Each pickle is
    first walked opcode by opcode through a BoundedReader: the C unpickler allocates a declared length before
    reading it, so a length beyond the file is refused here first."""

    def __init__(self, file: BinaryIO, path: Path):
        super().__init__(file)
        self.file = file
        self.path = path
        self.storage_dtypes: dict[str, np.dtype] = {}
        self.storage_numel: dict[str, int] = {}

    def load(self) -> Any:
        start = self.file.tell()
        with warnings.catch_warnings():  # a STRING opcode's bad escapes (read, never used) warn in pickletools
            warnings.simplefilter("ignore", DeprecationWarning)
            for _ in pickletools.genops(cast(BinaryIO, BoundedReader(self.file, self.path))):
                pass
        self.file.seek(start)
        return super().load()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in SAFE_GLOBALS:
            raise RefusedGlobalError(self.path, f"{module}.{name}")
        return SAFE_GLOBALS[module, name]

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], np.dtype)):
            raise ModelError(f"{self.path}: unknown persistent id {pid!r:.80}")
        key, view = str(pid[2]), (pid[5] if len(pid) > 5 else None)
        self.storage_dtypes[key] = pid[1]
        numel = pid[4] if isinstance(pid[4], int) and pid[4] >= 0 else None
        if numel is not None:
            self.storage_numel[key] = numel
        return StorageRef(key, pid[1], int(view[1]) if view else 0, numel)


def _materialise(obj: Any, storages: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, TensorRef):
        return obj.to_numpy(storages)
    if isinstance(obj, dict):
        return {k: _materialise(v, storages) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, storages) for v in obj)
    return obj


def _check_inflation(info: zipfile.ZipInfo, source: Path) -> None:
    if info.file_size > MAX_INFLATION * info.compress_size + ZIP_SLACK:
        raise ModelError(
            f"{source}: the entry {info.filename} would inflate from {info.compress_size:,} to "
            f"{info.file_size:,} bytes; refused (not a weights file)"
        )


def check_npz(path: Path) -> None:
    """Refuse an .npz whose entries would inflate like a zip bomb or whose arrays declare more bytes than their
    entry holds, before numpy allocates them (np.load sizes its arrays from their headers)."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            _check_inflation(info, path)
            with archive.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(f)
            if math.prod(shape) * dtype.itemsize > info.file_size:
                raise ModelError(
                    f"{path}: the array {info.filename} declares shape {shape}, more than its "
                    f"{info.file_size:,} bytes hold"
                )


def zip_entry(archive: zipfile.ZipFile, name: str, source: Path, size: int | None = None) -> bytes:
    """The bytes of one zip entry, refused before reading if it would inflate far beyond its compressed size
    (a zip bomb) or if it is not the `size` its tensor needs."""
    info = archive.getinfo(name)
    _check_inflation(info, source)
    if size is not None and info.file_size != size:
        raise ModelError(
            f"{source}: the entry {name} holds {info.file_size:,} bytes, its tensor storage needs {size:,}"
        )
    with archive.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise ModelError(f"{source}: the entry {name} is truncated")
    return data


def _read_zip_pth(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl")), None)
        if pkl is None:
            raise ModelError(f"{path}: a zip file without data.pkl is not a PyTorch checkpoint")
        prefix = pkl[: -len("data.pkl")]
        unpickler = TensorUnpickler(io.BytesIO(zip_entry(archive, pkl, path)), path)
        obj = unpickler.load()
        big_endian = prefix + "byteorder" in names and zip_entry(archive, prefix + "byteorder", path).strip() == b"big"
        storages = {}
        for key, dtype in unpickler.storage_dtypes.items():
            numel = unpickler.storage_numel.get(key)
            raw = zip_entry(archive, f"{prefix}data/{key}", path, None if numel is None else numel * dtype.itemsize)
            storages[key] = np.frombuffer(raw, dtype.newbyteorder(">" if big_endian else "<")).astype(dtype)
    return _materialise(obj, storages)


def _read_legacy_pth(path: Path) -> Any:
    size = path.stat().st_size
    with open(path, "rb") as f:
        if TensorUnpickler(f, path).load() != LEGACY_MAGIC:
            raise ModelError(f"{path}: not a PyTorch checkpoint (no zip archive, no legacy magic number)")
        TensorUnpickler(f, path).load(), TensorUnpickler(f, path).load()  # protocol version, sys_info
        unpickler = TensorUnpickler(f, path)
        obj = unpickler.load()
        storages = {}
        for key in TensorUnpickler(f, path).load():  # then each storage: int64 numel, raw data
            dtype = unpickler.storage_dtypes[key]
            (numel,) = struct.unpack("<q", f.read(8))
            if not 0 <= numel * dtype.itemsize <= size - f.tell():
                raise ModelError(f"{path}: storage {key} declares {numel:,} elements, more than the file holds")
            storages[key] = np.frombuffer(f.read(numel * dtype.itemsize), dtype, count=numel)
    return _materialise(obj, storages)


def _safetensors_entry(info: Any, name: str, data_size: int, path: Path) -> tuple[np.dtype, list[int], int, int]:
    """(dtype, shape, begin, end) of one header entry, every field checked against the file."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise ModelError(f"{path}: header entry {name!r:.80} lacks dtype, shape or data_offsets")
    if info["dtype"] not in SAFETENSORS_DTYPES:
        raise ModelError(f"{path}: tensor {name} has unsupported dtype {info['dtype']!r:.40}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not (
        isinstance(shape, list)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (*shape, *offsets))
    ):
        raise ModelError(f"{path}: tensor {name} has a malformed shape or data_offsets")
    dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
    begin, end = offsets
    if not begin <= end <= data_size or end - begin != math.prod(shape) * dtype.itemsize:
        raise ModelError(
            f"{path}: tensor {name} of shape {shape} does not fit its offsets {offsets} in the "
            f"file's {data_size:,} data bytes"
        )
    return dtype, shape, begin, end


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    if len(data) < 8:
        raise ModelError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ModelError(f"{path}: the header claims {n:,} bytes, the file has {len(data) - 8:,} after its length")
    header = json.loads(data[8 : 8 + n])
    if not isinstance(header, dict):
        raise ModelError(f"{path}: the safetensors header is not a mapping of tensor names")
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + n :]
    out = {}
    for name, info in header.items():
        dtype, shape, begin, end = _safetensors_entry(info, name, len(body), path)
        out[name] = np.frombuffer(body[begin:end], dtype).reshape(shape).copy()
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
        obj = {k[len("module.") :]: v for k, v in obj.items()}
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
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        RecursionError,
        struct.error,
        zipfile.BadZipFile,
        json.JSONDecodeError,
        OSError,
    ) as e:
        raise ModelError(f"{path}: unreadable weights file ({type(e).__name__}: {e})") from e
    return _unwrap(obj, path)


# timm and the original ConvNeXt release -> torchvision key names (torchvision keys match no rule)
CONVNEXT_RENAMES = (
    (r"^stem\.([01])\.", lambda m: f"features.0.{m[1]}."),
    (
        r"^(?:downsample_layers\.(\d+)|stages\.(\d+)\.downsample)\.([01])\.",
        lambda m: f"features.{2 * int(m[1] or m[2])}.{m[3]}.",
    ),
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
            raise ModelError(f"{source}: two tensors are both {key} in torchvision's naming (one is {original})")
        renamed[key] = value
    return renamed


def _to_nnx(a: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """Array -> NNX layout (conv OIHW -> HWIO and OIDHW -> DHWIO, linear (out, in) -> (in, out), "same": as is);
    None if it does not fit."""
    if layout == "conv" and a.ndim in (4, 5):
        a = a.transpose(*range(2, a.ndim), 1, 0)
    elif layout == "linear" and a.ndim == 2:
        a = a.T
    elif layout == "vector" and a.ndim > 1 and all(d == 1 for d in a.shape[1:]):
        a = a.reshape(a.shape[0])
    return a if a.shape == tuple(shape) else None


def _torch_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if layout == "conv":
        return (shape[-1], shape[-2], *shape[:-2])
    return tuple(shape[::-1]) if layout == "linear" else tuple(shape)


def _listing(label: str, items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"{label} {len(items)}: {', '.join(items[:MAX_LISTED])}{more}"


def assign_state(
    model: nnx.Module, state: dict[str, np.ndarray], names: dict[str, tuple[tuple, str]], source: str
) -> None:
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
            wrong.append(f"{key} is {tuple(state[key].shape)}, the model needs {_torch_shape(layout, var.shape)}")
        else:
            values.append((var, value))
    problems = [
        _listing(label, items)
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if items
    ]
    if problems:
        raise ModelError(f"{source}: the weights do not fit the model; " + "; ".join(problems))
    for var, value in values:
        var.set_value(jnp.asarray(value, dtype=var.dtype))
