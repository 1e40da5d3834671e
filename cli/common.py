"""Options and helpers that several `ssc` commands share."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar


def _use_device(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        from sscjax.provenance import use_platform

        use_platform(value)


def device_option(command):
    """--device cpu|gpu: the backend JAX computes on, chosen while the options are read (before anything starts
    JAX); a missing backend is one error line, exit 2."""
    from sscjax.provenance import PLATFORMS

    return click.option(
        "--device",
        type=click.Choice(PLATFORMS),
        expose_value=False,
        callback=_use_device,
        help="Where the networks run (default: JAX's default backend, a GPU if JAX has one).",
    )(command)


def set_option(example: str):
    """--set KEY.PATH=VALUE, repeatable: one setting changed on the command line."""
    return click.option(
        "--set",
        "assignments",
        multiple=True,
        metavar="KEY.PATH=VALUE",
        help=f"Change one setting, e.g. --set {example}; repeatable. The value is read as TOML (3e-4, "
        'true, "text", [1, 2]); other text counts as a string.',
    )


def series_option(command):
    """--series UID: which series of a DICOM folder to read (default: the one with the most slices)."""
    return click.option(
        "--series",
        metavar="UID",
        help="DICOM series instance UID, when a DICOM folder holds several series (default: the longest).",
    )(command)


def lung_mask_option(command):
    """--lung-mask FILE: the scan's lung mask to use instead of the computed one."""
    return click.option(
        "--lung-mask",
        "lung_mask",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Lung mask image (any label > 0) in the scan's geometry, used instead of the computed mask.",
    )(command)


def model_options(command):
    """--lnet, --snet (repeatable run folders) and --workdir (where runs are found by default)."""
    command = click.option(
        "--workdir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("runs"),
        show_default=True,
        help="Where trained runs are found when --lnet/--snet are not given: "
        "every fold under WORKDIR/lnet and WORKDIR/snet.",
    )(command)
    command = click.option(
        "--snet",
        "snet_runs",
        multiple=True,
        type=click.Path(path_type=Path),
        help="An S-Net run folder; repeat for an ensemble.",
    )(command)
    return click.option(
        "--lnet",
        "lnet_runs",
        multiple=True,
        type=click.Path(path_type=Path),
        help="An L-Net run folder; repeat for an ensemble.",
    )(command)


def resolve_models(lnet_runs, snet_runs, workdir: Path, need_lnet: bool = True):
    """Load the named runs, or every trained fold under the workdir."""
    from sscjax import cascade, runs

    lnets = list(lnet_runs) or (runs.find_runs(workdir, "lnet") if need_lnet else [])
    snets = list(snet_runs) or runs.find_runs(workdir, "snet")
    models = cascade.load_models(lnets, snets)
    click.echo(f"Models: {len(lnets)} L-Net and {len(snets)} S-Net run(s)")
    return models


def scans_from(values) -> list[Path]:
    """Scan paths from --scan values: files, DICOM folders, folders of scans; a scan named twice counts once."""
    from sscjax.io import find_scans

    unique: dict[Path, Path] = {}
    for path in (p for value in values for p in find_scans(value)):
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def echo_failures(failures: dict[str, str], total: int) -> None:
    """Report the scans that failed and exit 1 if any did."""
    if not failures:
        return
    click.echo(f"\n{len(failures)} of {total} scan(s) failed:", err=True)
    for path, reason in failures.items():
        click.echo(f"  {reason}" if reason.startswith(path) else f"  {path}: {reason}", err=True)
    sys.exit(1)


class LazyBar:
    """A click progress bar that appears on the first report, when the amount of work is known."""

    def __init__(self, label: str):
        self.label, self.first, self.text = label, 0, ""
        self.bar: ProgressBar[int] | None = None

    def __call__(self, done: int, total: int, text: str = "") -> None:
        if self.bar is None:  # counts from the first report, so a resumed run's ETA reflects this session
            self.first = done - 1
            self.bar = click.progressbar(
                length=total - self.first,
                label=self.label,
                show_eta=True,
                show_pos=True,
                item_show_func=lambda _: self.text,
            )
        self.text = text
        self.bar.update(done - self.first - self.bar.pos)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None and not self.bar.finished:
            self.bar.finished = True
            self.bar.render_finish()


def run_evaluation_options(net: str):
    """--model RUN, --split valid|test and --data of `ssc evaluate lnet|snet`."""

    def decorate(command):
        command = click.option(
            "--data",
            "data_dir",
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            help="Cohort folder, if it moved since training (default: the run's).",
        )(command)
        command = click.option(
            "--split",
            default="valid",
            show_default=True,
            type=click.Choice(["valid", "test"]),
            help="Which of the run's patients to evaluate: its validation fold or the test set.",
        )(command)
        return click.option(
            "--model",
            "run",
            required=True,
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            help=f"An {net} run folder (e.g. runs/{net.lower().replace('-', '')}/fold0); its best checkpoint is used.",
        )(command)

    return decorate
