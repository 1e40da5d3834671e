"""Our heat maps (`replace`) against the authors' (`authors`) on a finished demo: the same S-Net, the same level
slices of the test scans (the cascade's, from the demo's results), both modes at the run's settings. Per pattern it
prints, as JSON: the correlation of the two modes' maps inside the lung; for each mode the agreement of its derived
scores with the S-Net's own scores (MAE and Pearson r: the paper's explainability measure), how well the map finds
the phantom's true lesions inside the lung (ROC AUC of -Delta P, threshold-free; Dice of the derived segmentation)
and the seconds per slice.

    ssc demo --out /tmp/demo && python benchmarks/heatmap_modes.py /tmp/demo
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from common import print_report
from scipy import stats

from sscjax import cascade, explain
from sscjax.data.slices import resize_slices
from sscjax.domain import SCORES
from sscjax.io import read_image, read_scan

MODES = ("replace", "authors")
LESION_BITS = {"TOT": 3, "GG": 1, "RET": 2}  # truth/lesions: 1 ground glass, 2 reticulation, 3 both


def true_lesions(demo: Path, scan_id: str, index: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S, 3) bool: the phantom's lesion bits of each pattern on the given canonical slices, at model size."""
    bits = read_image(demo / "data" / "truth" / "lesions" / f"{scan_id}.mha", volume=True).array[index].astype(int)
    masks = np.stack([(bits & LESION_BITS[s]) > 0 for s in SCORES], axis=-1).astype(np.float32)
    return np.stack([resize_slices(masks[..., c], size, order=0) for c in range(len(SCORES))], axis=-1) > 0.5


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of `scores` for `positive` (Mann-Whitney U over ranks); nan without both classes."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = stats.rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else float("nan")


def level_slices(demo: Path, scan_id: str) -> np.ndarray:
    """The canonical slice index of each level the demo's cascade chose for a test scan."""
    levels = json.loads((demo / "results" / scan_id / "scores.json").read_text(encoding="utf-8"))["levels"]
    return np.asarray([lv["slice_index"] for lv in levels])


def explain_mode(demo: Path, models, mode: str, scan_ids: list[str]) -> dict:
    """Every test scan's five level slices explained in one mode: maps, lungs, S-Net and derived scores, truth."""
    settings = dataclasses.replace(models.snets[0].config.explain, occlusion=mode)
    explained, truth, seconds = [], [], 0.0
    for scan_id in scan_ids:
        index = level_slices(demo, scan_id)
        scan = read_scan(demo / "data" / "scans" / f"{scan_id}.mha")
        start = time.perf_counter()
        found = explain.explain_scan(scan, models, slice_index=index, settings=settings)
        seconds += time.perf_counter() - start
        explained += found.explanations
        truth.append(true_lesions(demo, scan_id, index, found.explanations[0].lung.shape[0]))
    fields = {"maps": "maps", "lungs": "lung", "snet": "scores", "derived": "derived", "segmentation": "segmentation"}
    return {key: np.stack([getattr(e, name) for e in explained]) for key, name in fields.items()} | {
        "truth": np.concatenate(truth),
        "seconds_per_slice": seconds / len(explained),
    }


def mode_figures(found: dict) -> dict:
    """Per pattern: derived against S-Net scores, and the maps against the true lesions inside the lung."""
    lung = found["lungs"]
    figures = {}
    for c, name in enumerate(SCORES):
        snet, derived = found["snet"][:, c], found["derived"][:, c]
        truth = found["truth"][..., c][lung]
        figures[name] = {
            "derived_vs_snet_mae_pp": float(np.abs(derived - snet).mean()),
            "derived_vs_snet_r": float(stats.pearsonr(derived, snet)[0]),
            "lesion_auc": auc(-found["maps"][..., c][lung], truth),
            "lesion_dice": dice(found["segmentation"][..., c][lung], truth),
        }
    return figures | {"seconds_per_slice": found["seconds_per_slice"]}


def map_correlation(a: dict, b: dict) -> dict[str, float]:
    """Pearson r between the two modes' maps over every lung pixel of every slice (the lung is the same)."""
    lung = a["lungs"]
    return {
        name: float(stats.pearsonr(a["maps"][..., c][lung], b["maps"][..., c][lung])[0])
        for c, name in enumerate(SCORES)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo", type=Path, help="the output folder of a finished `ssc demo`")
    parser.add_argument("--scans", type=int, help="only the first N test scans")
    args = parser.parse_args()
    scan_ids = sorted(p.parent.name for p in (args.demo / "results").glob("*/scores.json"))[: args.scans]
    models = cascade.load_models([], sorted((args.demo / "runs" / "snet").glob("fold*")))
    found = {mode: explain_mode(args.demo, models, mode, scan_ids) for mode in MODES}
    figures = {mode: mode_figures(found[mode]) for mode in MODES}
    figures |= {"map_correlation": map_correlation(*found.values()), "slices": len(found["replace"]["maps"])}
    print_report("heatmap_modes", {"demo": str(args.demo), "scans": scan_ids}, figures)


if __name__ == "__main__":
    main()
