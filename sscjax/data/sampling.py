"""Balanced sampling against score imbalance: a sample's probability is inversely proportional to the
frequency of its TOT score group, so every group present is drawn equally often.

Groups are score categories of `bin_width` %: group = floor(TOT / bin_width + 1/2), i.e. the nearest
multiple of bin_width (halves round up). The default 5 % gives the 21 Goh categories 0, 5, ..., 100; a coarser
width (10, 20) pools neighbouring categories when the small ones hold too few samples.
"""

from __future__ import annotations

import numpy as np

from sscjax.errors import ConfigError

DEFAULT_BIN_WIDTH = 5.0


def score_groups(tot: np.ndarray, bin_width: float = DEFAULT_BIN_WIDTH) -> np.ndarray:
    """The group (category index) of each TOT score in %."""
    if bin_width <= 0:
        raise ConfigError(f"score bin width must be > 0 %, not {bin_width}")
    return np.floor(np.asarray(tot, dtype=np.float64) / bin_width + 0.5).astype(np.int64)


def balanced_probabilities(tot: np.ndarray, bin_width: float = DEFAULT_BIN_WIDTH) -> np.ndarray:
    """(N,) sampling probability of each sample: 1 / (number of groups * size of its group)."""
    _, inverse, counts = np.unique(score_groups(tot, bin_width), return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse])


class Sampler:
    """Draws sample indices: balanced over TOT groups (a uniform group, then a uniform member) or uniform."""

    def __init__(self, tot: np.ndarray, balanced: bool = True, bin_width: float = DEFAULT_BIN_WIDTH):
        groups = score_groups(tot, bin_width)
        if len(groups) == 0:
            raise ConfigError("cannot sample from an empty set of slices")
        self.size = len(groups)
        self.balanced = balanced
        self.order = np.argsort(groups, kind="stable")
        _, self.starts, self.counts = np.unique(groups[self.order], return_index=True, return_counts=True)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n sample indices (with replacement), deterministic from the generator's state."""
        if not self.balanced:
            return rng.integers(0, self.size, size=n)
        group = rng.integers(0, len(self.counts), size=n)
        member = np.floor(rng.random(n) * self.counts[group]).astype(np.int64)
        return self.order[self.starts[group] + np.minimum(member, self.counts[group] - 1)]
