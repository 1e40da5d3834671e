"""Balanced sampling against score imbalance: a sample's probability is inversely proportional to the
frequency of its TOT score group, so every group present is drawn equally often.

Groups are score categories of `bin_width` %: group = floor(TOT / bin_width + 1/2), i.e. the nearest
multiple of bin_width (halves round up). `power` tempers the balance: a group is drawn with probability
proportional to its size^(1 - power), so 1 (the paper) draws every group equally often and 0 is uniform sampling;
in between, rare groups are drawn more often than they occur but a group of one or two levels does not get as
many draws as all the healthy slices together. The default 5 % gives the 21 Goh categories 0, 5, ..., 100; a
coarser width (10, 20) pools neighbouring categories when the small ones hold too few samples.
"""

from __future__ import annotations

import numpy as np

from sscjax.domain import SCORE_STEP
from sscjax.errors import ConfigError

DEFAULT_BIN_WIDTH = float(SCORE_STEP)


def score_groups(tot: np.ndarray, bin_width: float = DEFAULT_BIN_WIDTH) -> np.ndarray:
    """The group (category index) of each TOT score in %."""
    if bin_width <= 0:
        raise ConfigError(f"score bin width must be > 0 %, not {bin_width}")
    return np.floor(np.asarray(tot, dtype=np.float64) / bin_width + 0.5).astype(np.int64)


class Sampler:
    """Draws sample indices: balanced over TOT groups (a group, uniform or tempered by `power`, then a uniform
    member) or uniform."""

    def __init__(
        self, tot: np.ndarray, balanced: bool = True, bin_width: float = DEFAULT_BIN_WIDTH, power: float = 1.0
    ):
        groups = score_groups(tot, bin_width)
        if len(groups) == 0:
            raise ConfigError("cannot sample from an empty set of slices")
        if not 0 <= power <= 1:
            raise ConfigError(f"balance power {power} outside 0..1")
        self.size = len(groups)
        self.balanced = balanced
        self.order = np.argsort(groups, kind="stable")
        _, self.starts, self.counts = np.unique(groups[self.order], return_index=True, return_counts=True)
        weights = self.counts ** (1.0 - power)
        self.cumulative = None if power == 1 else np.cumsum(weights) / weights.sum()

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n sample indices (with replacement), deterministic from the generator's state."""
        if not self.balanced:
            return rng.integers(0, self.size, size=n)
        if self.cumulative is None:
            group = rng.integers(0, len(self.counts), size=n)
        else:
            group = np.minimum(np.searchsorted(self.cumulative, rng.random(n), side="right"), len(self.counts) - 1)
        member = np.floor(rng.random(n) * self.counts[group]).astype(np.int64)
        return self.order[self.starts[group] + np.minimum(member, self.counts[group] - 1)]
