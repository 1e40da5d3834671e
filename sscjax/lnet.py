"""The L-Net: its training task for the engine, level prediction on a scan by sliding windows, and evaluation.

The network regresses the five level positions of a crop as (position / crop - 0.5), so targets lie in about
[-0.5, 0.5] whatever the crop length (MSE on raw slice numbers would need far larger Adam steps); positions
are mapped back before any metric. Inference slides `crop`-slice windows over the resampled volume (stride 4),
takes the median per level over the windows, maps the resampled position to world z and then to the nearest
slice of the original scan. A run with `data.conventions = "authors"` (the paper authors' imported L-Net) is run as
their code runs it: the volume z-scored as a whole, their window starts, outputs read as slices; it trains as their
code trains it, on crops z-scored each on its own with targets in slices of the crop (`to_targets`). A config with
`init` (ssc train --init) starts from that run's best weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sscjax import plots, runs, train
from sscjax.configs import AUTHORS, Conventions
from sscjax.configs.lnet import LNetConfig, LNetData
from sscjax.data.cohort import fold_split
from sscjax.data.lnet import (
    LevelSet,
    PreparedVolume,
    cache_dir,
    check_crops,
    crop_bounds,
    crop_starts,
    level_set,
    median_positions,
    moments,
    prepare_volume,
    training_crops,
    window_starts,
    windows,
)
from sscjax.domain import LEVEL_NAMES
from sscjax.errors import ConfigError, ModelError
from sscjax.io import Scan, read_scan, write_csv, write_json
from sscjax.models import build_model
from sscjax.run_files import check_init, init_model, load_model

NET = "lnet"
VALID_CROPS = 4  # fixed random crops per validation volume, for the MAE within crops
CROP_RANGE = (-2.0, 2.0)  # z-score units shown in the image of a training crop


def to_targets(positions: np.ndarray, crop: int, conventions: Conventions = "sscjax") -> np.ndarray:
    """Positions in a crop (slices) -> the network's regression targets; the authors' networks learn the slices."""
    positions = np.asarray(positions, dtype=np.float32)
    return positions if conventions == AUTHORS else (positions / crop - 0.5).astype(np.float32)


def to_positions(outputs: np.ndarray, crop: int, conventions: Conventions = "sscjax") -> np.ndarray:
    """The network's outputs -> positions in the crop (slices); the authors' networks answer in slices already."""
    outputs = np.asarray(outputs, dtype=np.float64)
    return outputs if conventions == AUTHORS else (outputs + 0.5) * crop


def _predict_in_chunks(predict: train.Predictor, n: int, inputs: Callable[[slice], np.ndarray]) -> np.ndarray:
    """Outputs for n inputs made one predictor chunk at a time (`inputs(rows)`), so that only one chunk of
    volumes is ever in host memory."""
    chunk = getattr(predict, "chunk", n)
    return np.concatenate([predict(inputs(slice(i, i + chunk))) for i in range(0, n, chunk)])


def predict_positions(predict: train.Predictor, volume: np.ndarray, settings: LNetData) -> np.ndarray:
    """(5,) level positions in a resampled volume: per-level median over the sliding windows, made and read with
    the settings' conventions (the authors': windows z-scored with the whole volume's mean and SD)."""
    conventions, crop = settings.conventions, settings.crop
    starts = window_starts(volume.shape[0], crop, settings.stride, conventions)
    scale = moments(volume) if conventions == AUTHORS else None
    outputs = _predict_in_chunks(predict, len(starts), lambda rows: windows(volume, starts[rows], crop, scale))
    return median_positions(to_positions(outputs, crop, conventions), starts)


def predict_crops(
    predict: train.Predictor, levels: LevelSet, rows: np.ndarray, starts: np.ndarray, settings: LNetData
) -> np.ndarray:
    """(n, 5) positions predicted within the crops (row, start), relative to each crop's start."""
    crop = settings.crop
    outputs = _predict_in_chunks(
        predict, len(rows), lambda part: training_crops(levels, rows[part], starts[part], crop)[0]
    )
    return to_positions(outputs, crop, settings.conventions)


