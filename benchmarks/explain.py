"""Heat-map speed: one slice's replacement heat maps (all three patterns in one pass) computed by `jax.vmap` over
patch positions in chunks, against the original loops of batch-1 forward passes of the same jitted model on the same
device: this project's first algorithm (`--occlusion replace`) and the authors' code (`--occlusion authors`, their
loop over every window position, 1 + (size / stride)^2 passes). The maps must agree; the JSON reports their largest
difference, the forward passes each side makes and the ratio of the times (`speedup`).

    python benchmarks/explain.py --quick                              # ConvNeXt-T at 256x256, patch 64, stride 16
    python benchmarks/explain.py --quick --occlusion authors          # the authors' mode against their loop
    python benchmarks/explain.py --image-size 512 --chunk 64          # the paper's size
    python benchmarks/explain.py --occlusion authors --loop-sample 64 # 512 px: 64 of their 1025 passes timed, scaled
"""

from __future__ import annotations

import argparse
import time

import jax.numpy as jnp
import numpy as np
from common import chest_slices, print_report, texture_patterns
from flax import nnx
from original_loop import authors_heatmaps_sequential, heatmaps_sequential

from sscjax.configs.snet import SNetConfig
from sscjax.heatmaps import HeatmapConfig, default_chunk, heatmaps, lung_positions, make_delta_fn
from sscjax.models import create_model
from sscjax.snet import SNet

SEED_PX = 32  # side of the authors' mode's healthy seed (their code tiles it, at most half the slice)


def seconds(function) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="convnext_tiny", help="S-Net architecture (random weights)")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--chunk", type=int, help="positions per vmapped forward batch (default: default_chunk)")
    parser.add_argument("--occlusion", choices=["replace", "authors"], default="replace", help="which heat maps")
    parser.add_argument("--skip-sequential", action="store_true", help="time the vmapped path only")
    parser.add_argument(
        "--loop-sample",
        type=int,
        help="authors mode: time only this many of their loop's passes (all cost the same) and scale to all of them",
    )
    parser.add_argument("--quick", action="store_true", help="CPU-sized: 256x256 (the DESIGN.md comparison)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.image_size = 256

    model = create_model(args.model, 3, in_chans=1, normalize_input=True, rngs=nnx.Rngs(args.seed))
    authors = args.occlusion == "authors"
    predict = SNet(model, SNetConfig()).function(bounded=not authors)  # the authors' Delta P is of the raw outputs
    slices = chest_slices(1, args.image_size, args.seed)
    image, lung = slices.images[0], slices.lung[0]
    texture = texture_patterns(args.seed).gg[:SEED_PX, :SEED_PX] if authors else texture_patterns(args.seed).gg
    cfg = HeatmapConfig(args.patch, args.stride, args.patch // 4, args.chunk, args.occlusion)
    positions = len(lung_positions(lung, cfg))

    delta_fn = make_delta_fn(predict, image.shape, cfg)
    one_pixel = np.zeros_like(lung)
    one_pixel[tuple(np.argwhere(lung)[0])] = True  # the windows over one lung pixel: compiles the same chunk shape
    compile_s, _ = seconds(lambda: heatmaps(predict, image, one_pixel, texture, cfg, delta_fn))
    vmapped_s, vmapped = seconds(lambda: heatmaps(predict, image, lung, texture, cfg, delta_fn))
    figures = {
        "chunk": cfg.chunk or default_chunk(image.shape),
        "positions": positions,
        "forward_passes": positions + 1,
        "warmup_s": compile_s,
        "vmapped_s": vmapped_s,
        "vmapped_per_position_s": vmapped_s / positions,
    }
    if not args.skip_sequential:
        predict(jnp.asarray(image[None, :, :, None])).block_until_ready()  # compile the batch-1 pass untimed
        if authors:
            sequential_s, (sequential, passes) = seconds(
                lambda: authors_heatmaps_sequential(
                    predict, image, lung, texture, cfg.patch, cfg.stride, args.loop_sample
                )
            )
            if args.loop_sample:
                figures["sequential_timed_passes"] = passes
                sequential = None
                passes = 1 + len(range(0, image.shape[0], cfg.stride)) * len(range(0, image.shape[1], cfg.stride))
                sequential_s *= passes / figures["sequential_timed_passes"]
        else:
            sequential_s, sequential = seconds(lambda: heatmaps_sequential(predict, image, lung, texture, cfg))
            passes = positions + 1
        figures |= {
            "sequential_s": sequential_s,
            "sequential_forward_passes": passes,
            "sequential_per_pass_s": sequential_s / passes,
            "speedup": sequential_s / vmapped_s,
        }
        if sequential is not None:
            figures["max_abs_difference_pp"] = float(np.abs(vmapped - sequential).max())
    print_report("explain", vars(args), figures)


if __name__ == "__main__":
    main()
