"""Hostile weight files given to `ssc weights convert` and `ssc train snet --pretrained`: pickles that would run
code, zip bombs, sizes that a file declares but does not hold, malformed safetensors headers. Every file is made
here; none runs code, none allocates what it declares, and each gives one line naming the file."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hostile import Case, check_case

FIXTURE = Path(__file__).parent / "fixtures" / "torchvision_convnext"
MARKER = "pwned"  # the file a payload would create in the case's folder
GB = 1 << 30


class Payload:
    """Unpickling this runs os.system(command): what a malicious checkpoint carries."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def payload(tmp: Path, protocol: int = 2) -> bytes:
    return pickle.dumps(Payload(f"touch {tmp / MARKER}"), protocol=protocol)


def legacy_file(path: Path, records: list[bytes]) -> Path:
    """A legacy (non-zip) torch file: pickled records one after the other, then raw bytes."""
    path.write_bytes(b"".join(records))
    return path


def legacy_records(magic=0x1950A86A20F9469CFC6C, version=1001, sys_info=None) -> list[bytes]:
    sys_info = {"protocol_version": 1001, "little_endian": True} if sys_info is None else sys_info
    return [pickle.dumps(r, protocol=2) if not isinstance(r, bytes) else r for r in (magic, version, sys_info)]


def tensor_pickle(shape: tuple[int, ...], stride: tuple[int, ...], numel: int) -> bytes:
    """data.pkl of a state dict {"w": tensor}, written opcode by opcode as torch writes it (protocol 2): a
    _rebuild_tensor_v2 of a FloatStorage "0" with `numel` elements, viewed with `shape` and `stride`."""

    def ints(values):
        return b"(" + b"".join(b"\x8a" + bytes([8]) + v.to_bytes(8, "little", signed=True) for v in values) + b"t"

    storage = (
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu"
        + b"\x8a\x08"
        + numel.to_bytes(8, "little", signed=True)
        + b"tQ"
    )
    rebuild = (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + storage
        + b"K\x00"
        + ints(shape)
        + ints(stride)
        + b"\x89ccollections\nOrderedDict\n)RtR"
    )
    return b"\x80\x02}X\x01\x00\x00\x00w" + rebuild + b"s."


def zip_pth(path: Path, pkl: bytes, data: bytes | None = None, compress: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        if data is not None:
            z.writestr("archive/data/0", data, compress_type=compress)
    return path


def safetensors(path: Path, header: bytes, body: bytes = b"", length: int | None = None) -> Path:
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + body)
    return path


def convert(src: Path) -> list[str]:
    return ["weights", "convert", str(src), str(src.parent / "out.npz"), "--arch", "convnext"]


def deep_list(depth: int) -> bytes:
    return b"\x80\x02}X\x01\x00\x00\x00w" + b"]" * depth + b"a" * (depth - 1) + b"s."


def npz_with_header(path: Path, shape: tuple[int, ...]) -> Path:
    """An .npz whose one array declares `shape` in its .npy header but holds 16 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", header.getvalue() + bytes(16))
        z.writestr("__meta__.npy", _npy(np.array(json.dumps({"arch": "convnext", "num_classes": 1, "in_chans": 1}))))
    return path


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def zip_bomb(tmp: Path) -> Path:
    """64 MiB of zeros deflated to about 64 KiB, declared by the pickle as the tensor's storage."""
    numel = 16 << 20
    return zip_pth(tmp / "bomb.pth", tensor_pickle((numel,), (1,), numel), bytes(4 * numel), zipfile.ZIP_DEFLATED)


NOT_RUN = f"refused to unpickle the global '{os.system.__module__}.system'"


def st_header(entries: dict) -> bytes:
    return json.dumps(entries).encode()


