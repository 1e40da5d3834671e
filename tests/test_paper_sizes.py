"""Both paper presets at their real sizes (slow tier): two training steps and one prediction of each network at
the paper's sizes and its preset's batch, through the training engine with the network's own task on synthetic
inputs (benchmarks/paper_sizes.py builds them and times the same runs). On a CPU each takes minutes and may need
more memory than a small machine has (extrapolated from the benchmark at reduced sizes on 2026-12-07: ~0.24 kB a
crop voxel for the L-Net, ~12.8 kB an image pixel for the S-Net, with the shifted-sum depthwise convolution of the
CPU); there the L-Net test is skipped with the host memory it needs, and the S-Net's trains 2 slices a step
instead of the preset's 10."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from paper_sizes import lnet_case, run_case, snet_case

from sscjax.domain import LEVELS, SCORES

pytestmark = pytest.mark.slow
GB = 1 << 30


def host_memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB


def enough_memory(gb: float) -> bool:
    """Whether the host has `gb` GiB for a CPU run (an accelerator holds the activations in its own memory)."""
    return jax.default_backend() != "cpu" or host_memory_gb() >= gb


def needs_host_memory(gb: float) -> None:
    """Skip on a CPU with less memory than `gb` GiB."""
    if not enough_memory(gb):
        pytest.skip(f"needs about {gb:g} GiB of memory on a CPU; this machine has {host_memory_gb():.0f}")


def test_the_paper_lnet_trains_and_predicts_on_256_cubed_volumes_with_192_slice_crops():
    needs_host_memory(16)
    case = lnet_case()
    assert case.config.data.size == (256, 256, 256) and case.config.data.crop == 192
    assert case.predict_inputs.shape == (case.config.train.predict_batch, 192, 256, 256, 1)
    outcome = run_case(case, steps=2, predictions=1)
    assert len(outcome.losses) == 2 and np.isfinite(outcome.losses).all()
    assert outcome.outputs.shape == (case.config.train.predict_batch, len(LEVELS))
    assert np.isfinite(outcome.outputs).all()


def test_the_paper_snet_trains_and_predicts_on_512_pixel_slices():
    # the preset's batch of 10 needs about 40 GiB on a CPU; with less, 2 slices a step (9.2 GB measured by
    # benchmarks/paper_sizes.py): the same network, slice size, loss and loader, a fifth of the activations
    case = snet_case(batch=None if enough_memory(40) else 2)
    assert case.config.data.image_size == 512 and case.config.model.name == "convnext_tiny"
    assert case.config.synthesis and case.config.balanced and case.config.data.augment
    outcome = run_case(case, steps=2, predictions=1)
    assert len(outcome.losses) == 2 and np.isfinite(outcome.losses).all()
    assert outcome.outputs.shape == (case.config.train.predict_batch, len(SCORES))
    assert ((outcome.outputs >= 0) & (outcome.outputs <= 100)).all()  # scores in %, bounded