def mean_crop_positions(levels: LevelSet, settings: LNetData) -> np.ndarray:
    """(5,) mean level positions relative to the start of a random training crop (starts uniform per scan)."""
    lo, hi = crop_bounds(levels.positions, settings.crop, levels.volumes[0].array.shape[0], settings.margin)
    return (levels.positions - (lo + hi)[:, None] / 2).mean(axis=0)


def make_lnet(config: LNetConfig, rngs: nnx.Rngs, mean_targets: np.ndarray) -> nnx.Module:
    """A fresh L-Net (training mode), or the init run's (`config.init`) as it is. A network with a linear head (the
    VGGs) starts predicting `mean_targets`,
    the mean training position: zero head weights, the mean as its bias. With torchvision's N(0, 0.01) head the
    untrained outputs spread far wider than the targets, and Adam's first steps, shrinking them, silence most fc1
    units for good (all fc1 inputs are positive, 27648 of them, so one step moves a unit by several SDs): the VGG11-3D
    then stays at the mean-position baseline. The slice-wise heat-map net (a convolution head) is built as is."""
    if config.init is not None:
        return init_model(config)
    model: Any = build_model(config.model, rngs)  # any network; its head is looked up by name
    if isinstance(model.head, nnx.Linear):
        assert model.head.bias is not None  # a linear head with a bias (as every VGG's)
        model.head.kernel.set_value(jnp.zeros_like(model.head.kernel.get_value()))
        model.head.bias.set_value(jnp.asarray(mean_targets, model.head.bias.get_value().dtype))
    return model


