"""`ssc weights`: convert pretrained PyTorch weights (.pth, .safetensors) to sscjax's .npz files, and import the paper
authors' trained networks as run folders."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .common import set_option


@click.group()
def weights() -> None:
    """Convert pretrained PyTorch weights to sscjax, or import the authors' networks (nothing is downloaded: point to
    a file)."""


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


@weights.command("import-authors")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--net", required=True, type=click.Choice(["lnet", "snet"]), help="Which network FILE holds.")
@click.option(
    "--out",
    "run_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The run folder to write (new or empty).",
)
@set_option("data.size=[256,256,256]")
def import_authors(file: Path, net: str, run_dir: Path, assignments: tuple[str, ...]) -> None:
    """Import FILE, a model.pt (state dict) of the paper authors' trained L-Net or S-Net, as a run folder.

    The run is set to run the network as the authors' inference code does (data.conventions = "authors") and
    records FILE and its SHA-256. Their model_wt_structure.pt (a whole pickled model) is refused.
    """
    from sscjax.authors_runs import import_authors as import_run

    run, config = import_run(file, net, run_dir, assignments)
    click.echo(
        f"{net}: {config.model.name} {config.model.kwargs} from {file} (sha256 {config.model.imported_sha256}) -> {run}"
    )
