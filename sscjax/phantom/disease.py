"""Interstitial lung disease of systemic sclerosis: ground glass and reticulation, mostly basal and subpleural.

Where the disease lies is a smooth 3D "extent" field per pattern (basal + subpleural + posterior trend plus
a patchy random field); a pattern is present where its field exceeds the patient's threshold. Those regions
are the ground truth. Their look: ground glass raises the lung to ~ -700..-500 HU with a fine texture;
reticulation is a network of thin lines (~ -300..0 HU) along the zero crossings of a band-pass field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sscjax.phantom.anatomy import Anatomy
from sscjax.phantom.fields import WaveField

GG, RET = 1, 2  # lesion-mask bits

HEALTHY_PATIENT_SHARE = 0.22
GG_HU = (-700.0, -540.0)  # ground glass from its edge to its densest part
RET_LINE_HU = -150.0
RET_BACKGROUND_RISE = 70.0  # reticulated lung between the lines is a little denser
RET_LINE_HALF_WIDTH_MM = 0.45
BASAL, SUBPLEURAL = 2.0, 1.3  # weights of the basal and subpleural trends of the extent fields
THRESHOLD = (4.1, 2.4)  # extent threshold: THRESHOLD[0] - THRESHOLD[1] * severity * weight
SEVERITY_GAMMA = (1.3, 0.32)  # shape, scale of the severity of diseased patients
SEVERITY_MAX = 1.0


@dataclass(frozen=True)
class Disease:
    """One patient's disease: severity, how it spreads, and the random fields that place and texture it."""

    healthy: bool
    severity: float  # 0 (none) .. SEVERITY_MAX (extensive)
    gg_weight: float  # share of the severity carried by ground glass / reticulation
    ret_weight: float
    subpleural_mm: float  # decay length of the subpleural predominance
    patches: WaveField  # shared patchiness
    gg_patches: WaveField
    ret_patches: WaveField
    gg_texture: WaveField
    ret_lines: WaveField

    @property
    def thresholds(self) -> tuple[float, float]:
        """Extent thresholds of GG and RET: lower means more lung affected."""
        return (
            THRESHOLD[0] - THRESHOLD[1] * self.severity * self.gg_weight,
            THRESHOLD[0] + 0.2 - THRESHOLD[1] * self.severity * self.ret_weight,
        )

    def extent(
        self, anatomy: Anatomy, z: float, x: np.ndarray, y: np.ndarray, depth_mm: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """GG and RET extent fields minus their thresholds on a grid (x (nx,), y (ny,), depth (ny, nx))."""
        basal = float(np.clip(anatomy.t_of(z), 0.0, 1.25))
        posterior = np.clip((y - anatomy.y0) / anatomy.cav_back, -1, 1)[:, None]
        trend = BASAL * basal + 0.45 * posterior + SUBPLEURAL * np.exp(-depth_mm / self.subpleural_mm)
        shared = self.patches.on_slice(z, x, y)
        gg = trend + 0.7 * shared + 0.5 * self.gg_patches.on_slice(z, x, y)
        ret = trend + 0.4 * np.exp(-depth_mm / 8.0) + 0.6 * shared + 0.5 * self.ret_patches.on_slice(z, x, y)
        t_gg, t_ret = self.thresholds
        return gg - t_gg, ret - t_ret

    def shade(
        self,
        lung_hu: np.ndarray,
        z: float,
        x: np.ndarray,
        y: np.ndarray,
        gg_excess: np.ndarray,
        gg: np.ndarray,
        ret: np.ndarray,
        pixel_mm: float,
    ) -> np.ndarray:
        """Lung HU with the lesions drawn in (ground glass haze, reticular lines)."""
        hu = lung_hu
        if gg.any():
            tex = self.gg_texture.on_slice(z, x, y)
            strength = np.clip(0.35 + gg_excess / 0.9, 0.35, 1.0)
            target = GG_HU[0] + (GG_HU[1] - GG_HU[0]) * strength + 35.0 * tex
            hu = np.where(gg, hu + (target - hu) * (0.55 + 0.45 * strength), hu)
        if ret.any():
            f = self.ret_lines.on_slice(z, x, y)
            grad = float(np.sqrt(np.mean(np.sum(self.ret_lines.k[:, :2] ** 2, axis=1)) / 2))
            half = max(RET_LINE_HALF_WIDTH_MM, 0.5 * pixel_mm)
            line = np.exp(-((f / (grad * half)) ** 2)) * (RET_LINE_HALF_WIDTH_MM / half) ** 0.5
            base = hu + RET_BACKGROUND_RISE
            hu = np.where(ret, base + (RET_LINE_HU - base) * line, hu)
        return hu


def sample_disease(rng: np.random.Generator, pixel_mm: float) -> Disease:
    """A random patient's disease (about a fifth of patients are healthy; severity skewed to mild)."""
    healthy = bool(rng.random() < HEALTHY_PATIENT_SHARE)
    severity = 0.0 if healthy else float(min(rng.gamma(*SEVERITY_GAMMA), SEVERITY_MAX))
    mix = rng.uniform(0.0, 1.0)
    ret_wavelength = (max(5.0, 3.2 * pixel_mm), max(9.0, 4.5 * pixel_mm))
    return Disease(
        healthy=healthy,
        severity=severity,
        gg_weight=0.55 + 0.45 * mix,
        ret_weight=1.0 - 0.45 * mix,
        subpleural_mm=rng.uniform(10, 25),
        patches=WaveField.sample(rng, 16, (30.0, 80.0)),
        gg_patches=WaveField.sample(rng, 12, (20.0, 50.0)),
        ret_patches=WaveField.sample(rng, 12, (20.0, 50.0)),
        gg_texture=WaveField.sample(rng, 16, (max(3.0, 2.5 * pixel_mm), max(8.0, 4 * pixel_mm))),
        ret_lines=WaveField.sample(rng, 24, ret_wavelength),
    )