class LNetTask:
    """The L-Net for the training engine: random level-keeping crops, MSE, sliding-window validation (MAE in mm)."""

    def __init__(self, config: LNetConfig, train_set: LevelSet, valid_set: LevelSet):
        check_crops(train_set, config.data.crop, config.data.margin)
        self.config, self.train_set, self.valid_set = config, train_set, valid_set
        self.examples_per_epoch = len(train_set)
        settings, n_slices = config.data, valid_set.volumes[0].array.shape[0]
        lo, hi = crop_bounds(valid_set.positions, settings.crop, n_slices, settings.margin)
        self.valid_rows = np.repeat(np.flatnonzero(lo <= hi), VALID_CROPS)
        draw = np.random.default_rng([config.train.seed, len(valid_set), 7]).random(len(self.valid_rows))
        self.valid_starts = crop_starts(
            valid_set.positions[self.valid_rows], settings.crop, n_slices, settings.margin, draw
        )
        self.mean_crop_positions = mean_crop_positions(train_set, settings)
        self.crop_image_pending = True

    def make_model(self, rngs: nnx.Rngs) -> nnx.Module:
        settings = self.config.data
        return make_lnet(self.config, rngs, to_targets(self.mean_crop_positions, settings.crop, settings.conventions))

    def train_batch(self, step: int, process_index: int, process_count: int) -> train.Batch:
        """This host's crops of global batch `step`: rows, crop starts and noise all drawn from (seed, step)."""
        settings, schedule = self.config.data, self.config.train
        rows = train.epoch_rows(schedule.seed, step, len(self.train_set), schedule.batch_size)
        draw = np.random.default_rng([schedule.seed, step, 1]).random(len(rows))
        starts = crop_starts(
            self.train_set.positions[rows],
            settings.crop,
            self.train_set.volumes[0].array.shape[0],
            settings.margin,
            draw,
        )
        mine = np.arange(len(rows))[train.host_rows(len(rows), process_index, process_count)]
        inputs, positions = training_crops(self.train_set, rows[mine], starts[mine], settings.crop)
        if settings.noise > 0:
            # one generator per global row: the same noise whichever host renders the row
            inputs += settings.noise * np.stack(
                [
                    np.random.default_rng([schedule.seed, step, 2, int(i)]).standard_normal(
                        inputs.shape[1:], np.float32
                    )
                    for i in mine
                ]
            )
        return {"inputs": inputs, "targets": to_targets(positions, settings.crop, settings.conventions)}

    def predict(self, model: nnx.Module, inputs: jax.Array) -> jax.Array:
        return model(inputs)

    def loss(self, model: nnx.Module, batch: dict[str, jax.Array]) -> jax.Array:
        return train.mse(model(batch["inputs"]), batch["targets"])

    def validate(self, predict: train.Predictor) -> train.Validation:
        """Sliding-window positions of every validation volume: MAE in mm (overall = "mae", and per level) and in
        resampled slices. Also the MAE (slices) within fixed random crops of the validation volumes, beside that
        of predicting the mean training position within a crop: the network's own task, without the windows.
        The first volume's coronal overlay is the summary image; once per run also the first crop of the first
        training batch with its level labels, to see that targets and crops line up."""
        valid = self.valid_set
        pred = np.stack([predict_positions(predict, v.array, self.config.data) for v in valid.volumes])
        error = np.abs(pred - valid.positions)
        error_mm = error * valid.slice_mm[:, None]
        metrics = {
            "mae": float(error_mm.mean()),
            "mae_slices": float(error.mean()),
            **{f"mae_{name}": float(e) for name, e in zip(LEVEL_NAMES, error_mm.mean(axis=0))},
        }
        if len(self.valid_rows):
            truth = valid.positions[self.valid_rows] - self.valid_starts[:, None]
            in_crops = predict_crops(predict, valid, self.valid_rows, self.valid_starts, self.config.data)
            metrics["crop_mae_slices"] = float(np.abs(in_crops - truth).mean())
            metrics["crop_baseline_mae_slices"] = float(np.abs(self.mean_crop_positions - truth).mean())
        images = {
            f"valid/levels_{valid.ids[0]}": plots.level_overlay(valid.volumes[0].array, valid.positions[0], pred[0])
        }
        if self.crop_image_pending:
            images["train/crop_levels"] = self.crop_image(0)
            self.crop_image_pending = False
        return train.Validation(metrics, images)

    def crop_image(self, step: int) -> np.ndarray:
        """The first crop of training batch `step` (coronal, z-scored) with the level lines of its targets."""
        batch = self.train_batch(step, 0, 1)
        positions = to_positions(batch["targets"][0], self.config.data.crop, self.config.data.conventions)
        return plots.level_overlay(batch["inputs"][0, ..., 0], positions, value_range=CROP_RANGE)


def baseline_mae(train_set: LevelSet, valid_set: LevelSet) -> float:
    """Validation MAE (mm) of predicting every level at its mean training position (resampled slices)."""
    error = np.abs(train_set.positions.mean(axis=0) - valid_set.positions) * valid_set.slice_mm[:, None]
    return float(error.mean())


def mean_position_baseline(cohort, train_ids: list[str], test_ids: list[str]) -> float:
    """MAE (mm) on `test_ids` of predicting every level at the training patients' mean position, as a fraction
    of the scan's field of view (what `baseline_mae` measures on resampled volumes), from scan headers only."""
    from sscjax.io import read_geometry

    def fractions(ids):
        headers = [read_geometry(cohort.scan_paths[i]) for i in ids]
        return np.array(
            [(g.index_of_z(cohort.levels_mm[i]) + 0.5) / shape[0] for i, (g, shape) in zip(ids, headers)]
        ), headers

    train_fraction, _ = fractions(train_ids)
    test_fraction, headers = fractions(test_ids)
    extent_mm = np.array([abs(g.z_step) * shape[0] for g, shape in headers])[:, None]
    return float((np.abs(train_fraction.mean(axis=0) - test_fraction) * extent_mm).mean())


