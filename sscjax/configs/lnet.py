"""L-Net settings: the resampled matrix, training crops, model and schedule. The defaults are the paper's; the
presets are the files configs/lnet/<preset>.toml."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from sscjax.configs import Conventions, InitRun, ModelConfig, TrainConfig, setting


@dataclass(frozen=True)
class LNetData:
    """How scans become L-Net inputs and labels."""

    size: tuple[int, int, int] = setting(
        (256, 256, 256), "resampled matrix (z, y, x) over the scan's field of view, voxels", minimum=1
    )
    crop: int = setting(192, "slices per training crop and per inference window", minimum=1)
    margin: int = setting(2, "slices kept between every level and a crop's first and last slice", minimum=0)
    noise: float = setting(0.0, "SD of Gaussian noise added to training crops, z-score units", minimum=0)
    stride: int = setting(4, "slices between inference windows", minimum=1)
    conventions: Conventions = setting(
        "sscjax",
        'inference: "sscjax" z-scores each window, takes every window start up to the top one and reads outputs as '
        'fractions of the window; "authors" (their published L-Net) z-scores the whole volume, starts windows at 0, '
        "stride, ... below slices - crop and reads outputs as slices in the window (training: targets in slices of "
        "the crop)",
    )


@dataclass(frozen=True)
class LNetConfig:
    """Everything that defines an L-Net run (stored as the run's config.json)."""

    # Settings older run configs hold that no longer mean anything; they are dropped when read.
    RETIRED: ClassVar[tuple[str, ...]] = ("n_folds",)

    net: Literal["lnet"] = setting("lnet", "the network these settings are for")
    version: Literal[1] = setting(1, "version of the settings format")
    preset: str = setting("paper", "the preset these settings started from")
    data_dir: str = setting("data", "cohort folder (ssc train --data)")
    fold: int = setting(0, "cross-validation fold trained (ssc train --fold)", minimum=0)
    data: LNetData = field(default_factory=LNetData)
    model: ModelConfig = field(default_factory=lambda: ModelConfig("vgg11_3d", {"num_outputs": 5, "base": 8}))
    train: TrainConfig = field(default_factory=TrainConfig)
    init: InitRun | None = setting(
        None, "the run whose weights training starts from (ssc train --init); not set: fresh"
    )
