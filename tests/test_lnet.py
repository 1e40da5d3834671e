"""L-Net data, inference and commands: cache, crops, sliding-window median, mapping back to the original scan,
run loading, and a tiny-preset training run on a phantom cohort (shared by the tests at the end)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import LNET_SHORT_BATCH, LNET_SHORT_STEPS, LNET_SHORT_VALID_EVERY, N_PATIENTS, train_lnet_cli
from flax import nnx
from sscjax.cli.main import cli

from sscjax import lnet, plots, run_files, runs
from sscjax.configs import ModelConfig
from sscjax.configs.lnet import LNetData
from sscjax.data.lnet import (
    LevelSet,
    PreparedVolume,
    cache_dir,
    load_prepared,
    median_positions,
    prepare_volume,
    window_starts,
    windows,
)
from sscjax.errors import ConfigError, ModelError
from sscjax.io import Geometry, read_scan, resampled_geometry, write_image
from sscjax.networks import preset
from sscjax.runs import load_config, save_config

SIZE = (80, 64, 64)
SETTINGS = LNetData(size=SIZE, crop=64, margin=2, stride=4)


# ---------------------------------------------------------------- data


def _volume(n: int, seed: int = 0) -> PreparedVolume:
    array = np.random.default_rng(seed).normal(size=(n, 8, 8)).astype(np.float32)
    geometry = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    return PreparedVolume(array, geometry, geometry, array.shape)


def _level_set(positions) -> LevelSet:
    positions = np.asarray(positions, dtype=np.float32)
    return LevelSet(
        [f"s{i}" for i in range(len(positions))], [_volume(40, i) for i in range(len(positions))], positions
    )


def _task(levels: LevelSet, **data_settings) -> lnet.LNetTask:
    config = preset("lnet", "tiny")
    config = config.__class__(
        **{**config.__dict__, "data": LNetData(**{"size": (40, 8, 8), "crop": 28, "margin": 2, **data_settings})}
    )
    return lnet.LNetTask(config, levels, levels)


def test_training_crops_keep_every_level_inside_with_labels_relative_to_the_start():
    levels = _level_set([[30, 25, 20, 15, 10], [37, 33, 28, 24, 20], [20.5, 18, 14, 9, 3.2]])
    task = _task(levels)
    starts_seen = set()
    for step in range(40):
        batch = task.train_batch(step, 0, 1)
        positions = lnet.to_positions(batch["targets"], 28)
        assert batch["inputs"].shape == (task.config.train.batch_size, 28, 8, 8, 1)
        assert batch["inputs"].dtype == np.float32
        assert np.all(positions >= 2 - 1e-5) and np.all(positions <= 28 - 1 - 2 + 1e-5)
        for inputs, pos in zip(batch["inputs"][..., 0], positions):
            row = next(r for r in range(3) if np.allclose(np.diff(levels.positions[r] - pos), 0, atol=1e-4))
            start = round(float(levels.positions[row][0] - pos[0]))
            starts_seen.add((row, start))
            expected = levels.volumes[row].array[start : start + 28]
            np.testing.assert_allclose(inputs, (expected - expected.mean()) / expected.std(), atol=1e-4)
    # every feasible start (levels >= 2 slices inside a 28-slice crop of a 40-slice volume) is drawn
    assert starts_seen == {(0, 5), (0, 6), (0, 7), (0, 8), (1, 12), (2, 0), (2, 1)}


def test_batches_depend_only_on_seed_and_step_and_hosts_share_them():
    task = _task(
        _level_set([[30, 25, 20, 15, 10], [37, 33, 28, 24, 20], [22, 18, 14, 9, 4], [25, 20, 15, 10, 5]]), noise=0.5
    )
    whole = task.train_batch(7, 0, 1)
    halves = [task.train_batch(7, i, 2) for i in range(2)]
    for key in ("inputs", "targets"):
        np.testing.assert_array_equal(whole[key], task.train_batch(7, 0, 1)[key])
        np.testing.assert_array_equal(whole[key], np.concatenate([h[key] for h in halves]))
    assert not np.array_equal(whole["inputs"], task.train_batch(8, 0, 1)["inputs"])
    noise_free = _task(task.train_set).train_batch(7, 0, 1)
    residual = whole["inputs"] - noise_free["inputs"]
    assert residual.std() == pytest.approx(0.5, rel=0.05)


def test_levels_that_cannot_fit_a_crop_are_refused():
    with pytest.raises(ConfigError, match="s1"):
        _task(_level_set([[30, 25, 20, 15, 10], [38, 30, 20, 10, 1]]))


def test_prepared_volumes_are_cached_until_the_source_changes(tmp_path):
    source = tmp_path / "scan.mha"
    geometry = Geometry((1.5, 1.5, 3.0), (-10.0, 5.0, 100.0))
    array = np.arange(20 * 16 * 16, dtype=np.int16).reshape(20, 16, 16) % 3000 - 1500
    write_image(source, array, geometry)
    cache = cache_dir(tmp_path / "runs", (10, 8, 8))
    first = load_prepared(source, "scan", cache, (10, 8, 8))
    assert isinstance(first.array, np.memmap) and first.array.dtype == np.int16 and first.array.shape == (10, 8, 8)
    assert first.geometry == resampled_geometry(geometry, (20, 16, 16), (10, 8, 8))
    assert first.source_geometry == geometry and first.source_shape == (20, 16, 16)
    stamp = (cache / "scan.npy").stat().st_mtime_ns

    os.utime(source, ns=(1, 1))  # touched, same content: the cache stays
    again = load_prepared(source, "scan", cache, (10, 8, 8))
    assert (cache / "scan.npy").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.array, first.array)

    write_image(source, (array // 2).astype(np.int16), geometry)  # new content: prepared again
    changed = load_prepared(source, "scan", cache, (10, 8, 8))
    assert not np.array_equal(changed.array, first.array)
    assert np.abs(changed.array).max() <= 750 + 1


def test_prepare_clips_hounsfield_units():
    from sscjax.io import Scan

    scan = Scan(np.full((8, 8, 8), 3000, np.float32), Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    scan.array[:4] = -3000
    prepared = prepare_volume(scan, (8, 8, 8))
    assert prepared.array.min() == -1500 and prepared.array.max() == 1500


def test_window_starts_cover_the_volume_and_the_median_is_per_level():
    np.testing.assert_array_equal(window_starts(80, 64, 4), [0, 4, 8, 12, 16])
    np.testing.assert_array_equal(window_starts(81, 64, 4), [0, 4, 8, 12, 16, 17])
    np.testing.assert_array_equal(window_starts(64, 64, 4), [0])
    window_positions = np.asarray([[10, 5], [6, 1], [2, 9], [100, -3]], dtype=float)
    starts = np.asarray([0, 4, 8, 12])
    np.testing.assert_allclose(median_positions(window_positions, starts), [(10 + 10) / 2, (5 + 9) / 2])


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_windows_are_each_z_scored_over_their_own_voxels(dtype):
    rng = np.random.default_rng(3)
    volume = (rng.normal(-300, 400, (40, 12, 10)) + np.linspace(-500, 500, 40)[:, None, None]).astype(dtype)
    starts = window_starts(40, 24, 5)
    found = windows(volume, starts, 24)
    assert found.shape == (len(starts), 24, 12, 10, 1) and found.dtype == np.float32
    for window, start in zip(found, starts):
        crop = volume[start : start + 24].astype(np.float64)
        np.testing.assert_allclose(window[..., 0], (crop - crop.mean()) / crop.std(), atol=1e-5)
    flat = np.full((30, 4, 4), 7, dtype)
    np.testing.assert_array_equal(windows(flat, np.array([0, 6]), 24), 0)  # constant window: SD 1, no NaN


# ---------------------------------------------------------------- inference on a scan stored head first


class SlabFinder:
    """A stand-in network: level j is the brightest slice of each window plus 4*j slices."""

    chunk = 3

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        brightest = windows[..., 0].mean(axis=(2, 3)).argmax(axis=1)
        return lnet.to_targets(brightest[:, None] + 4 * np.arange(5), SETTINGS.crop)


def _reversed_scan(tmp_path, slab: int, n: int = 40):
    """A scan file with slices stored head first (direction z = -1) and one bright slab at canonical slice `slab`."""
    canonical = np.full((n, 64, 64), -1000, np.int16)
    canonical[slab] = 1000
    top = 100.0 + (n - 1) * 2.5
    geometry = Geometry((2.0, 2.0, 2.5), (0.0, 0.0, top), (1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0))
    path = tmp_path / "reversed.mha"
    write_image(path, canonical[::-1], geometry)
    return path


def test_levels_map_back_to_slices_of_a_scan_stored_head_first(tmp_path):
    path = _reversed_scan(tmp_path, slab=13)
    scan = read_scan(path)
    assert scan.array[13].max() == 1000 and scan.z_mm[0] == pytest.approx(100.0)
    found = lnet.predict_levels(lnet.LevelModel(SlabFinder(), SETTINGS), scan)
    # the slab (2.5 mm) spans resampled slices 26 and 27 (1.25 mm); 26 = canonical slice 12.75 -> 13;
    # each further level is 4 resampled slices = 2 original slices higher
    np.testing.assert_allclose(found.positions, 26 + 4 * np.arange(5))
    np.testing.assert_array_equal(found.slice_index, 13 + 2 * np.arange(5))
    np.testing.assert_allclose(found.levels_mm, 100.0 + 2.5 * (12.75 + 2 * np.arange(5)))
    assert found.to_json()["slice_index"] == [13, 15, 17, 19, 21]


def test_predictions_outside_the_scan_are_clamped_to_its_end_slices(tmp_path):
    scan = read_scan(_reversed_scan(tmp_path, slab=13))
    always_far = lambda windows: np.tile([[3.0, 3.0, -3.0, -3.0, 0.0]], (len(windows), 1))  # noqa: E731
    found = lnet.predict_levels(lnet.LevelModel(always_far, SETTINGS), scan)
    assert list(found.slice_index[:4]) == [39, 39, 0, 0]
    np.testing.assert_allclose(found.levels_mm[:4], [197.5, 197.5, 100.0, 100.0])


def test_level_overlay_draws_true_and_predicted_lines_head_up():
    volume = np.zeros((20, 6, 10), np.int16)
    image = plots.level_overlay(volume, np.asarray([15.0] * 5), np.asarray([2.2] * 5))
    assert image.shape == (20, 10, 3) and image.dtype == np.uint8
    assert (image[19 - 15] == plots.TRUE_RGB).all() and (image[19 - 2] == plots.PRED_RGB).all()
    assert (image[0] == 127).all()


def test_the_image_of_a_training_crop_has_its_level_lines_at_the_labelled_slices():
    task = _task(_level_set([[30, 25, 20, 15, 10], [37, 33, 28, 24, 20]]))
    batch, image, crop = task.train_batch(3, 0, 1), task.crop_image(3), 28
    assert image.shape == (crop, 8, 3)
    rows = crop - 1 - np.rint(lnet.to_positions(batch["targets"][0], crop)).astype(int)
    assert (image[rows] == plots.TRUE_RGB).all()
    others = np.setdiff1d(np.arange(crop), rows)
    assert not (image[others] == plots.TRUE_RGB).all(axis=-1).all(axis=-1).any()


@pytest.mark.slow  # a proof that the VGG starts at the mean (8 s of compiling a VGG training step)
def test_an_untrained_vgg_lnet_predicts_the_mean_training_position():
    task = _task(_level_set([[30, 25, 20, 15, 10], [37, 33, 28, 24, 20]]))
    config = task.config.__class__(
        **{**task.config.__dict__, "model": ModelConfig("vgg11_3d", {"num_outputs": 5, "base": 2})}
    )
    mean = lnet.to_targets(task.mean_crop_positions, 28)
    model = lnet.make_lnet(config, nnx.Rngs(0), mean)
    # the head is the network's last layer: whatever the trunk and FC layers make of a crop, it answers the mean
    features = np.abs(np.random.default_rng(0).normal(size=(2, model.head.in_features))).astype(np.float32)
    np.testing.assert_allclose(model.head(jnp.asarray(features)), np.broadcast_to(mean, (2, 5)), atol=1e-7)
    heat_map_net = lnet.make_lnet(task.config, nnx.Rngs(0), mean)  # the tiny preset's: its own initialisation
    assert np.any(heat_map_net.head.kernel[...])


# ---------------------------------------------------------------- run folders


def test_runs_refuse_non_runs_other_networks_and_untrained_runs(tmp_path):
    with pytest.raises(ModelError, match="not a training run"):
        run_files.load_model(tmp_path, "lnet")
    config = preset("lnet", "tiny")
    save_config(tmp_path / "config.json", config)
    assert load_config(tmp_path / "config.json") == config
    with pytest.raises(ModelError, match="no saved best model"):
        run_files.load_model(tmp_path, "lnet")
    snet = tmp_path / "snet"
    snet.mkdir()
    (snet / "config.json").write_text(json.dumps({"net": "snet", "version": 1}))
    with pytest.raises(ModelError, match="run of the snet, not of the lnet"):
        lnet.level_model(snet)


def test_resuming_refuses_changed_settings_but_not_a_longer_schedule(tmp_path):
    config = preset("lnet", "tiny")
    runs.start_run(tmp_path, config, {"fold": 0}, "abc")
    longer = config.__class__(
        **{**config.__dict__, "train": config.train.__class__(**{**config.train.__dict__, "steps": 999})}
    )
    runs.start_run(tmp_path, longer, {"fold": 0}, "abc", resume=True)
    assert load_config(tmp_path / "config.json").train.steps == 999
    with pytest.raises(ConfigError, match="data.crop"):
        changed = config.__class__(**{**config.__dict__, "data": LNetData(crop=32)})
        runs.start_run(tmp_path, changed, {}, "abc", resume=True)
    with pytest.raises(ConfigError, match="cohort changed"):
        runs.start_run(tmp_path, longer, {"fold": 0}, "xyz", resume=True)


# ---------------------------------------------------------------- a tiny-preset run on a phantom cohort


@pytest.fixture(scope="module")
def trained(lnet_trained):
    return lnet_trained


def _log(run_dir, key: str) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if key in r]


def test_run_logs_and_reports_its_validations(trained):
    _root, run_dir, output = trained
    config = runs.read_config(run_dir, "lnet")
    steps, every = config.train.steps, config.train.valid_every
    assert [r["step"] for r in _log(run_dir, "train/loss")] == list(range(10, steps + 1, 10))
    validations = _log(run_dir, "valid/mae")
    assert [v["step"] for v in validations] == list(range(every, steps + 1, every))
    last = validations[-1]
    assert last["valid/mae"] == pytest.approx(np.mean([last[f"valid/mae_L{k}"] for k in range(1, 6)]))
    best = min(validations, key=lambda v: v["valid/mae"])
    assert f"best validation MAE {best['valid/mae']:.3f} at step {best['step']}" in output


@pytest.mark.slow
def test_tiny_preset_beats_the_mean_position_baseline(lnet_trained_full):
    """The whole tiny schedule: the validation MAE ends well below predicting the mean position."""
    root, run_dir, _ = lnet_trained_full
    config = runs.read_config(run_dir, "lnet")
    train_set, valid_set, _, _ = lnet.prepare(config, root / "runs_full")
    last = _log(run_dir, "valid/mae")[-1]
    assert last["step"] == config.train.steps
    assert last["valid/crop_mae_slices"] < 0.6 * last["valid/crop_baseline_mae_slices"]
    assert last["valid/mae"] < 0.6 * lnet.baseline_mae(train_set, valid_set)


def test_run_folder_records_config_splits_fingerprint_and_tensorboard(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, run_dir, _ = trained
    config = runs.read_config(run_dir, "lnet")
    tiny = preset("lnet", "tiny", data_dir=str((root / "data").resolve()), fold=0)
    schedule = dataclasses.replace(
        tiny.train, steps=LNET_SHORT_STEPS, valid_every=LNET_SHORT_VALID_EVERY, batch_size=LNET_SHORT_BATCH
    )
    assert config == dataclasses.replace(tiny, train=schedule)
    splits = runs.read_splits(run_dir)
    assert splits["fold"] == 0 and not set(splits["train"]) & set(splits["valid"])
    assert len(splits["train"]) + len(splits["valid"]) + len(splits["test"]) == N_PATIENTS
    from sscjax.data import load_cohort

    fingerprint = json.loads((run_dir / "fingerprint.json").read_text())["fingerprint"]
    assert fingerprint == load_cohort(root / "data", check_scans=False).fingerprint()
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert {
        "train/loss",
        "valid/mae",
        "valid/mae_L1",
        "valid/mae_L5",
        "train/lr",
        "valid/crop_mae_slices",
        "train/examples_per_s",
    } <= set(events.Tags()["scalars"])
    images = events.Tags()["images"]
    assert len(images) == 2 and "train/crop_levels" in images
    assert any(name.startswith("valid/levels_") for name in images)


def test_levels_command_prints_the_levels_evaluation_finds(trained):
    from sscjax.cli.evaluate import lnet as evaluate_command

    root, run_dir, _ = trained
    evaluated = CliRunner().invoke(
        evaluate_command, ["--model", str(run_dir), "--split", "valid"], catch_exceptions=False
    )
    assert evaluated.exit_code == 0, evaluated.output
    scan_id = runs.read_splits(run_dir)["valid"][0]
    scan = root / "data" / "scans" / f"{scan_id}.mha"
    result = CliRunner().invoke(cli, ["levels", str(scan), "--model", str(run_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["scan"] == str(scan) and len(printed["levels_mm"]) == 5
    rows = [r for r in csv_rows(run_dir / "eval" / "valid" / "predictions.csv") if r["scan_id"] == scan_id]
    assert printed["slice_index"] == [int(r["pred_slice"]) for r in rows]
    assert printed["levels_mm"] == pytest.approx([float(r["pred_mm"]) for r in rows], abs=2e-3)
    original = read_scan(scan)
    np.testing.assert_array_equal(
        printed["slice_index"], original.geometry.nearest_slice(np.asarray(printed["levels_mm"]), original.n_slices)
    )


def test_evaluate_lnet_writes_metrics_and_plots(trained):
    root, run_dir, _ = trained
    out = run_dir / "eval" / "valid"
    if not (out / "metrics.json").exists():  # written by the levels test, which compares with it
        from sscjax.cli.evaluate import lnet as evaluate_command

        assert CliRunner().invoke(evaluate_command, ["--model", str(run_dir)], catch_exceptions=False).exit_code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = list(csv_rows(out / "predictions.csv"))
    valid_ids = runs.read_splits(run_dir)["valid"]
    assert sorted({r["scan_id"] for r in rows}) == sorted(valid_ids)
    assert len(rows) == 5 * len(valid_ids) == metrics["all"]["n"]
    error = np.abs([int(r["pred_slice"]) - int(r["true_slice"]) for r in rows])
    assert metrics["all"]["mae_slices"] == pytest.approx(error.mean())
    l3 = [abs(float(r["pred_mm"]) - float(r["true_mm"])) for r in rows if r["level"] == "L3"]
    assert metrics["levels"]["L3"]["mae_mm"] == pytest.approx(np.mean(l3), abs=1e-3)
    from sscjax.data import load_cohort

    cohort = load_cohort(root / "data", check_scans=False)
    for r in rows:
        assert float(r["true_mm"]) == pytest.approx(cohort.levels_mm[r["scan_id"]][int(r["level"][1]) - 1], abs=1e-3)
    assert (out / "bland_altman.png").stat().st_size > 1000 and (out / "correlation.png").stat().st_size > 1000


def test_training_again_into_a_trained_run_needs_resume(trained):
    root, run_dir, _ = trained
    before = (run_dir / "config.json").read_text()
    with pytest.raises(ConfigError, match="resume"):
        train_lnet_cli(root / "data", root / "runs", "--steps", "99")
    assert (run_dir / "config.json").read_text() == before


def csv_rows(path):
    import csv

    with open(path, newline="") as f:
        yield from csv.DictReader(f)


def test_fold_must_exist(cohort, tmp_path):
    result = CliRunner().invoke(
        cli, ["train", "lnet", "--data", str(cohort), "--fold", "4", "--workdir", str(tmp_path)]
    )
    assert result.exit_code == 2 and "'4' is not 'all' or a fold 0 .. 3" in result.output
