"""L-Net settings: the resampled matrix, training crops, model and schedule; presets `paper` and `tiny`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sscjax.configs import ModelConfig, TrainConfig


@dataclass(frozen=True)
class LNetData:
    """How scans become L-Net inputs and labels."""

    size: tuple[int, int, int] = (256, 256, 256)  # resampled matrix (z, y, x) covering the scan's field of view
    crop: int = 192  # slices per training crop and per inference window
    margin: int = 2  # slices kept between every level and the crop's first/last slice
    noise: float = 0.0  # SD of Gaussian noise added to training crops, in z-score units
    stride: int = 4  # slices between inference windows


@dataclass(frozen=True)
class LNetConfig:
    """Everything that defines an L-Net run (stored as the run's config.json)."""

    net: str = "lnet"
    version: int = 1
    preset: str = "paper"
    data_dir: str = "data"
    fold: int = 0
    n_folds: int = 4
    data: LNetData = field(default_factory=LNetData)
    model: ModelConfig = field(default_factory=lambda: ModelConfig("vgg11_3d", {"num_outputs": 5, "base": 8}))
    train: TrainConfig = field(default_factory=TrainConfig)


CONFIG = LNetConfig


def paper() -> LNetConfig:
    """The paper: 256^3 matrix, 192-slice crops, VGG11 widths 8..128, Adam 1e-4, 500 epochs."""
    return LNetConfig(preset="paper")


def tiny() -> LNetConfig:
    """CPU-sized: an 80x64x64 matrix, 64-slice crops, and the slice-wise heat-map L-Net (models/levelnet.py,
    widths 16..128) instead of the VGG. The published VGG pools z away and needs a long GPU schedule: on a
    phantom cohort it stayed at the predict-the-mean-position baseline for 400 CPU steps (about 15 minutes);
    the heat-map net halves the baseline's error in 120 steps (about 2 minutes)."""
    return LNetConfig(
        preset="tiny",
        data=LNetData(size=(80, 64, 64), crop=64, margin=2, stride=4),
        model=ModelConfig("levelnet", {"num_outputs": 5, "base": 16}),
        train=dataclasses.replace(TrainConfig(), steps=120, batch_size=4, learning_rate=1e-3, warmup_steps=10,
                                  valid_every=40, log_every=10),
    )


PRESETS = {"paper": paper, "tiny": tiny}
