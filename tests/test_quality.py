"""Quality warnings: every check fires on a case made to trip it, stays quiet just inside its limit, and says the
value and the limit; `check_scan` runs them all on what the cascade has."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sscjax import quality
from sscjax.errors import ConfigError

LEVELS = np.array([60.0, 30.0, -5.0, -40.0, -75.0])  # L1..L5, world mm, 25-35 mm apart
INDEX = np.array([80, 70, 58, 47, 35])
Z_RANGE = (-220.0, 140.0)  # the scan's lowest and highest slice


def codes(warnings: list[quality.QualityWarning]) -> list[tuple[str, int | None]]:
    return [(w.code, w.level) for w in warnings]


def healthy_facts(**changes) -> quality.ScanFacts:
    """A scan that trips no check: phantom-like levels, 3 mm slices, 4 L of lung at -800 HU, two folds that agree."""
    folds = np.stack([LEVELS - 1.0, LEVELS + 1.0])
    scores = np.array([[20.0, 12.0, 10.0]] * 5)
    raw = scores + np.array([0.0, -4.9, 0.0])  # a GG output just under 0 by less than the limit is routine
    facts = quality.ScanFacts(
        LEVELS, INDEX, Z_RANGE, 3.0, 4000.0, -800.0, folds, np.stack([scores - 2, scores + 2]), raw
    )
    return dataclasses.replace(facts, **changes)


def test_a_plausible_scan_has_no_warning():
    assert quality.check_scan(healthy_facts()) == []


def test_a_level_at_the_scan_edge_is_named_with_its_distance_and_end():
    top = quality.levels_at_edge(LEVELS, (-220.0, 65.0))
    assert codes(top) == [("level_at_scan_edge", 1)]
    assert "L1 lies 5.0 mm from the top slice" in top[0].message and "limit 10 mm" in top[0].message
    bottom = quality.levels_at_edge(LEVELS, (-80.0, 140.0))
    assert codes(bottom) == [("level_at_scan_edge", 5)] and "L5 lies 5.0 mm from the bottom slice" in bottom[0].message
    assert quality.levels_at_edge(LEVELS, (-85.1, 70.1)) == []


def test_folds_that_place_a_level_too_far_apart_are_named():
    folds = np.stack([LEVELS, LEVELS, LEVELS + np.array([0, 0, 12.0, 0, 0])])
    found = quality.level_fold_disagreement(folds, 3.0)
    assert codes(found) == [("level_folds_disagree", 3)]
    assert "3 L-Net folds put L3 12.0 mm (4.0 slices) apart (limit 10 mm)" in found[0].message
    assert quality.level_fold_disagreement(np.stack([LEVELS, LEVELS + 9.9]), 3.0) == []


def test_one_fold_or_given_levels_cannot_disagree():
    assert quality.level_fold_disagreement((LEVELS + 50.0)[None], 3.0) == []


def test_levels_out_of_order_name_the_lower_level_and_how_far_above_it_lies():
    found = quality.level_order(LEVELS[[0, 2, 1, 3, 4]], INDEX)
    assert codes(found) == [("levels_out_of_order", 3)]
    assert found[0].message.startswith("L3 lies 35.0 mm above L2")
    assert quality.level_order(LEVELS, INDEX) == []


def test_levels_too_close():
    close = LEVELS.copy()
    close[3] = close[2] - 6.0
    found = quality.level_order(close, INDEX)
    assert codes(found) == [("levels_too_close", 4)]
    assert found[0].message == "L3 and L4 are 6.0 mm apart (limit 10 mm)"
    close[3] = close[2] - 10.0
    assert quality.level_order(close, INDEX) == []


def test_two_levels_on_one_slice_are_too_close_whatever_their_distance():
    index = INDEX.copy()
    index[1] = index[0]
    found = quality.level_order(LEVELS, index)
    assert codes(found) == [("levels_too_close", 2)] and "both on slice 80" in found[0].message


@pytest.mark.parametrize("ml,fires", [(1400.0, True), (1500.0, False), (9000.0, False), (9100.0, True)])
def test_lung_volume_outside_its_limits(ml, fires):
    found = quality.lung_volume(ml)
    assert codes(found) == ([("lung_volume_implausible", None)] if fires else [])
    if fires:
        assert f"{ml:.0f} mL" in found[0].message and "1500..9000 mL" in found[0].message


@pytest.mark.parametrize("hu,fires", [(-980.0, True), (-950.0, False), (-500.0, False), (-420.0, True)])
def test_mean_lung_hu_outside_its_limits(hu, fires):
    found = quality.lung_density(hu)
    assert codes(found) == ([("lung_hu_implausible", None)] if fires else [])
    if fires:
        assert f"{hu:.0f} HU" in found[0].message and "-950..-500 HU" in found[0].message


def test_no_lung_at_all_is_the_volume_checks_to_report():
    volume, hu = quality.lung_stats(np.zeros((2, 3, 3)), np.zeros((2, 3, 3), bool), 1.0)
    assert volume == 0.0 and np.isnan(hu)
    assert quality.lung_density(hu) == [] and codes(quality.lung_volume(volume)) == [("lung_volume_implausible", None)]


def test_lung_stats_are_the_volume_in_ml_and_the_mean_inside_the_mask():
    hu = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 900
    mask = hu % 3 == 0
    volume, mean = quality.lung_stats(hu, mask, 2.5)
    assert volume == pytest.approx(mask.sum() * 2.5 / 1000)
    assert mean == pytest.approx(hu[mask].mean())


def test_thick_slices():
    found = quality.slice_thickness(7.5)
    assert codes(found) == [("thick_slices", None)] and "7.50 mm exceeds 5 mm" in found[0].message
    assert quality.slice_thickness(5.0) == []


def test_tot_below_max_pattern_and_above_their_sum():
    scores = np.array(
        [
            [20.0, 12.0, 10.0],  # fine
            [10.0, 16.0, 2.0],  # TOT 6 below GG
            [30.0, 12.0, 10.0],  # TOT 8 above GG + RET
            [11.0, 16.0, 0.0],  # 5 below: within the rounding step
            [27.0, 12.0, 10.0],
        ]
    )  # 5 above: within
    found = quality.tot_consistency(scores)
    assert codes(found) == [("tot_below_max_pattern", 2), ("tot_above_pattern_sum", 3)]
    assert found[0].message == "L2: TOT 10.0 % is more than 5 % below max(GG, RET) = 16.0 %"
    assert found[1].message == "L3: TOT 30.0 % is more than 5 % above GG + RET = 22.0 %"


def test_score_folds_that_spread_too_far_are_named_per_level():
    scores = np.full((2, 5, 3), 20.0)
    scores[:, 3, 1] = [5.0, 30.0]  # GG on L4: SD 12.5
    scores[:, 3, 2] = [0.0, 22.0]  # RET on L4: SD 11
    scores[:, 1, 0] = [10.0, 30.0]  # TOT on L2: SD 10, at the limit
    found = quality.score_fold_spread(scores)
    assert codes(found) == [("score_folds_disagree", 4)]
    assert found[0].message == "L4: the 2 S-Net folds spread GG 12.5 %, RET 11.0 % (SD; limit 10 %)"
    assert quality.score_fold_spread(scores[:1]) == []


def test_check_scan_reports_every_problem_of_one_scan_in_order():
    folds = np.stack([LEVELS, LEVELS + np.array([0, 0, 0, 0, 15.0])])
    bad = np.array([[20.0, 12.0, 10.0]] * 5)
    bad[0] = [40.0, 5.0, 5.0]
    facts = healthy_facts(
        z_range_mm=(-80.0, 140.0),
        slice_mm=8.0,
        lung_ml=900.0,
        lung_hu=-450.0,
        fold_levels_mm=folds,
        fold_scores=np.stack([bad, bad]),
        raw_scores=np.where(np.arange(5)[:, None] == 2, [20.0, -6.5, 10.0], bad),
    )
    assert codes(quality.check_scan(facts)) == [
        ("level_at_scan_edge", 5),
        ("level_folds_disagree", 5),
        ("lung_volume_implausible", None),
        ("lung_hu_implausible", None),
        ("thick_slices", None),
        ("tot_above_pattern_sum", 1),
        ("output_clipped", 3),
    ]
    wider = quality.quality_limits(["quality.lung_hu=[-950, -400]", "quality.max_slice_mm=10", "quality.clip_pp=7"])
    assert ("lung_hu_implausible", None) not in codes(quality.check_scan(facts, wider))
    assert ("thick_slices", None) not in codes(quality.check_scan(facts, wider))
    assert ("output_clipped", 3) not in codes(quality.check_scan(facts, wider))


def test_outputs_clipped_by_more_than_the_limit_are_named_with_their_raw_values():
    raw = np.array([[20.0, 12.0, 10.0]] * 5)
    raw[1] = [106.5, 104.0, -7.0]
    found = quality.clipped_outputs(raw)
    assert codes(found) == [("output_clipped", 2)]
    assert "L2: the S-Net put out TOT 106.5 %, RET -7.0 %, shown clipped" in found[0].message
    assert "GG" not in found[0].message  # 104.0 lies within the 5-point limit
    raw[1] = [104.9, 0.0, -4.9]
    assert quality.clipped_outputs(raw) == []
    assert codes(quality.clipped_outputs(raw, 0.0)) == [("output_clipped", 2)]


def test_limits_are_settings_with_the_documented_defaults_and_checked_values():
    assert quality.quality_limits() == quality.QualityLimits()
    assert quality.QualityLimits().lung_hu == (-950.0, -500.0) and quality.QualityLimits().clip_pp == 5.0
    assert quality.quality_limits(["quality.edge_mm=20"]).edge_mm == 20.0
    with pytest.raises(ConfigError, match="quality.edge_mm"):
        quality.quality_limits(["quality.edge_mm=-1"])
    with pytest.raises(ConfigError, match="quality.nonsense: unknown setting"):
        quality.quality_limits(["quality.nonsense=1"])
    with pytest.raises(ConfigError, match="takes quality.\\* settings only"):
        quality.quality_limits(["train.steps=3"])


def test_a_warning_as_json_has_a_level_only_when_it_concerns_one():
    assert quality.QualityWarning("thick_slices", "m").to_json() == {"code": "thick_slices", "message": "m"}
    assert quality.QualityWarning("levels_too_close", "m", 3).to_json() == {
        "code": "levels_too_close",
        "level": 3,
        "message": "m",
    }
