"""Forward-pass speed of the two networks at batch 1, each in its plain XLA form against the form chosen for the
backend: ConvNeXt-T with grouped vs shifted-sum depthwise convolutions (S-Net), VGG11-3D with XLA's 3D convolution
vs sums of 2D convolutions over the z taps (L-Net). Outputs must agree; the JSON reports the largest difference.

    python benchmarks/forward.py --quick                       # 256x256 slices, 96x128x128 volumes
    python benchmarks/forward.py                               # the paper's 512x512 and 192x256x256
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
from common import print_report, time_call
from flax import nnx

from sscjax import train
from sscjax.models import create_model


def compare(model: nnx.Module, set_impl, naive: str, fast: str, inputs: np.ndarray, repeats: int) -> dict:
    """Seconds per forward pass with every layer in the naive and then the fast implementation."""
    figures, outputs = {}, {}
    for impl in (naive, fast):
        set_impl(model, impl)
        predict = train.model_predictor(model, len(inputs))
        outputs[impl] = predict(inputs)
        figures[f"{impl}_s"] = time_call(functools.partial(predict, inputs), repeats=repeats)["median_s"]
    return {
        **figures,
        "speedup": figures[f"{naive}_s"] / figures[f"{fast}_s"],
        "max_abs_difference": float(np.abs(outputs[naive] - outputs[fast]).max()),
    }


def set_depthwise(model: nnx.Module, impl: str) -> None:
    for stage in model.stages:
        for block in stage:
            if hasattr(block, "dwconv"):
                block.dwconv.impl = impl


def set_conv3d(model: nnx.Module, impl: str) -> None:
    for layer in model.features:
        layer.impl = "stacked" if impl != "xla" and layer.conv.in_features == 1 else impl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=512, help="S-Net slice size")
    parser.add_argument("--volume", type=int, nargs=3, default=(192, 256, 256), help="L-Net window (z, y, x)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="CPU-sized: 256x256 slices, 96x128x128 windows")
    args = parser.parse_args()
    if args.quick:
        args.image_size, args.volume = 256, (96, 128, 128)
    rng = np.random.default_rng(0)
    slices = rng.random((args.batch, args.image_size, args.image_size, 1), np.float32)
    volumes = rng.standard_normal((args.batch, *args.volume, 1), np.float32)
    snet = create_model("convnext_tiny", 3, in_chans=1, normalize_input=True, rngs=nnx.Rngs(0))
    lnet = create_model("vgg11_3d", 5, base=8, rngs=nnx.Rngs(0))
    print_report(
        "forward",
        vars(args),
        {
            "snet_convnext_tiny": compare(snet, set_depthwise, "grouped", "shifted", slices, args.repeats),
            "lnet_vgg11_3d": compare(lnet, set_conv3d, "xla", "slices", volumes, args.repeats),
        },
    )


if __name__ == "__main__":
    main()
