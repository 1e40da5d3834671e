"""Loader speed. S-Net: the full pipeline (balanced sampling, synthesis, augmentation) over whole batches against the
same work done one sample at a time (the same functions on batches of 1), and through the background prefetch.
L-Net: training crops per second. Prints one JSON object.

    python benchmarks/loader.py --quick                 # CPU-sized case, well under 2 minutes
    python benchmarks/loader.py --image-size 512 --batch 16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import chest_slices, level_volumes, print_report, random_crops, texture_patterns

from sscjax.data.snet_loader import SNetLoader
from sscjax.train import prefetch_batches


def timed(function, steps: range) -> tuple[float, list]:
    """Mean seconds per call of function(step) over `steps`, and the results."""
    start = time.perf_counter()
    results = [function(step) for step in steps]
    return (time.perf_counter() - start) / len(steps), results


def one_at_a_time(loader: SNetLoader, step: int) -> dict:
    """The same batch, every sample rendered alone (batch of 1) and stacked."""
    plan = loader.plan(step)
    rows = [loader.render(plan, np.array([row])) for row in loader.rows]
    return {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}


class LoaderTask:
    """The training engine's view of a loader (`sscjax.train.Task.train_batch`)."""

    def __init__(self, loader: SNetLoader):
        self.loader = loader

    def train_batch(self, step: int, process_index: int, process_count: int) -> dict:
        return self.loader.batch(step)


def rate(seconds_per_batch: float, batch: int) -> dict:
    return {
        "seconds_per_batch": seconds_per_batch,
        "batches_per_s": 1 / seconds_per_batch,
        "images_per_s": batch / seconds_per_batch,
    }


def snet_figures(args) -> dict:
    slices = chest_slices(args.slices, args.image_size, args.seed)
    loader = SNetLoader(slices, args.batch, args.seed, patterns=texture_patterns(args.seed))
    loader.batch(0), one_at_a_time(loader, 0)  # warm-up
    steps = range(1, args.steps + 1)
    fast_s, fast = timed(loader.batch, steps)
    naive_s, naive = timed(lambda step: one_at_a_time(loader, step), steps)
    identical = all(np.array_equal(a[k], b[k]) for a, b in zip(fast, naive) for k in a)
    start = time.perf_counter()
    for _ in prefetch_batches(LoaderTask(loader), steps.start, steps.stop):
        pass
    prefetch_s = (time.perf_counter() - start) / len(steps)
    return {
        "batch": rate(fast_s, args.batch),
        "one_at_a_time": rate(naive_s, args.batch),
        "speedup": naive_s / fast_s,
        "identical_batches": identical,
        "prefetch": rate(prefetch_s, args.batch),
    }


def lnet_figures(args) -> dict:
    levels = level_volumes(8, tuple(args.lnet_size), args.seed)
    crops = lambda step: random_crops(levels, args.lnet_crop, args.lnet_batch, args.seed, step)  # noqa: E731
    crops(0)
    seconds, _ = timed(crops, range(1, args.steps + 1))
    return {"seconds_per_batch": seconds, "crops_per_s": args.lnet_batch / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=512, help="S-Net slice size in pixels")
    parser.add_argument("--batch", type=int, default=16, help="S-Net batch size")
    parser.add_argument("--steps", type=int, default=6, help="batches timed per method")
    parser.add_argument("--slices", type=int, default=60, help="slices in the toy S-Net training set")
    parser.add_argument("--lnet-size", type=int, nargs=3, default=(256, 256, 256), help="L-Net resampled matrix")
    parser.add_argument("--lnet-crop", type=int, default=192, help="L-Net crop slices")
    parser.add_argument("--lnet-batch", type=int, default=4, help="L-Net batch size")
    parser.add_argument(
        "--quick", action="store_true", help="CPU-sized case: 128 px batch 32, L-Net 80x64x64 crops of 64, 10 steps"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data and batches")
    args = parser.parse_args()
    if args.quick:
        args.image_size, args.batch, args.steps = 128, 32, 10
        args.lnet_size, args.lnet_crop = (80, 64, 64), 64
    inputs = {k: v for k, v in vars(args).items()}
    inputs["pipeline"] = {"balanced": True, "synthesis": True, "synthetic_fraction": 0.5, "augment": True}
    snet = snet_figures(args)
    print_report("loader", inputs, {"speedup": snet["speedup"], "snet": snet, "lnet_crops": lnet_figures(args)})


if __name__ == "__main__":
    main()
