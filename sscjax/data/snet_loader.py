"""S-Net training batches: balanced real slices plus synthetic ones, augmented; deterministic per step.

Batch `step` is drawn from numpy's default_rng([seed, step]) alone, so a resumed run repeats the same batches
and every host of a data-parallel run draws the same global batch. Of the global batch,
round(batch_size * synthetic_fraction) samples are synthetic (made from uniformly drawn healthy slices), the
rest real slices drawn by the `Sampler` (balanced over TOT groups, or uniform); the samples are shuffled, then
every sample is augmented. All random draws for the global batch are made first; a host then renders only its
own rows (`process_index`-th contiguous block of batch_size / process_count), vectorised with numpy over blocks
of about BLOCK_PIXELS pixels (16 images of 128 px, one of 512 px): the result does not depend on the blocking.
The training engine renders the next batches in background threads (`sscjax.train.prefetch_batches`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sscjax.data.augment import AffineParams, AugmentConfig, augment, draw_affine, lung_boxes
from sscjax.data.sampling import DEFAULT_BIN_WIDTH, Sampler
from sscjax.data.slices import SliceSet
from sscjax.data.synthesis import Patterns, SynthesisConfig, SynthesisParams, draw_synthesis, synthesize
from sscjax.errors import ConfigError

Batch = dict[str, np.ndarray]
# Samples are rendered in blocks of about this many pixels: large enough that numpy's per-call overhead is
# amortised, small enough that the temporaries stay in the CPU caches (whole 512 px batches run several
# times slower than blocks of one or two images on this machine; see benchmarks/loader.py).
BLOCK_PIXELS = 2**18


@dataclass(frozen=True)
class BatchPlan:
    """Every random draw of one global batch (row i = sample i of the global batch)."""

    source: np.ndarray  # (B,) index into the SliceSet
    synthetic: np.ndarray  # (B,) bool
    synthesis_row: np.ndarray  # (B,) row in `synthesis` for synthetic samples, -1 for real ones
    synthesis: SynthesisParams
    affine: AffineParams


class SNetLoader:
    """Training batches {"image": (b, H, W, 1) float32 in window units, "target": (b, 3) float32 TOT, GG, RET %,
    "synthetic": (b,) bool} for step = 0, 1, ...; b = batch_size / process_count rows on each host."""

    def __init__(
        self,
        slices: SliceSet,
        batch_size: int,
        seed: int,
        *,
        patterns: Patterns | None = None,
        synthetic_fraction: float = 0.5,
        balanced: bool = True,
        synthesis: bool = True,
        augment: bool = True,
        bin_width: float = DEFAULT_BIN_WIDTH,
        balance_power: float = 1.0,
        synthesis_config: SynthesisConfig = SynthesisConfig(),
        augment_config: AugmentConfig = AugmentConfig(),
        process_index: int = 0,
        process_count: int = 1,
        block_pixels: int = BLOCK_PIXELS,
    ):
        if batch_size < 1 or batch_size % process_count:
            raise ConfigError(
                f"batch size {batch_size} must be positive and divisible by the {process_count} processes"
            )
        if not 0 <= process_index < process_count:
            raise ConfigError(f"process index {process_index} outside 0..{process_count - 1}")
        if not 0 <= synthetic_fraction <= 1:
            raise ConfigError(f"synthetic fraction {synthetic_fraction} outside 0..1")
        self.slices = slices
        self.batch_size = batch_size
        self.seed = seed
        self.n_synthetic = round(batch_size * synthetic_fraction) if synthesis else 0
        self.augment = augment
        self.block_pixels = block_pixels
        self.synthesis_config = synthesis_config
        self.augment_config = augment_config
        self.rows = np.arange(batch_size).reshape(process_count, -1)[process_index]
        self.sampler = Sampler(slices.scores[:, 0], balanced=balanced, bin_width=bin_width, power=balance_power)
        self.healthy = np.flatnonzero(slices.healthy)
        self.boxes = lung_boxes(slices.lung)
        if self.n_synthetic:
            if patterns is None:
                raise ConfigError("data synthesis needs the GG and RET texture patterns (or switch synthesis off)")
            if len(self.healthy) == 0:
                raise ConfigError("data synthesis needs healthy training slices (TOT = 0 with lung); there are none")
            # Patch pixels per image pixel: textures keep their physical size whatever the image size.
            self.texture_step = slices.spacing_yx.mean(axis=1) / patterns.spacing_mm
            self.patterns = patterns.smoothed(float(np.median(self.texture_step[self.healthy])))

    def plan(self, step: int) -> BatchPlan:
        """All random draws of global batch `step`, from default_rng([seed, step])."""
        rng = np.random.default_rng([self.seed, step])
        n_syn, n = self.n_synthetic, self.batch_size
        synthetic_source = self.healthy[rng.integers(0, len(self.healthy), size=n_syn)] if n_syn else np.zeros(0, int)
        real_source = self.sampler.draw(rng, n - n_syn)
        synthesis = draw_synthesis(rng, n_syn, self.synthesis_config)
        affine = draw_affine(rng, n, self.augment_config)
        order = rng.permutation(n)
        synthetic = order < n_syn
        return BatchPlan(
            source=np.concatenate([synthetic_source, real_source])[order],
            synthetic=synthetic,
            synthesis_row=np.where(synthetic, order, -1),
            synthesis=synthesis,
            affine=affine,
        )

    def render(self, plan: BatchPlan, rows: np.ndarray) -> Batch:
        """The given rows of a planned global batch, computed in blocks of about `block_pixels` pixels."""
        rows = np.asarray(rows)
        size = self.slices.images.shape[1] * self.slices.images.shape[2]
        per_block = max(1, self.block_pixels // size)
        blocks = [self._render_block(plan, rows[i : i + per_block]) for i in range(0, len(rows), per_block)]
        return {
            "image": np.concatenate([b[0] for b in blocks])[..., None],
            "target": np.concatenate([b[1] for b in blocks]),
            "synthetic": plan.synthetic[rows],
        }

    def _render_block(self, plan: BatchPlan, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images and targets of some rows: synthesis on the synthetic ones, then augmentation, all vectorised."""
        source, synthetic = plan.source[rows], plan.synthetic[rows]
        images = self.slices.images[source]
        target = self.slices.scores[source].astype(np.float32)
        made = np.flatnonzero(synthetic)
        if len(made):
            result = synthesize(
                images[made],
                self.slices.lung[source[made]],
                target[made],
                plan.synthesis.take(plan.synthesis_row[rows][made]),
                self.patterns,
                self.synthesis_config,
                self.texture_step[source[made]],
            )
            images[made], target[made] = result.images, result.targets
        if self.augment:
            images, _ = augment(images, None, plan.affine.take(rows), self.augment_config, self.boxes[source])
        return images, target

    def batch(self, step: int) -> Batch:
        """This host's rows of global batch `step`."""
        return self.render(self.plan(step), self.rows)