# ---------------------------------------------------------------- inference


@dataclass(frozen=True)
class LevelModel:
    """A trained L-Net ready for inference: a windows -> outputs predictor and the data settings it expects."""

    predict: train.Predictor
    settings: LNetData


def level_model(run_or_model: str | Path | nnx.Module, config: LNetConfig | None = None) -> LevelModel:
    """A LevelModel from a run folder (its best checkpoint) or from a model and its config."""
    if isinstance(run_or_model, (str, Path)):
        run_or_model, config = load_model(run_or_model, NET)
    if config is None:
        raise ConfigError("an L-Net model needs its config (data settings) for inference")
    settings = config.data
    batch = train.inference_batch(config.train.predict_batch, settings.crop * settings.size[1] * settings.size[2])
    predict = train.model_predictor(run_or_model, batch, compute_dtype=config.train.compute_dtype)
    return LevelModel(predict, config.data)


@dataclass(frozen=True)
class LevelPrediction:
    """Five predicted levels (L1..L5) of one scan: world z (mm), nearest slice of the original scan (canonical
    feet-to-head index) and the position in the resampled volume."""

    scan: str
    levels_mm: np.ndarray
    slice_index: np.ndarray
    positions: np.ndarray

    def to_json(self) -> dict:
        return {
            "scan": self.scan,
            "levels_mm": [round(float(z), 3) for z in self.levels_mm],
            "slice_index": [int(k) for k in self.slice_index],
        }


def predict_prepared(model: LevelModel, prepared: PreparedVolume, source: str = "") -> LevelPrediction:
    """Levels of a prepared volume, mapped to world z (clamped into the scan) and the original scan's nearest
    slices: the paper's rule, kept for the authors' networks too (their cascade code truncates z to a slice)."""
    positions = predict_positions(model.predict, prepared.array, model.settings)
    if not np.all(np.isfinite(positions)):
        raise ModelError(
            f"{source or 'scan'}: the L-Net gave non-finite level positions {positions.tolist()} (a diverged model?)"
        )
    n = prepared.source_shape[0]
    ends = np.asarray(prepared.source_geometry.z_of_index(np.asarray([0, n - 1])))
    z = np.clip(prepared.geometry.z_of_index(positions), ends.min(), ends.max())
    return LevelPrediction(source, z, np.asarray(prepared.source_geometry.nearest_slice(z, n)), positions)


def predict_levels(model: LevelModel | str | Path, scan: Scan | str | Path) -> LevelPrediction:
    """The five levels of a scan (a Scan or a path) with a LevelModel or a run folder."""
    if not isinstance(model, LevelModel):
        model = level_model(model)
    if not isinstance(scan, Scan):
        scan = read_scan(scan)
    return predict_prepared(model, prepare_volume(scan, model.settings.size), scan.source)


# ---------------------------------------------------------------- training and evaluation


def prepare(
    config: LNetConfig, workdir: str | Path, progress: Callable[[int, int], None] | None = None
) -> tuple[LevelSet, LevelSet, dict, str]:
    """(train set, validation set, splits record, cohort fingerprint) of the config's fold, volumes cached
    under `workdir`."""
    cohort, train_ids, valid_ids, record = fold_split(config.data_dir, config.fold)
    cache = cache_dir(workdir, config.data.size)
    both = level_set(cohort.scan_paths, cohort.levels_mm, train_ids + valid_ids, cache, config.data.size, progress)
    n = len(train_ids)

    def subset(rows: np.ndarray) -> LevelSet:
        return LevelSet([both.ids[r] for r in rows], [both.volumes[r] for r in rows], both.positions[rows])

    return subset(np.arange(n)), subset(np.arange(n, len(both))), record, cohort.fingerprint()


