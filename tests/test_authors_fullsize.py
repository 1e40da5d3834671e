"""The authors' networks at their published sizes (slow): state dicts of the VGG11-3D L-Net (base 8, FC 1024), the
ConvNeXt-T and the VGG11-bn S-Nets in the authors' key layout, random weights made with numpy (the file reader itself
is checked on the real fixtures in test_authors.py), imported with `ssc weights import-authors`, then `ssc levels`
and `ssc cascade` on a full-size phantom (512x512 slices). Prints the time and peak memory of each command."""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from sscjax.data import load_cohort

VGG_CONVS = (0, 4, 8, 11, 15, 18, 22, 25)  # torchvision's vgg11 indices; a BatchNorm follows each
VGG_MULTIPLES = (1, 2, 4, 4, 8, 8, 16, 16)
PEAK_GB = 16.0  # far above what the commands need; a leak or a copy per window would pass it


def _conv(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _batch_norm(state: dict, key: str, width: int) -> None:
    state |= {f"{key}.weight": np.ones(width, np.float32), f"{key}.bias": np.zeros(width, np.float32)}
    state |= {f"{key}.running_mean": np.zeros(width, np.float32), f"{key}.running_var": np.ones(width, np.float32)}
    state[f"{key}.num_batches_tracked"] = np.array(0, np.int64)


def _linear(rng: np.random.Generator, state: dict, key: str, n_in: int, n_out: int) -> None:
    state[f"{key}.weight"] = (rng.standard_normal((n_out, n_in)) * 0.01).astype(np.float32)
    state[f"{key}.bias"] = np.zeros(n_out, np.float32)


def vgg_state(widths: list[int], kernel: tuple[int, ...], norm_offset: int, rng: np.random.Generator) -> dict:
    """The convolutions and BatchNorms of a VGG11 (`features.*`) with one input channel."""
    state: dict = {}
    for index, c_in, c_out in zip(VGG_CONVS, [1, *widths[:-1]], widths):
        state[f"features.{index}.weight"] = _conv(rng, (c_out, c_in, *kernel))
        state[f"features.{index}.bias"] = np.zeros(c_out, np.float32)
        _batch_norm(state, f"features.{index + norm_offset}", c_out)
    return state


def lnet_state(rng: np.random.Generator, base: int = 8, fc: int = 1024) -> dict:
    """The authors' Vgg11_3d: conv -> ReLU -> BatchNorm (at index + 2), pooled to 6x6x6, ln1-ln3."""
    state = vgg_state([base * m for m in VGG_MULTIPLES], (3, 3, 3), 2, rng)
    _linear(rng, state, "ln1", 16 * base * 6**3, fc)
    _linear(rng, state, "ln2", fc, fc)
    _linear(rng, state, "ln3", fc, 5)
    return state


def vgg11_bn_state(rng: np.random.Generator, fc: int = 1024) -> dict:
    """torchvision's vgg11_bn with a one-channel first convolution and a 3-output classifier."""
    state = vgg_state([64, 128, 256, 256, 512, 512, 512, 512], (3, 3), 1, rng)
    _linear(rng, state, "classifier.0", 512 * 7 * 7, fc)
    _linear(rng, state, "classifier.3", fc, fc)
    _linear(rng, state, "classifier.6", fc, 3)
    return state


def _layer_norm(state: dict, key: str, width: int) -> None:
    state |= {f"{key}.weight": np.ones(width, np.float32), f"{key}.bias": np.zeros(width, np.float32)}


def convnext_t_state(rng: np.random.Generator, widths=(96, 192, 384, 768), depths=(3, 3, 9, 3)) -> dict:
    """torchvision's convnext_tiny with the authors' one-channel stem and a 3-output head."""
    state = {"features.0.0.weight": _conv(rng, (widths[0], 1, 4, 4)), "features.0.0.bias": np.zeros(widths[0], "f4")}
    _layer_norm(state, "features.0.1", widths[0])
    for stage, (width, depth) in enumerate(zip(widths, depths)):
        for block in range(depth):
            key = f"features.{2 * stage + 1}.{block}"
            state[f"{key}.block.0.weight"] = _conv(rng, (width, 1, 7, 7))
            state[f"{key}.block.0.bias"] = np.zeros(width, np.float32)
            _layer_norm(state, f"{key}.block.2", width)
            _linear(rng, state, f"{key}.block.3", width, 4 * width)
            _linear(rng, state, f"{key}.block.5", 4 * width, width)
            state[f"{key}.layer_scale"] = np.full((width, 1, 1), 1e-6, np.float32)
        if stage + 1 < len(widths):
            _layer_norm(state, f"features.{2 * stage + 2}.0", width)
            state[f"features.{2 * stage + 2}.1.weight"] = _conv(rng, (widths[stage + 1], width, 2, 2))
            state[f"features.{2 * stage + 2}.1.bias"] = np.zeros(widths[stage + 1], np.float32)
    _layer_norm(state, "classifier.0", widths[-1])
    _linear(rng, state, "classifier.2", widths[-1], 3)
    return state


def write_safetensors(path: Path, state: dict[str, np.ndarray]) -> Path:
    """A .safetensors file of numpy arrays (an 8-byte header length, a JSON header, the raw little-endian data)."""
    header, offset, blobs = {}, 0, []
    for name, array in state.items():
        data = np.ascontiguousarray(array).tobytes()
        dtype = {"float32": "F32", "int64": "I64"}[array.dtype.name]
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path


def timed_ssc(*args: str) -> tuple[float, str]:
    """(seconds, stdout) of one `ssc` command; fails the test on a non-zero exit."""
    start = time.perf_counter()
    done = subprocess.run(["ssc", *map(str, args)], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return time.perf_counter() - start, done.stdout


@pytest.mark.slow
def test_published_sizes_import_and_run_levels_and_cascade(tmp_path):
    rng = np.random.default_rng(0)
    files = {
        "lnet": write_safetensors(tmp_path / "lnet.safetensors", lnet_state(rng)),
        "convnext": write_safetensors(tmp_path / "convnext.safetensors", convnext_t_state(rng)),
        "vgg11_bn": write_safetensors(tmp_path / "vgg11_bn.safetensors", vgg11_bn_state(rng)),
    }
    timings = {}
    for name, path in files.items():
        net = "lnet" if name == "lnet" else "snet"
        timings[f"import {name}"], _ = timed_ssc(
            "weights", "import-authors", path, "--net", net, "--out", tmp_path / name
        )
    for name, arch in (("lnet", "vgg11_3d"), ("convnext", "convnext"), ("vgg11_bn", "vgg11_bn")):
        assert json.loads((tmp_path / name / "config.json").read_text())["model"]["name"] == arch
    timed_ssc("phantom", tmp_path / "cohort", "--patients", "1", "--preset", "full", "--seed", "3")
    cohort = load_cohort(tmp_path / "cohort")
    scan = cohort.scan_paths[cohort.ids[0]]
    timings["levels"], out = timed_ssc("levels", scan, "--model", tmp_path / "lnet")
    assert len(json.loads(out)["levels_mm"]) == 5
    timings["cascade"], _ = timed_ssc(
        "cascade", "--scan", scan, "--lnet", tmp_path / "lnet", "--snet", tmp_path / "convnext",
        "--snet", tmp_path / "vgg11_bn", "--out", tmp_path / "results",
    )  # fmt: skip
    result = json.loads((tmp_path / "results" / cohort.ids[0] / "scores.json").read_text())
    assert len(result["levels"]) == 5 and all(np.isfinite(list(lv["raw"].values())).all() for lv in result["levels"])
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(json.dumps({"seconds": {k: round(v, 1) for k, v in timings.items()}, "peak_rss_gb": round(peak_gb, 2)}))
    assert peak_gb < PEAK_GB
