"""The paper's network choice (its Figure 3) on our data: L-Net variants and S-Net backbones, each trained on fold 0
of one phantom cohort and scored on its test split beside the baselines (the mean level position; predict-the-mean
scores). Prints one JSON object and writes the table as Markdown (--table).

    ssc phantom pnet --patients 100 --preset small --seed 0       # the cohort of `ssc demo --networks paper`
    python benchmarks/networks.py --data pnet --workdir runs_networks --table networks.md

Each variant trains into WORKDIR/<variant>/ and resumes there, so the script can be stopped and run again, or given
--only to train some variants now and the rest later: a finished run is only evaluated. The paper's two networks
use the settings of `ssc demo --networks paper`; their runs can be copied from a demo (DEMO/runs/<net>/fold0 to
WORKDIR/<variant>/<net>/fold0), and then their training time is read from the run's log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import print_report
from sscjax.cli.demo import NETWORK_CHOICES

from sscjax import configs, networks, runs
from sscjax.data import ensure_splits, load_cohort
from sscjax.domain import SCORES
from sscjax.lnet import mean_position_baseline
from sscjax.models import abstract_model, count_parameters
from sscjax.snet import mean_score_baseline

PAPER = NETWORK_CHOICES["paper"]
TIMING_FILE = "benchmark_timing.json"


@dataclass(frozen=True)
class Variant:
    """One row: a network's preset, the changes that make the variant and the preset's network options it drops
    (options of another architecture)."""

    key: str
    net: str
    title: str
    preset: str
    changes: dict = field(default_factory=dict)
    drop_options: tuple[str, ...] = ()


VARIANTS = (
    Variant("vgg11_3d", "lnet", "VGG11-3D (the paper's)", "small", PAPER.changes["lnet"]),
    Variant("vgg16_3d", "lnet", "VGG16-3D", "small", {**PAPER.changes["lnet"], "model": {"name": "vgg16_3d"}}),
    Variant("levelnet", "lnet", "slice-wise heat-map net (the demo's stand-in)", "tiny"),
    Variant("convnext_tiny", "snet", "ConvNeXt-T (the paper's), random weights", "small", PAPER.changes["snet"]),
    Variant(
        "efficientnet_lite0_scratch",
        "snet",
        "EfficientNet-Lite0, random weights, the ConvNeXt-T's recipe",
        "small",
        configs.merge(PAPER.changes["snet"], {"model": {"name": "efficientnet_lite0"}}),
        drop_options=("stochastic_depth_prob",),
    ),
    Variant("efficientnet_lite0", "snet", "EfficientNet-Lite0, ImageNet weights (the demo's stand-in)", "tiny"),
)


def variant_config(variant: Variant, data: Path):
    """The variant's settings on fold 0 of `data`."""
    config = networks.fold_config(variant.net, variant.preset, data, variant.changes)
    options = {k: v for k, v in config.model.kwargs.items() if k not in variant.drop_options}
    return dataclasses.replace(config, model=dataclasses.replace(config.model, kwargs=options))


def parameters(config) -> int:
    """Trainable parameters of the network a config names (counted on shapes, nothing computed)."""
    return count_parameters(abstract_model(config.model.name, **config.model.kwargs))


def logged_steps(run_dir: Path) -> list[dict]:
    """The training rows of a run's log (none before it starts)."""
    log = run_dir / runs.LOG_FILE
    lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    return [row for row in map(json.loads, lines) if "train/loss" in row]


def log_span_seconds(rows: list[dict]) -> float:
    """Seconds from the first to the last logged step, scaled to all the steps (validations included)."""
    first, last = rows[0], rows[-1]
    return (last["time"] - first["time"]) * last["step"] / max(last["step"] - first["step"], 1)


def train_variant(variant: Variant, config, workdir: Path) -> tuple[Path, float, str]:
    """Train (or resume, or find finished) the variant's run with its settings `config`; its folder and its training
    seconds with where they come from: the wall clock of this call when it trained the whole run, else the run's log
    (a run resumed or copied from a demo)."""
    runs_dir = workdir / variant.key
    run_dir = runs.default_run_dir(runs_dir, variant.net, 0)
    timing = run_dir / TIMING_FILE
    if timing.is_file():
        return run_dir, json.loads(timing.read_text(encoding="utf-8"))["seconds"], "wall clock"
    started_before = bool(logged_steps(run_dir))
    start = time.perf_counter()
    networks.network(variant.net).train(config, runs_dir, run_dir, resume=True)
    if started_before:
        return run_dir, log_span_seconds(logged_steps(run_dir)), "the run's log"
    seconds = time.perf_counter() - start
    timing.write_text(json.dumps({"seconds": seconds}), encoding="utf-8")
    return run_dir, seconds, "wall clock"


def row(variant: Variant, data: Path, workdir: Path) -> dict:
    """The variant trained and evaluated on the test split: parameters, training time, test MAE."""
    config = variant_config(variant, data)
    run_dir, seconds, timed = train_variant(variant, config, workdir)
    metrics = networks.network(variant.net).evaluate(run_dir, "test")
    mae = {"levels_mm": metrics["all"]["mae_mm"]} if variant.net == "lnet" else {p: metrics[p]["mae"] for p in SCORES}
    return {
        "variant": variant.key,
        "net": variant.net,
        "title": variant.title,
        "preset": variant.preset,
        "model": config.model.name,
        "parameters": parameters(config),
        "steps": config.train.steps,
        "training_min": seconds / 60,
        "training_time": timed,
        "test_mae": mae,
    }


def markdown(rows: list[dict], baselines: dict) -> str:
    """The table: one row per variant, the baselines in the last rows."""
    lines = [
        "| network | net | parameters | steps | training (min) | test MAE: levels (mm) or TOT / GG / RET (%) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        mae = r["test_mae"]
        figure = f"{mae['levels_mm']:.2f}" if r["net"] == "lnet" else " / ".join(f"{mae[p]:.2f}" for p in SCORES)
        lines.append(
            f"| {r['title']} | {r['net']} | {r['parameters'] / 1e6:.2f} M | {r['steps']} | {r['training_min']:.1f} | {figure} |"
        )
    snet = " / ".join(f"{baselines['snet'][p]:.2f}" for p in SCORES)
    lines.append(f"| mean level position (baseline) | lnet | | | | {baselines['lnet_mm']:.2f} |")
    lines.append(f"| predict-the-mean (baseline) | snet | | | | {snet} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a phantom cohort (ssc phantom)")
    parser.add_argument("--workdir", type=Path, default=Path("runs_networks"))
    parser.add_argument("--only", nargs="*", choices=[v.key for v in VARIANTS], help="train these variants only")
    parser.add_argument("--table", type=Path, help="also write the table here as Markdown")
    args = parser.parse_args()

    cohort = load_cohort(args.data)
    splits = ensure_splits(cohort)
    train_ids = splits.fold(0)[0]
    chosen = [v for v in VARIANTS if not args.only or v.key in args.only]
    rows = [row(v, args.data, args.workdir) for v in chosen]
    baselines = {
        "lnet_mm": mean_position_baseline(cohort, train_ids, splits.test),
        "snet": mean_score_baseline(cohort, train_ids, splits.test),
    }
    if args.table:
        args.table.write_text(markdown(rows, baselines))
    inputs = {"data": str(args.data), "patients": len(cohort.scan_paths), "test_patients": len(splits.test)}
    print_report("networks", inputs, {"rows": rows, "baselines": baselines})


if __name__ == "__main__":
    main()
