"""`ssc demo`: the whole method on a small synthetic cohort, on a laptop CPU, in a few minutes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import LazyBar

if TYPE_CHECKING:
    from sscjax.cascade import Models
    from sscjax.data import Cohort, Splits


def _stage(title: str) -> float:
    click.secho(f"\n== {title}", bold=True)
    return time.perf_counter()


def _done(start: float) -> None:
    click.echo(f"   ({time.perf_counter() - start:.0f} s)")


@dataclass(frozen=True)
class DemoNetworks:
    """The networks a demo trains: per network its preset, the changes the demo makes to it (a shorter schedule,
    the S-Net's starting weights) and a title for the progress; the cohort size and folder the demo defaults to;
    how many validation patients the heat-map thresholds are calibrated on (all when not set: a large S-Net's heat
    maps take seconds a slice on a CPU)."""

    presets: dict[str, str]
    changes: dict[str, dict]
    titles: dict[str, str]
    patients: int
    out: Path
    calibration_patients: int | None = None


NETWORK_CHOICES = {
    "stand-ins": DemoNetworks(
        presets={"lnet": "tiny", "snet": "tiny"},
        changes={"lnet": {}, "snet": {}},
        titles={
            "lnet": "L-Net (finds the five levels; tiny preset: the slice-wise heat-map net)",
            "snet": "S-Net (EfficientNet-Lite0 from ImageNet weights, scores TOT/GG/RET)",
        },
        patients=40,
        out=Path("ssc-demo"),
    ),
    "paper": DemoNetworks(
        presets={"lnet": "small", "snet": "small"},
        changes={"lnet": {}, "snet": {"pretrained": "none", "train": {"steps": 800, "valid_every": 200}}},
        titles={
            "lnet": "L-Net (the paper's VGG11-3D, small preset)",
            "snet": "S-Net (the paper's ConvNeXt-T, small preset from random weights, 800 steps)",
        },
        patients=100,
        out=Path("ssc-demo-paper"),
        calibration_patients=6,
    ),
}


def demo_config(net: str, choice: DemoNetworks, data: Path, seed: int):
    """The settings of the demo's `net` run: `choice`'s preset and changes (with the preset's scratch settings when
    it starts from random weights), fold 0 of `data`, training seed `seed`."""
    from sscjax import configs, networks

    changes = configs.merge({"train": {"seed": seed}}, choice.changes[net])
    return networks.fold_config(net, choice.presets[net], data, changes)


def _train(net: str, choice: DemoNetworks, data: Path, runs_dir: Path, seed: int):
    """Train fold 0 of `net` as `choice` says, with training seed `seed` (resuming a run an earlier demo left
    unfinished)."""
    from sscjax import networks, runs

    config = demo_config(net, choice, data, seed)
    run_dir = runs.default_run_dir(runs_dir, net, 0)
    preparing, training = LazyBar("   prepare"), LazyBar("   train")

    def progress(info) -> None:
        training(info.step, info.total, "" if info.loss is None else f"loss {info.loss:.3g}")

    try:
        networks.network(net).train(
            config, runs_dir, run_dir, resume=True, progress=progress, prepare_progress=preparing
        )
    finally:
        preparing.close()
        training.close()
    return run_dir


@click.command()
@click.option(
    "--networks",
    "choice_name",
    type=click.Choice(list(NETWORK_CHOICES)),
    default="stand-ins",
    show_default=True,
    help="stand-ins: the tiny presets (minutes); paper: the paper's VGG11-3D and ConvNeXt-T at their small presets "
    "(about 32 minutes on 2 CPU cores).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the cohort, runs and results (an unfinished demo there is continued) [default: ssc-demo, with "
    "--networks paper ssc-demo-paper].",
)
@click.option(
    "--patients",
    type=click.IntRange(min=12),
    default=None,
    help="Patients in the synthetic cohort (20 % test, the rest in 4 folds) [default: 40, with --networks paper 100].",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the synthetic cohort and of both trainings."
)
def demo(choice_name: str, out: Path | None, patients: int | None, seed: int) -> None:
    """Run the whole method on a synthetic cohort: phantoms -> L-Net and S-Net training (the stand-ins' tiny
    presets, the S-Net from the real ImageNet weights of EfficientNet-Lite0; or the paper's networks) -> cascade
    and heat maps on held-out scans -> agreement statistics on the test split, beside the predict-the-mean
    baseline."""
    choice = NETWORK_CHOICES[choice_name]
    out = choice.out if out is None else out
    patients = choice.patients if patients is None else patients
    data, runs_dir, results, stats = out / "data", out / "runs", out / "results", out / "evaluation"
    begin = time.perf_counter()

    t = _stage(f"1/6 Synthetic cohort: {patients} patients -> {data}")
    cohort, splits = _make_cohort(data, patients, seed)
    train_ids = splits.fold(0)[0]
    _done(t)

    t = _stage(f"2/6 {choice.titles['lnet']}, fold 0")
    lnet_run = _train("lnet", choice, data, runs_dir, seed)
    _done(t)

    t = _stage(f"3/6 {choice.titles['snet']}, fold 0")
    snet_run = _train("snet", choice, data, runs_dir, seed)
    _done(t)

    t = _stage(f"4/6 Cascade on the {len(splits.test)} test scans -> {results}")
    models, pred_csv = _run_cascade(cohort, splits.test, lnet_run, snet_run, results)
    _done(t)

    on = f"{choice.calibration_patients} validation patients'" if choice.calibration_patients else "validation"
    t = _stage(f"5/6 Heat maps: thresholds calibrated on the {on} slices, then one test scan explained")
    calibration_dir, explained = _explain(
        cohort, splits.test[0], snet_run, models, results, choice.calibration_patients
    )
    _done(t)

    t = _stage(f"6/6 Agreement on the test split -> {stats}")
    levels, level_baseline = _evaluate(cohort, data, train_ids, splits.test, pred_csv, lnet_run, stats)
    _done(t)

    _summary(
        out,
        lnet_run,
        snet_run,
        results,
        explained,
        calibration_dir,
        stats,
        levels,
        level_baseline,
        time.perf_counter() - begin,
    )


def _make_cohort(data: Path, patients: int, seed: int) -> tuple[Cohort, Splits]:
    """The synthetic cohort in `data` (written unless an earlier demo left it complete) and its splits, with the
    sizes of fold 0 and the test split echoed."""
    from sscjax import phantom
    from sscjax.data import ensure_splits, load_cohort

    if not (data / "scores.csv").is_file():
        with click.progressbar(length=patients, label="   phantoms", show_pos=True) as bar:
            phantom.write_cohort(data, patients, "small", seed, overwrite=True, progress=lambda case: bar.update(1))
    cohort = load_cohort(data)
    splits = ensure_splits(cohort)
    train_ids, valid_ids = splits.fold(0)
    click.echo(f"   {len(train_ids)} training, {len(valid_ids)} validation, {len(splits.test)} test patients")
    return cohort, splits


def _run_cascade(
    cohort: Cohort, test_ids: list[str], lnet_run: Path, snet_run: Path, results: Path
) -> tuple[Models, Path]:
    """The cascade of the two runs on each test scan, written to `results`; the loaded models and the CSV of all
    the scans' predicted scores."""
    from sscjax import cascade
    from sscjax.io import read_scan

    models = cascade.load_models([lnet_run], [snet_run])
    with click.progressbar(list(test_ids), label="   scans", show_pos=True) as scans:
        for sid in scans:
            cascade.write_result(cascade.run_cascade(read_scan(cohort.scan_paths[sid]), models), results)
    return models, cascade.collect_scores(results, models.records)


def _explain(
    cohort: Cohort, scan_id: str, snet_run: Path, models: Models, results: Path, patients: int | None
) -> tuple[Path, Path]:
    """Heat-map thresholds calibrated on the S-Net run's validation slices (of its first `patients` patients), then
    scan `scan_id` explained into `results`; the calibration's folder and the explanation's."""
    from sscjax import explain
    from sscjax.io import read_scan

    calibrating = LazyBar("   calibrate")
    _calibration, calibration_dir = explain.calibrate_run(snet_run, "valid", progress=calibrating, patients=patients)
    calibrating.close()
    found = explain.explain_scan(read_scan(cohort.scan_paths[scan_id]), models)
    return calibration_dir, explain.write_scan_explanation(found, results)


def _evaluate(
    cohort: Cohort, data: Path, train_ids: list[str], test_ids: list[str], pred_csv: Path, lnet_run: Path, stats: Path
) -> tuple[dict, float]:
    """The agreement with `data`/scores.csv of the cascade's test scores and of the predict-the-mean baseline's,
    reported into `stats`; returns the L-Net's test level errors and its predict-the-mean-position baseline (mm)."""
    from sscjax import lnet
    from sscjax.report import evaluate_csv

    from .evaluate import echo_report

    baseline_csv = _baseline_scores(cohort, train_ids, test_ids, stats / "baseline_predict_the_mean.csv")
    echo_report(*evaluate_csv(pred_csv, data / "scores.csv", baseline_csv, stats, only_predicted=True), stats)
    return lnet.evaluate_lnet(lnet_run, "test"), lnet.mean_position_baseline(cohort, train_ids, test_ids)


def _baseline_scores(cohort, train_ids, test_ids, path: Path) -> Path:
    """The predict-the-mean baseline: every test level scored with the training patients' mean score."""
    import pandas as pd

    from sscjax.domain import LEVELS, SCORES
    from sscjax.io import atomic_write
    from sscjax.snet import training_mean_scores

    mean = training_mean_scores(cohort, train_ids)
    rows = [{"scan_id": i, "level": k, **dict(zip(SCORES, mean))} for i in test_ids for k in LEVELS]
    with atomic_write(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.3f")
    return path


SUMMARY_FILE = "summary.json"


def _headline(metrics: dict, levels: dict, level_baseline: float, seconds: float) -> dict:
    """The figures the demo prints, as data: per pattern MAE, kappa, ICC and the baseline's MAE; the L-Net's."""
    from sscjax.domain import SCORES

    compare = metrics.get("compare", {})
    snet = {
        p: {
            "mae": metrics[p]["mae"],
            "kappa": metrics[p]["kappa"],
            "icc": metrics[p]["icc"],
            "baseline_mae": compare.get(p, {}).get("mean_b"),
        }
        for p in SCORES
    }
    return {
        "seconds": seconds,
        "snet": snet,
        "lnet": {"mae_mm": levels["all"]["mae_mm"], "baseline_mae_mm": level_baseline},
    }


def _summary(out, lnet_run, snet_run, results, explained, calibration_dir, stats, levels, level_baseline, seconds):
    import json

    from sscjax.io import write_json

    headline = _headline(
        json.loads((stats / "metrics.json").read_text(encoding="utf-8")), levels, level_baseline, seconds
    )
    summary = write_json(out / SUMMARY_FILE, headline)
    click.secho(f"\n== Done in {seconds / 60:.1f} min. Headline figures on the test split", bold=True)
    click.echo(
        f"   L-Net level error: {headline['lnet']['mae_mm']:.1f} mm MAE "
        f"(predict-the-mean-position baseline: {level_baseline:.1f} mm)"
    )
    click.echo("   S-Net via the cascade   MAE %   kappa    ICC   (baseline MAE %)")
    for p, m in headline["snet"].items():
        base = f"({m['baseline_mae']:.1f})" if m["baseline_mae"] is not None else ""
        click.echo(f"     {p:4s}                 {m['mae']:6.2f} {_num(m['kappa']):>7s} {_num(m['icc']):>6s}   {base}")
    click.echo("\nWhere everything is:")
    click.echo(f"   TensorBoard:    tensorboard --logdir {out / 'runs'}")
    click.echo(f"   runs:           {lnet_run}  {snet_run}")
    click.echo(
        f"   cascade:        {results}/<scan>/scores.json, montage.png, L1..L5.mha; all scans: {results / 'scores.csv'}"
    )
    click.echo(f"   heat maps:      {explained} (PNG overlays, Delta P maps); calibration: {calibration_dir}")
    click.echo(f"   statistics:     {stats / 'metrics.md'} (+ .json, .csv, Bland-Altman and correlation PNGs)")
    click.echo(f"   headline:       {summary}")


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"
