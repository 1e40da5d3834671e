"""S-Net loader speed: the full pipeline (sampling, synthesis, augmentation) over whole batches against the same
work done one sample at a time (the same functions on batches of 1). Prints one JSON object.

    python benchmarks/loader.py --quick                 # CPU-sized case, well under 2 minutes
    python benchmarks/loader.py --image-size 512 --batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import scipy

from sscjax.data.slices import SliceSet, window
from sscjax.data.snet_loader import SNetLoader, prefetch
from sscjax.data.synthesis import Patterns


def chest_slices(n: int, size: int, seed: int) -> SliceSet:
    """n chest-like slices (body, two lungs of random size, noise); every other one healthy."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    ry, rx = rng.uniform(0.2, 0.32, (n, 1, 1)), rng.uniform(0.1, 0.16, (n, 1, 1))
    lung = ((yy - 0.5) / ry) ** 2 + ((np.abs(xx - 0.5) - 0.2) / rx) ** 2 <= 1
    body = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.48) ** 2 <= 1
    hu = np.where(lung, -850.0, np.where(body, 40.0, -1000.0)) + rng.normal(0, 30, (n, size, size))
    tot = np.where(np.arange(n) % 2 == 0, 0.0, rng.choice(np.arange(5, 101, 5), n))
    return SliceSet(images=window(hu), lung=lung, scores=np.stack([tot, tot / 2, tot / 2], 1).astype(np.float32),
                    scan_id=np.array([f"s{i // 15}" for i in range(n)]),
                    level=(np.arange(n) // 3 % 5 + 1).astype(np.int8),
                    offset=(np.arange(n) % 3 - 1).astype(np.int8), slice_index=np.arange(n, dtype=np.int32),
                    z_mm=np.zeros(n), spacing_yx=np.full((n, 2), 0.7 * 512 / size),
                    native_shape=np.full((n, 2), 512, np.int32))


def texture_patterns(seed: int) -> Patterns:
    rng = np.random.default_rng(seed)
    gg = window(-550 + rng.normal(0, 40, (64, 64)))
    ret = window(np.where(rng.random((64, 64)) < 0.3, -200.0, -700.0))
    return Patterns(gg, ret, 0.7)


def timed(function, steps: range) -> tuple[float, list]:
    start = time.perf_counter()
    results = [function(step) for step in steps]
    return (time.perf_counter() - start) / len(steps), results


def one_at_a_time(loader: SNetLoader, step: int) -> dict:
    """The same batch, every sample rendered alone (batch of 1) and stacked."""
    plan = loader.plan(step)
    rows = [loader.render(plan, np.array([row])) for row in loader.rows]
    return {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=512, help="slice size in pixels")
    parser.add_argument("--batch", type=int, default=16, help="batch size")
    parser.add_argument("--steps", type=int, default=6, help="batches timed per method")
    parser.add_argument("--slices", type=int, default=60, help="slices in the toy training set")
    parser.add_argument("--workers", type=int, default=2, help="prefetch threads")
    parser.add_argument("--quick", action="store_true", help="CPU-sized case: 128 px, batch 32, 10 steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and batches")
    args = parser.parse_args()
    if args.quick:
        args.image_size, args.batch, args.steps = 128, 32, 10

    slices = chest_slices(args.slices, args.image_size, args.seed)
    loader = SNetLoader(slices, args.batch, args.seed, patterns=texture_patterns(args.seed))
    loader.batch(0), one_at_a_time(loader, 0)  # warm-up
    steps = range(1, args.steps + 1)
    fast_s, fast = timed(loader.batch, steps)
    naive_s, naive = timed(lambda step: one_at_a_time(loader, step), steps)
    identical = all(np.array_equal(a[k], b[k]) for a, b in zip(fast, naive) for k in a)
    start = time.perf_counter()
    with prefetch(loader, steps.start, n_ahead=2 * args.workers, stop_step=steps.stop, workers=args.workers) as batches:
        for _ in batches:
            pass
    prefetch_s = (time.perf_counter() - start) / len(steps)

    import jax

    report = {
        "benchmark": "snet_loader",
        "inputs": {"image_size": args.image_size, "batch": args.batch, "steps": args.steps, "slices": args.slices,
                   "synthetic_fraction": 0.5, "balanced": True, "synthesis": True, "augment": True,
                   "prefetch_workers": args.workers, "quick": args.quick, "seed": args.seed},
        "device": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                   "jax_device": str(jax.devices()[0].device_kind)},
        "versions": {"python": sys.version.split()[0], "numpy": np.__version__, "scipy": scipy.__version__,
                     "jax": jax.__version__},
        "fast": {"seconds_per_batch": round(fast_s, 5), "batches_per_s": round(1 / fast_s, 3),
                 "images_per_s": round(args.batch / fast_s, 1)},
        "one_at_a_time": {"seconds_per_batch": round(naive_s, 5), "batches_per_s": round(1 / naive_s, 3),
                          "images_per_s": round(args.batch / naive_s, 1)},
        "speedup": round(naive_s / fast_s, 2),
        "identical_batches": identical,
        "prefetch": {"seconds_per_batch": round(prefetch_s, 5), "batches_per_s": round(1 / prefetch_s, 3)},
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