def train_lnet(
    config: LNetConfig,
    workdir: str | Path,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: Callable[[train.StepInfo], None] | None = None,
    prepare_progress: Callable[[int, int], None] | None = None,
) -> train.TrainResult:
    """Train one fold of the L-Net: prepare the volumes, record the run, run the engine."""
    check_init(config)
    train_set, valid_set, record, fingerprint = prepare(config, workdir, prepare_progress)
    run_dir = Path(run_dir) if run_dir is not None else runs.default_run_dir(workdir, NET, config.fold)
    runs.start_run(run_dir, config, record, fingerprint, resume)
    return train.train(LNetTask(config, train_set, valid_set), config.train, run_dir, resume=resume, progress=progress)


def _summary(pred: np.ndarray, true: np.ndarray, pred_mm: np.ndarray, true_mm: np.ndarray) -> dict:
    from sscjax import metrics

    mae, sd = metrics.mae_sd(pred, true)
    mae_mm, sd_mm = metrics.mae_sd(pred_mm, true_mm)
    icc, (lo, hi) = metrics.icc_a1(pred, true)
    return {
        "n": int(np.size(pred)),
        "mae_slices": mae,
        "sd_slices": sd,
        "mae_mm": mae_mm,
        "sd_mm": sd_mm,
        "icc": icc,
        "icc_ci": [lo, hi],
    }


def _column(rows: list[dict], key: str, level: str | None = None) -> np.ndarray:
    return np.asarray([r[key] for r in rows if level in (None, r["level"])], dtype=np.float64)


def _prediction_rows(model: LevelModel, cohort, ids: list[str], progress) -> list[dict]:
    """One row per scan and level: true and predicted slice (original scan) and world z (mm)."""
    rows = []
    for done, i in enumerate(ids, 1):
        scan = read_scan(cohort.scan_paths[i])
        found = predict_levels(model, scan)
        true_mm = np.asarray(cohort.levels_mm[i], dtype=np.float64)
        true_slice = np.asarray(scan.geometry.nearest_slice(true_mm, scan.n_slices))
        rows += [
            {
                "scan_id": i,
                "level": name,
                "true_slice": int(ts),
                "pred_slice": int(ps),
                "true_mm": round(float(tz), 3),
                "pred_mm": round(float(pz), 3),
            }
            for name, ts, ps, tz, pz in zip(LEVEL_NAMES, true_slice, found.slice_index, true_mm, found.levels_mm)
        ]
        if progress is not None:
            progress(done, len(ids))
    return rows


def evaluate_lnet(
    run_dir: str | Path,
    split: str = "valid",
    data_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Predict the levels of a split's scans with a run's best model; write RUN/eval/<split>/: metrics.json
    (MAE and SD in original slices and mm, ICC(A,1) on slice indices, per level and over all), predictions.csv,
    Bland-Altman and correlation plots (slices). Returns the metrics with the written files."""
    run_dir = Path(run_dir)
    network, config = load_model(run_dir, NET)
    cohort, ids = runs.split_scans(run_dir, split, data_dir or config.data_dir)
    rows = _prediction_rows(level_model(network, config), cohort, ids, progress)
    keys = ("pred_slice", "true_slice", "pred_mm", "true_mm")
    summary = {level: _summary(*(_column(rows, k, level) for k in keys)) for level in (*LEVEL_NAMES, None)}
    result = {
        "run": str(run_dir),
        "split": split,
        "n_scans": len(ids),
        "levels": {k: v for k, v in summary.items() if k is not None},
        "all": summary[None],
    }
    out = runs.eval_dir(run_dir, split)
    written = [write_json(out / "metrics.json", result), write_csv(out / "predictions.csv", rows)]
    pred, true = _column(rows, "pred_slice"), _column(rows, "true_slice")
    written.append(plots.bland_altman_plot(pred, true, out / "bland_altman.png", f"L-Net levels ({split})", "slices"))
    written.append(plots.correlation_plot(pred, true, out / "correlation.png", f"L-Net levels ({split})", "slices"))
    return {**result, "files": [str(p) for p in written]}
