"""Quality warnings of one scan's cascade: signs that a result may not mean what it says (the scan does not hold
the lungs, the folds disagree, the values are not those of an inspiratory chest CT in HU, the scores contradict
each other). Each check is a small pure function on plain numbers; `check_scan` runs them all.

The limits are settings (`QualityLimits`, `ssc cascade --set quality.<name>=<value>`), deliberately wide by default:
a warning should mark a result a reader must look at, not every unusual one. Why each default:
- edge_mm 10: L1 (origin of the great vessels) lies 2-4 cm below the lung apex and L5 (1 cm above the right
  hemidiaphragm) several cm above the costophrenic recesses, so a level within 1 cm of the scan's first or last
  slice means the scan stops inside the lungs (or the L-Net was pushed against the scan's end).
- level_fold_mm 10: the method places levels to about a centimetre (L5 is defined as 1 cm above the diaphragm,
  incremental HRCT has 10 mm between slices); folds further apart than that point at different anatomy.
- min_level_gap_mm 10: adjacent Goh levels are 2-5 cm apart in adults (L4 halves the 6-8 cm from L3 to L5);
  closer than 1 cm, two levels sit on the same anatomy.
- lung_ml 1500..9000: an inspiratory adult CT, even with severe restriction, holds more than 1.5 L of lung, and
  none more than 9 L (beyond the largest total lung capacity): outside, the scan is an expiration, a partial scan,
  a spacing in the wrong unit or a failed lung mask.
- lung_hu -950..-500: the mean inspiratory lung is about -850..-700 HU, fibrosis raises it by a few tens to a
  hundred or two; above -500 HU the scan is an expiration (or the mask took in consolidation or soft tissue),
  below -950 HU the mask holds air outside the body or the values are not in HU.
- max_slice_mm 5: Goh scoring reads thin-section CT; beyond the thickest routine chest reconstruction (5 mm)
  partial volume blurs ground glass and reticulation, and a level's nearest slice may lie 2.5 mm or more away.
- score_step 5 (the tolerance of the TOT checks): clinicians score in 5 % steps, so TOT may miss
  max(GG, RET) <= TOT <= GG + RET by up to one step before the three scores contradict each other.
- score_fold_sd 10: two rounding steps, about twice the paper's MAE (4.5-5.9 %): folds that spread more disagree
  by more than the method's own error.
- clip_pp 5: a regression head trained on many healthy levels puts some a few points below 0 as a matter of course
  (the tiny S-Net, trained whole, puts clean phantom levels at -3.5 %); an output more than one 5 % scoring step
  outside 0..100 % is one that the shown (and rounded) score hides. The unbounded value stays under `raw`; set 0 to
  be told of every clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sscjax.configs import from_dict, setting
from sscjax.configs.text import assign
from sscjax.domain import LEVEL_NAMES, SCORE_STEP, SCORES
from sscjax.errors import ConfigError

QUALITY = "quality"  # the table of the limits in --set quality.<name>=<value>


@dataclass(frozen=True)
class QualityLimits:
    """The limits of the quality checks (see the module docstring for why each default)."""

    edge_mm: float = setting(
        10.0, "a level this close to the scan's first or last slice, mm: coverage warning", minimum=0
    )
    level_fold_mm: float = setting(10.0, "L-Net folds further apart than this on a level (max - min), mm", minimum=0)
    min_level_gap_mm: float = setting(10.0, "adjacent levels closer than this sit on the same anatomy, mm", minimum=0)
    lung_ml: tuple[float, float] = setting((1500.0, 9000.0), "[min, max] lung volume of an inspiratory chest CT, mL")
    lung_hu: tuple[float, float] = setting((-950.0, -500.0), "[min, max] mean lung value of an inspiratory CT, HU")
    max_slice_mm: float = setting(5.0, "the widest slice spacing the texture scores are meant for, mm", minimum=0)
    score_step: float = setting(float(SCORE_STEP), "how far TOT may miss max(GG, RET)..GG + RET, %", minimum=0)
    score_fold_sd: float = setting(10.0, "SD between the S-Net folds beyond which they disagree, %", minimum=0)
    clip_pp: float = setting(
        5.0, "an output further outside 0..100 % than this was clipped, percentage points", minimum=0
    )


def quality_limits(assignments: Sequence[str] = ()) -> QualityLimits:
    """The default limits changed by `quality.<name>=<value>` assignments (--set); ConfigError naming a bad one."""
    others = [a for a in assignments if not a.startswith(f"{QUALITY}.")]
    if others:
        raise ConfigError(f"--set {others[0]}: the cascade takes {QUALITY}.* settings only")
    return from_dict(QualityLimits, assign({}, assignments).get(QUALITY, {}), QUALITY)


@dataclass(frozen=True)
class QualityWarning:
    """One warning: a stable lower_snake `code`, a message naming the value and its limit, the level (1..5) it
    concerns if it concerns one."""

    code: str
    message: str
    level: int | None = None

    def to_json(self) -> dict:
        return {"code": self.code, **({} if self.level is None else {"level": self.level}), "message": self.message}


@dataclass(frozen=True)
class ScanFacts:
    """What the checks look at, as the cascade has it: levels (world mm, L1..L5) and their nearest slices, the
    world z of the scan's lowest and highest slice, slice spacing, lung volume and mean HU, every fold's levels
    (F_L, 5) and bounded scores (F_S, 5, 3) in % (one row each when there is one fold or the levels were given),
    and the (5, 3) mean unbounded outputs in % that the shown scores are clipped from."""

    levels_mm: np.ndarray
    slice_index: np.ndarray
    z_range_mm: tuple[float, float]
    slice_mm: float
    lung_ml: float
    lung_hu: float
    fold_levels_mm: np.ndarray
    fold_scores: np.ndarray
    raw_scores: np.ndarray


def lung_stats(hu: np.ndarray, mask: np.ndarray, voxel_mm3: float) -> tuple[float, float]:
    """(lung volume in mL, mean HU inside the lungs; NaN without lung) of a volume and its boolean lung mask,
    summed in place (no copy of the lung voxels: a thin-slice CT holds hundreds of millions)."""
    count = int(np.count_nonzero(mask))
    mean = float(np.sum(hu, where=mask, dtype=np.float64)) / count if count else float("nan")
    return count * voxel_mm3 / 1000.0, mean


def levels_at_edge(
    levels_mm: np.ndarray, z_range_mm: tuple[float, float], limit_mm: float = QualityLimits.edge_mm
) -> list[QualityWarning]:
    """Levels within `limit_mm` of the scan's lowest or highest slice: the scan may not cover apex to base."""
    bottom, top = z_range_mm
    found = []
    for k, z in enumerate(np.asarray(levels_mm, float)):
        end, distance = min((("top", top - z), ("bottom", z - bottom)), key=lambda e: e[1])
        if distance < limit_mm:
            found.append(
                QualityWarning(
                    "level_at_scan_edge",
                    f"{LEVEL_NAMES[k]} lies {distance:.1f} mm from the "
                    f"{end} slice of the scan (limit {limit_mm:g} mm): the scan may not cover the "
                    "lungs from apex to base",
                    k + 1,
                )
            )
    return found


