"""`ssc weights`: convert pretrained PyTorch weights (.pth, .safetensors) to sscjax's .npz files."""

from __future__ import annotations

import os
from pathlib import Path

import click


@click.group()
def weights() -> None:
    """Convert pretrained PyTorch weights to sscjax (nothing is downloaded: point to a file)."""


@weights.command()
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--arch",
    required=True,
    help="Network: convnext_tiny|small|base|large, convnext (sizes read from SRC) or efficientnet_lite0.",
)
@click.option(
    "--num-classes",
    type=click.IntRange(min=1),
    default=None,
    help="Replace the pretrained head by a fresh one with this many outputs (default: keep the file's head).",
)
@click.option(
    "--in-chans",
    type=click.Choice(["1", "3"]),
    default="3",
    show_default=True,
    help="Input channels; 1 sums the stem's RGB kernels (grey CT slices).",
)
@click.option(
    "--normalize-input",
    is_flag=True,
    help="Make the network normalise [0, 1] images with the statistics its pretraining "
    "used (ImageNet for ConvNeXt, TensorFlow's for EfficientNet-Lite).",
)
def convert(src: Path, dst: Path, arch: str, num_classes: int | None, in_chans: str, normalize_input: bool) -> None:
    """Convert the PyTorch weight file SRC into the sscjax weight file DST (.npz)."""
    from sscjax.errors import SscError
    from sscjax.io import check_writable
    from sscjax.models import convert_weights, count_parameters

    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise SscError(f"{dst}: would overwrite the input weights file; choose another output file")
    check_writable(dst.parent)
    model, meta = convert_weights(src, dst, arch, num_classes, int(in_chans), normalize_input=normalize_input)
    click.echo(
        f"{meta['arch']}: {count_parameters(model):,} parameters, {meta['num_classes']} "
        f"outputs, {meta['in_chans']} input channel(s) -> {dst}"
    )
