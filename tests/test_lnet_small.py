"""The published L-Net (3D VGG11) learns here: `ssc train lnet --preset small` on a 48-patient phantom cohort must
find the levels of the held-out test scans with at most 0.6x the MAE of predicting every level at the training
scans' mean position, within 30 minutes of training on 2 cores (slow: about 12 minutes; docs/lnet_training.md)."""

from __future__ import annotations

import time

import pytest
from conftest import ssc_process

from sscjax import lnet, runs
from sscjax.data import load_cohort

MARGIN = 0.6  # the VGG's test MAE may be at most 60 % of the mean-position baseline's
TRAINING_MINUTES = 30


@pytest.mark.slow
def test_the_small_vgg11_preset_beats_the_mean_position_baseline_on_the_test_split(tmp_path):
    data, workdir = tmp_path / "p21", tmp_path / "runs"
    made = ssc_process("phantom", str(data), "--patients", "48", "--preset", "small", "--seed", "21", timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    start = time.perf_counter()
    trained = ssc_process(
        "train", "lnet", "--data", str(data), "--fold", "0", "--preset", "small", "--workdir", str(workdir),
        timeout=60 * TRAINING_MINUTES,
    )  # fmt: skip
    minutes = (time.perf_counter() - start) / 60
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = runs.default_run_dir(workdir, "lnet", 0)
    assert runs.read_config(run_dir, "lnet").model.name == "vgg11_3d"
    test = lnet.evaluate_lnet(run_dir, "test")
    splits = runs.read_splits(run_dir)
    baseline = lnet.mean_position_baseline(load_cohort(data), splits["train"], splits["test"])
    mae = test["all"]["mae_mm"]
    assert test["n_scans"] == len(splits["test"]) >= 10
    assert mae <= MARGIN * baseline, (mae, baseline, minutes)
    assert minutes <= TRAINING_MINUTES