def level_fold_disagreement(
    fold_levels_mm: np.ndarray, slice_mm: float, limit_mm: float = QualityLimits.level_fold_mm
) -> list[QualityWarning]:
    """Levels that the L-Net folds place more than `limit_mm` apart (max - min); needs two folds or more."""
    folds = np.asarray(fold_levels_mm, float)
    if len(folds) < 2:
        return []
    apart = folds.max(axis=0) - folds.min(axis=0)
    return [
        QualityWarning(
            "level_folds_disagree",
            f"the {len(folds)} L-Net folds put {LEVEL_NAMES[k]} "
            f"{apart[k]:.1f} mm ({apart[k] / slice_mm:.1f} slices) apart (limit {limit_mm:g} mm)",
            int(k) + 1,
        )
        for k in np.flatnonzero(apart > limit_mm)
    ]


def level_order(
    levels_mm: np.ndarray, slice_index: np.ndarray, min_gap_mm: float = QualityLimits.min_level_gap_mm
) -> list[QualityWarning]:
    """Adjacent levels out of anatomical order (L1 highest), or closer than `min_gap_mm` or on one slice."""
    z, index = np.asarray(levels_mm, float), np.asarray(slice_index)
    found = []
    for k in range(len(z) - 1):
        upper, lower, gap = LEVEL_NAMES[k], LEVEL_NAMES[k + 1], z[k] - z[k + 1]
        if gap <= 0:
            found.append(
                QualityWarning(
                    "levels_out_of_order",
                    f"{lower} lies {-gap:.1f} mm above {upper}; the levels must go down the body from L1 to L5",
                    k + 2,
                )
            )
        elif gap < min_gap_mm or index[k] == index[k + 1]:
            same = f", both on slice {index[k]}" if index[k] == index[k + 1] else ""
            found.append(
                QualityWarning(
                    "levels_too_close",
                    f"{upper} and {lower} are {gap:.1f} mm apart{same} (limit {min_gap_mm:g} mm)",
                    k + 2,
                )
            )
    return found


def lung_volume(lung_ml: float, limits_ml: tuple[float, float] = QualityLimits.lung_ml) -> list[QualityWarning]:
    """A lung volume outside `limits_ml`: not an inspiratory chest CT (or the mask or spacing is wrong)."""
    lo, hi = limits_ml
    if lo <= lung_ml <= hi:
        return []
    return [
        QualityWarning(
            "lung_volume_implausible",
            f"lung volume {lung_ml:.0f} mL lies outside {lo:.0f}..{hi:.0f} "
            "mL: an expiration, a partial scan, a wrong spacing or a failed lung mask?",
        )
    ]


