"""Helpers shared by the benchmark scripts: toy inputs of any size, the environment they ran in, a steady-state
timer, and the one JSON object each script prints."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from sscjax.configs.lnet import LNetData
from sscjax.data.lnet import LevelSet, PreparedVolume, crop_starts, training_crops
from sscjax.data.slices import SliceSet, window
from sscjax.data.synthesis import Patterns
from sscjax.io import Geometry


def chest_slices(n: int, size: int, seed: int) -> SliceSet:
    """n chest-like slices (body, two lungs of random size, noise); every other one healthy."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    ry, rx = rng.uniform(0.2, 0.32, (n, 1, 1)), rng.uniform(0.1, 0.16, (n, 1, 1))
    lung = ((yy - 0.5) / ry) ** 2 + ((np.abs(xx - 0.5) - 0.2) / rx) ** 2 <= 1
    body = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.48) ** 2 <= 1
    hu = np.where(lung, -850.0, np.where(body, 40.0, -1000.0)) + rng.normal(0, 30, (n, size, size))
    tot = np.where(np.arange(n) % 2 == 0, 0.0, rng.choice(np.arange(5, 101, 5), n))
    return SliceSet(
        images=window(hu),
        lung=lung,
        scores=np.stack([tot, tot / 2, tot / 2], 1).astype(np.float32),
        scan_id=np.array([f"s{i // 15}" for i in range(n)]),
        level=(np.arange(n) // 3 % 5 + 1).astype(np.int8),
        offset=(np.arange(n) % 3 - 1).astype(np.int8),
        slice_index=np.arange(n, dtype=np.int32),
        z_mm=np.zeros(n),
        spacing_yx=np.full((n, 2), 0.7 * 512 / size),
        native_shape=np.full((n, 2), 512, np.int32),
    )


def texture_patterns(seed: int) -> Patterns:
    """GG (hazy) and RET (speckled) texture patches for synthesis."""
    rng = np.random.default_rng(seed)
    gg = window(-550 + rng.normal(0, 40, (64, 64)))
    ret = window(np.where(rng.random((64, 64)) < 0.3, -200.0, -700.0))
    return Patterns(gg, ret, 0.7)


def level_volumes(n: int, size: tuple[int, int, int], seed: int) -> LevelSet:
    """n resampled int16 volumes of `size` with five level positions spread over their middle half."""
    rng = np.random.default_rng(seed)
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    volumes = [
        PreparedVolume(rng.integers(-1000, 400, size, dtype=np.int16), geometry, geometry, size) for _ in range(n)
    ]
    positions = np.sort(rng.uniform(0.3, 0.7, (n, 5)) * size[0], axis=1)[:, ::-1].astype(np.float32)
    return LevelSet([f"v{i}" for i in range(n)], volumes, positions)


def random_crops(levels: LevelSet, crop: int, batch: int, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch `step` of level-keeping L-Net training crops (z-scored inputs, positions in the crop)."""
    rng = np.random.default_rng([seed, step])
    rows = rng.integers(0, len(levels), batch)
    starts = crop_starts(
        levels.positions[rows], crop, levels.volumes[0].array.shape[0], LNetData.margin, rng.random(batch)
    )
    return training_crops(levels, rows, starts, crop)


def environment() -> dict[str, Any]:
    """Device kind, backend, device count, library versions and CPU count of this run."""
    import jax
    import jaxlib
    import numpy as np

    device = jax.devices()[0]
    return {
        "device_kind": str(device.device_kind),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
    }


def block(result: Any) -> Any:
    """Wait for every array in a pytree of results (no-op for non-arrays)."""
    import jax

    return jax.block_until_ready(result)


def time_call(function: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median, min and max wall seconds of `function()` over `repeats` runs after `warmup` untimed runs; every
    run waits for its device results (block_until_ready) so asynchronous dispatch is not mistaken for speed."""
    for _ in range(warmup):
        block(function())
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(function())
        seconds.append(time.perf_counter() - start)
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds), "repeats": repeats}


def peak_memory_bytes() -> int | None:
    """Peak device memory in bytes where the backend reports it (GPU/TPU), else None (CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def rounded(value: Any, digits: int = 5) -> Any:
    """Floats in a nested dict/list rounded to `digits` significant digits for printing."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item, digits) for item in value]
    return value


def print_report(benchmark: str, inputs: dict[str, Any], figures: dict[str, Any]) -> None:
    """Print the script's single JSON object: its name, inputs, environment and figures."""
    print(json.dumps({"benchmark": benchmark, "inputs": inputs, "environment": environment(), **rounded(figures)}))
