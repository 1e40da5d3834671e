"""Cascade speed: seconds per scan from the file to the written outputs for a phantom, split into reading, the lung
mask, the L-Net (resampling and windows), the S-Net and writing. The networks have the preset's architecture and
sizes with random weights (speed does not depend on the weights). Prints one JSON object.

    python benchmarks/cascade.py --quick                  # small phantom, tiny presets
    python benchmarks/cascade.py --preset paper           # full-size phantom, VGG11-3D 256^3 and ConvNeXt-T 512
    python benchmarks/cascade.py --preset paper --slices 1200 --scans 2   # a 0.3 mm reconstruction, int16

`--slices N` resamples each phantom along z to N slices over the same field of view (linear, stored as int16), as
a thin-slice reconstruction of the same chest. The phantoms are made in a child process, so the peak resident set
reported (`peak_rss_gib`, ru_maxrss, GiB) is the cascade's: the runtime, the networks and the scans.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import print_report
from flax import nnx

from sscjax import cascade, lnet, networks, snet
from sscjax.io import read_scan, resample, write_image
from sscjax.models import build_model
from sscjax.phantom.cohort import write_cohort


@contextlib.contextmanager
def timing(module, names: list[str], seconds: dict[str, float]):
    """Add the wall time of every call of module.<name> to seconds[name] while inside the block."""
    originals = {name: getattr(module, name) for name in names}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - start

        return wrapper

    for name, function in originals.items():
        setattr(module, name, timed(name, function))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(module, name, function)


def preset_models(preset: str) -> cascade.Models:
    """One L-Net and one S-Net of a preset's architecture and input size, randomly initialised."""
    lnet_config, snet_config = networks.preset("lnet", preset), networks.preset("snet", preset)
    level = lnet.level_model(build_model(lnet_config.model, nnx.Rngs(0)), lnet_config)
    scratch = dataclasses.replace(snet_config, pretrained="none")
    scorer = snet.SNet(snet.make_snet(scratch, nnx.Rngs(0)), scratch)
    return cascade.Models([level], [scorer])


def one_scan(path: Path, models: cascade.Models, out_dir: Path) -> dict[str, float]:
    """Seconds of each part of one scan's cascade, and the total."""
    seconds = defaultdict(float)
    start = time.perf_counter()
    with timing(cascade, ["lung_mask", "locate_levels", "score_slices"], seconds):
        t = time.perf_counter()
        scan = read_scan(path)
        seconds["read"] = time.perf_counter() - t
        result = cascade.run_cascade(scan, models)
        t = time.perf_counter()
        cascade.write_result(result, out_dir)
        seconds["write"] = time.perf_counter() - t
    total = time.perf_counter() - start
    return {
        "read_s": seconds["read"],
        "lung_mask_s": seconds["lung_mask"],
        "lnet_s": seconds["locate_levels"],
        "snet_s": seconds["score_slices"],
        "write_s": seconds["write"],
        "total_s": total,
    }


def make_scans(folder: Path, n: int, size: str, seed: int, slices: int | None) -> None:
    """Write `n` phantoms of `size` under `folder`, each resampled along z to `slices` slices when given."""
    cohort = write_cohort(folder, n, size, seed)
    if slices is None:
        return
    for path in sorted((cohort / "scans").iterdir()):
        scan = read_scan(path)
        thin = resample(scan, (slices, *scan.shape[1:]))
        write_image(path, np.rint(thin.array).astype(np.int16), thin.geometry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset", choices=networks.shared_presets(), default="paper", help="network architectures and sizes"
    )
    parser.add_argument("--phantom", choices=["full", "small"], default="full", help="phantom size")
    parser.add_argument("--scans", type=int, default=2, help="scans timed (the first also compiles)")
    parser.add_argument("--quick", action="store_true", help="CPU-sized: small phantoms, tiny presets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slices", type=int, help="resample each phantom along z to this many slices (e.g. 1200)")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.phantom = "tiny", "small"
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort"
        maker = multiprocessing.get_context("spawn").Process(
            target=make_scans, args=(cohort, args.scans, args.phantom, args.seed, args.slices)
        )
        maker.start()
        maker.join()
        if maker.exitcode != 0:
            raise SystemExit(f"making the phantoms failed (exit code {maker.exitcode})")
        paths = sorted((cohort / "scans").iterdir())
        shape = read_scan(paths[0]).shape
        models = preset_models(args.preset)
        runs_s = [one_scan(path, models, Path(tmp) / "out") for path in paths]
    steady = runs_s[1:] or runs_s
    figures = {
        "scan_shape_zyx": list(shape),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "first_scan": runs_s[0],
        "steady": {key: sum(r[key] for r in steady) / len(steady) for key in runs_s[0]},
    }
    figures["seconds_per_scan"] = figures["steady"]["total_s"]
    print_report("cascade", vars(args), figures)


if __name__ == "__main__":
    main()