def lung_density(lung_hu: float, limits_hu: tuple[float, float] = QualityLimits.lung_hu) -> list[QualityWarning]:
    """A mean lung HU outside `limits_hu`: expiration, contrast or consolidation, or values not in HU (NaN, no
    lung at all, is the volume check's to report)."""
    lo, hi = limits_hu
    if np.isnan(lung_hu) or lo <= lung_hu <= hi:
        return []
    return [
        QualityWarning(
            "lung_hu_implausible",
            f"mean lung value {lung_hu:.0f} HU lies outside {lo:g}..{hi:g} HU: "
            "an expiration or contrast scan, not a chest CT, or values not in HU?",
        )
    ]


def slice_thickness(slice_mm: float, limit_mm: float = QualityLimits.max_slice_mm) -> list[QualityWarning]:
    """Slices spaced wider than `limit_mm`: thicker than the thin-section CT that Goh scoring reads."""
    if slice_mm <= limit_mm:
        return []
    return [
        QualityWarning(
            "thick_slices",
            f"slice spacing {slice_mm:.2f} mm exceeds {limit_mm:g} mm: the scores are meant for thin-section CT",
        )
    ]


def tot_consistency(scores: np.ndarray, step: float = SCORE_STEP) -> list[QualityWarning]:
    """Levels whose TOT misses max(GG, RET) <= TOT <= GG + RET by more than `step` (TOT is the union of both)."""
    found = []
    for k, (tot, gg, ret) in enumerate(np.asarray(scores, float)):
        if tot < max(gg, ret) - step:
            found.append(
                QualityWarning(
                    "tot_below_max_pattern",
                    f"{LEVEL_NAMES[k]}: TOT {tot:.1f} % is more than "
                    f"{step:g} % below max(GG, RET) = {max(gg, ret):.1f} %",
                    k + 1,
                )
            )
        elif tot > gg + ret + step:
            found.append(
                QualityWarning(
                    "tot_above_pattern_sum",
                    f"{LEVEL_NAMES[k]}: TOT {tot:.1f} % is more than {step:g} % above GG + RET = {gg + ret:.1f} %",
                    k + 1,
                )
            )
    return found


def score_fold_spread(fold_scores: np.ndarray, limit: float = QualityLimits.score_fold_sd) -> list[QualityWarning]:
    """Levels where a score's SD between the S-Net folds exceeds `limit` %; needs two folds or more."""
    folds = np.asarray(fold_scores, float)
    if len(folds) < 2:
        return []
    sd = folds.std(axis=0)
    found = []
    for k in np.flatnonzero((sd > limit).any(axis=1)):
        spread = ", ".join(f"{p} {sd[k, j]:.1f} %" for j, p in enumerate(SCORES) if sd[k, j] > limit)
        found.append(
            QualityWarning(
                "score_folds_disagree",
                f"{LEVEL_NAMES[k]}: the {len(folds)} S-Net folds spread {spread} (SD; limit {limit:g} %)",
                int(k) + 1,
            )
        )
    return found


def clipped_outputs(raw_scores: np.ndarray, limit_pp: float = QualityLimits.clip_pp) -> list[QualityWarning]:
    """Levels whose unbounded output (mean of the folds) lies more than `limit_pp` outside 0..100 %: the shown
    score is clipped from it."""
    raw = np.asarray(raw_scores, float)
    outside = (raw < -limit_pp) | (raw > 100.0 + limit_pp)
    return [
        QualityWarning(
            "output_clipped",
            f"{LEVEL_NAMES[k]}: the S-Net put out "
            + ", ".join(f"{p} {raw[k, j]:.1f} %" for j, p in enumerate(SCORES) if outside[k, j])
            + f", shown clipped to 0..100 % (limit {limit_pp:g} percentage points outside; kept under raw)",
            int(k) + 1,
        )
        for k in np.flatnonzero(outside.any(axis=1))
    ]


def check_scan(facts: ScanFacts, limits: QualityLimits = QualityLimits()) -> list[QualityWarning]:
    """Every check on one scan's cascade, in a fixed order: scan coverage and levels, lungs, slices, scores."""
    scores = np.asarray(facts.fold_scores, float).mean(axis=0)
    return [
        *levels_at_edge(facts.levels_mm, facts.z_range_mm, limits.edge_mm),
        *level_fold_disagreement(facts.fold_levels_mm, facts.slice_mm, limits.level_fold_mm),
        *level_order(facts.levels_mm, facts.slice_index, limits.min_level_gap_mm),
        *lung_volume(facts.lung_ml, limits.lung_ml),
        *lung_density(facts.lung_hu, limits.lung_hu),
        *slice_thickness(facts.slice_mm, limits.max_slice_mm),
        *tot_consistency(scores, limits.score_step),
        *score_fold_spread(facts.fold_scores, limits.score_fold_sd),
        *clipped_outputs(facts.raw_scores, limits.clip_pp),
    ]
