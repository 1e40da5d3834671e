"""Size presets of the phantom generator: matrix, spacing ranges, noise, vessel-tree density."""

from __future__ import annotations

from dataclasses import dataclass

from sscjax.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """How a phantom scan is sampled: in-plane matrix, spacing ranges (mm), image noise and blur."""

    name: str
    matrix: int  # in-plane pixels (square)
    pixel_mm: tuple[float, float]  # pixel spacing range; the lower bound grows so the body fits
    slice_mm: tuple[float, float]  # slice spacing range
    noise_hu: tuple[float, float]  # standard deviation of the (correlated) image noise
    blur_mm: float  # in-plane reconstruction blur (Gaussian sigma)
    vessel_leaves: int  # end branches per pulmonary vessel tree (4 trees)
    pattern_px: int  # side of the texture patches written to patterns/


PRESETS = {
    "small": Preset("small", 128, (2.2, 3.4), (2.8, 3.8), (10.0, 20.0), 1.2, 260, 32),
    "full": Preset("full", 512, (0.55, 0.85), (0.5, 1.5), (15.0, 30.0), 0.45, 900, 64),
}


def get_preset(name: str) -> Preset:
    """The preset called `name`; a ConfigError lists the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown phantom preset '{name}' (choose from {', '.join(PRESETS)})")
    return PRESETS[name]
