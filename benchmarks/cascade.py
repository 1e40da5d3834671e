"""Cascade speed: seconds per scan from the file to the written outputs for a phantom, split into reading, the lung
mask, the L-Net (resampling and windows), the S-Net and writing. The networks have the preset's architecture and
sizes with random weights (speed does not depend on the weights). Prints one JSON object.

    python benchmarks/cascade.py --quick                  # small phantom, tiny presets
    python benchmarks/cascade.py --preset paper           # full-size phantom, VGG11-3D 256^3 and ConvNeXt-T 512
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import print_report
from flax import nnx

from sscjax import cascade, lnet, networks, snet
from sscjax.io import read_scan
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset", choices=networks.shared_presets(), default="paper", help="network architectures and sizes"
    )
    parser.add_argument("--phantom", choices=["full", "small"], default="full", help="phantom size")
    parser.add_argument("--scans", type=int, default=2, help="scans timed (the first also compiles)")
    parser.add_argument("--quick", action="store_true", help="CPU-sized: small phantoms, tiny presets")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.preset, args.phantom = "tiny", "small"
    with tempfile.TemporaryDirectory() as tmp:
        cohort = write_cohort(Path(tmp) / "cohort", args.scans, args.phantom, args.seed)
        paths = sorted((cohort / "scans").iterdir())
        shape = read_scan(paths[0]).shape
        models = preset_models(args.preset)
        runs_s = [one_scan(path, models, Path(tmp) / "out") for path in paths]
    steady = runs_s[1:] or runs_s
    figures = {
        "scan_shape_zyx": list(shape),
        "first_scan": runs_s[0],
        "steady": {key: sum(r[key] for r in steady) / len(steady) for key in runs_s[0]},
    }
    figures["seconds_per_scan"] = figures["steady"]["total_s"]
    print_report("cascade", vars(args), figures)


if __name__ == "__main__":
    main()