# name -> (the weights file made in the case's folder, what the one stderr line must say)
FILES = {
    "legacy-payload-in-magic-record": (lambda t: legacy_file(t / "evil.pth", [payload(t)]), NOT_RUN),
    "legacy-payload-in-sys-info": (lambda t: legacy_file(t / "evil.pth", legacy_records()[:2] + [payload(t)]), NOT_RUN),
    "legacy-payload-in-state-dict": (lambda t: legacy_file(t / "evil.pth", legacy_records() + [payload(t)]), NOT_RUN),
    "legacy-payload-in-storage-keys": (
        lambda t: legacy_file(t / "evil.pth", legacy_records() + [pickle.dumps({}, protocol=2), payload(t)]),
        NOT_RUN,
    ),
    "legacy-payload-named-bin": (lambda t: legacy_file(t / "pytorch_model.bin", [payload(t)]), NOT_RUN),
    "zip-payload-protocol-4": (lambda t: zip_pth(t / "evil.pth", payload(t, 4)), NOT_RUN),
    "zip-payload-named-pt": (lambda t: zip_pth(t / "evil.pt", payload(t, 2)), NOT_RUN),
    "zip-bomb-tensor-entry": (zip_bomb, "would inflate"),
    "huge-shape-stride-0": (
        lambda t: zip_pth(t / "huge.pth", tensor_pickle((GB, GB), (0, 0), 1), bytes(4)),
        "more elements than its storage",
    ),
    "storage-larger-than-entry": (
        lambda t: zip_pth(t / "short.pth", tensor_pickle((GB,), (1,), GB), bytes(4)),
        "storage needs",
    ),
    "negative-shape": (lambda t: zip_pth(t / "negative.pth", tensor_pickle((-4,), (1,), 4), bytes(16)), "malformed"),
    "legacy-storage-longer-than-file": (
        lambda t: legacy_file(
            t / "long.pth",
            legacy_records() + [tensor_pickle((4,), (1,), 4), pickle.dumps(["0"], 2), struct.pack("<q", 1 << 40)],
        ),
        "more than the file holds",
    ),
    "deeply-nested-pickle": (lambda t: zip_pth(t / "deep.pth", deep_list(100_000)), "unreadable"),
    "garbage-pth": (lambda t: _write(t / "junk.pth", os.urandom(4096)), "unreadable"),
    "legacy-bytes8-longer-than-file": (
        lambda t: legacy_file(t / "claims.pth", [b"\x80\x04\x8e" + struct.pack("<Q", 1 << 44) + b"x."]),
        "claims 17,592,186,044,416 bytes",
    ),
    "zip-long4-longer-than-file": (
        lambda t: zip_pth(t / "claims.pth", b"\x80\x02\x8b" + struct.pack("<i", 1 << 30) + b"x."),
        "claims 1,073,741,824 bytes",
    ),
    "empty-file": (lambda t: _write(t / "empty.pth", b""), "unreadable"),
    "zip-without-data-pkl": (lambda t: _zip(t / "other.pth", {"readme.txt": b"hello"}), "without data.pkl"),
    "safetensors-absurd-header-length": (
        lambda t: safetensors(t / "a.safetensors", b"{}", length=1 << 62),
        "header claims",
    ),
    "safetensors-header-is-a-list": (lambda t: safetensors(t / "b.safetensors", b"[1, 2, 3]"), "not a mapping"),
    "safetensors-header-not-json": (lambda t: safetensors(t / "c.safetensors", b"\xff\xfe{{"), "unreadable"),
    "safetensors-entry-not-a-mapping": (lambda t: safetensors(t / "d.safetensors", b'{"w": 3}'), "lacks dtype"),
    "safetensors-huge-shape": (
        lambda t: safetensors(
            t / "e.safetensors",
            st_header({"w": {"dtype": "F32", "shape": [GB, GB], "data_offsets": [0, 16]}}),
            bytes(16),
        ),
        "does not fit its offsets",
    ),
    "safetensors-offsets-past-the-end": (
        lambda t: safetensors(
            t / "f.safetensors",
            st_header({"w": {"dtype": "F32", "shape": [GB], "data_offsets": [0, 4 * GB]}}),
            bytes(16),
        ),
        "does not fit its offsets",
    ),
    "safetensors-unknown-dtype": (
        lambda t: safetensors(
            t / "g.safetensors", st_header({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}), bytes(8)
        ),
        "unsupported dtype",
    ),
    "missing-file": (lambda t: t / "absent.pth", "no such weights file"),
}
CASES = [
    Case(name, lambda t, make=make: convert(make(t)), 2, message, outputs=("out.npz", MARKER))
    for name, (make, message) in FILES.items()
] + [
    Case(
        "output-under-a-file",
        lambda t: [
            "weights",
            "convert",
            str(FIXTURE / "convnext.pth"),
            str(_write(t / "afile", b"x") / "out.npz"),
            "--arch",
            "convnext",
        ],
        2,
        "cannot write outputs here",
    ),
    Case(
        "output-is-the-input",
        lambda t: [
            "weights",
            "convert",
            str(_copy(FIXTURE / "convnext.pth", t / "w.pth")),
            str(t / "w.pth"),
            "--arch",
            "convnext",
        ],
        2,
        "would overwrite",
    ),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _copy(src: Path, dst: Path) -> Path:
    return _write(dst, src.read_bytes())


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_weight_files(case, tmp_path, monkeypatch, capfd):
    check_case(case, tmp_path, monkeypatch, capfd)


def test_the_payloads_would_run_with_plain_pickle(tmp_path):
    """The refusals above are real: the same bytes run their command under plain pickle (in a child process)."""
    evil = legacy_file(tmp_path / "evil.pth", [payload(tmp_path)])
    code = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
    subprocess.run([sys.executable, "-c", code, str(evil)], check=True, capture_output=True)
    assert (tmp_path / MARKER).exists()


@pytest.mark.parametrize(
    "name,make,message",
    [
        ("legacy-payload", lambda t: legacy_file(t / "evil.pth", [payload(t)]), NOT_RUN),
        ("npz-declares-huge-array", lambda t: npz_with_header(t / "huge.npz", (GB, GB)), "more than its"),
        ("npz-bomb", lambda t: _deflated_npz(t / "bomb.npz"), "would inflate"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_hostile_pretrained_files_for_training(name, make, message, cohort, tmp_path, monkeypatch, capfd):
    case = Case(
        f"train-snet-{name}",
        lambda t: [
            "train",
            "snet",
            "--data",
            str(cohort),
            "--fold",
            "0",
            "--preset",
            "tiny",
            "--workdir",
            str(t / "runs"),
            "--pretrained",
            str(make(t)),
        ],
        2,
        message,
        outputs=("runs", MARKER),
    )
    check_case(case, tmp_path, monkeypatch, capfd)


def _deflated_npz(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("w.npy", _npy(np.zeros(16 << 20, np.float32)))
    return path
