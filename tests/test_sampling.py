"""Balanced sampling: TOT groups, probabilities, and drawn frequencies against a real statistical bound."""

import numpy as np
import pytest
from scipy import stats

from sscjax.data.sampling import DEFAULT_BIN_WIDTH, Sampler, score_groups
from sscjax.errors import ConfigError

# A skewed score distribution like the paper's: most levels healthy, few with high TOT.
SIZES = {0.0: 600, 5.0: 150, 10.0: 60, 35.0: 12, 80.0: 3, 100.0: 1}
TOT = np.random.default_rng(0).permutation(np.concatenate([np.full(n, t) for t, n in SIZES.items()]))


def balanced_probabilities(tot: np.ndarray, bin_width: float = DEFAULT_BIN_WIDTH) -> np.ndarray:
    """(N,) the paper's sampling probability of each sample: 1 / (number of groups * size of its group); the
    reference the Sampler's draws are checked against."""
    _, inverse, counts = np.unique(score_groups(tot, bin_width), return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse])


def test_groups_are_the_nearest_score_category():
    np.testing.assert_array_equal(score_groups([0, 2.4, 2.5, 5, 7.4, 100]), [0, 0, 1, 1, 1, 20])
    np.testing.assert_array_equal(score_groups([0, 4.9, 5, 15, 100], bin_width=10), [0, 0, 1, 2, 10])
    with pytest.raises(ConfigError):
        score_groups([1.0], bin_width=0)


def test_probabilities_are_inverse_group_frequencies():
    p = balanced_probabilities(TOT)
    assert np.isclose(p.sum(), 1.0)
    for t, n in SIZES.items():
        np.testing.assert_allclose(p[t == TOT], 1 / (len(SIZES) * n))


def test_balanced_draws_are_uniform_over_groups_and_members():
    sampler = Sampler(TOT)
    drawn = sampler.draw(np.random.default_rng(42), 30000)
    counts = np.array([np.sum(TOT[drawn] == t) for t in SIZES])
    assert stats.chisquare(counts).pvalue > 1e-3  # uniform over the 6 groups
    # within the healthy group every member is equally likely
    members = np.bincount(drawn[TOT[drawn] == 0], minlength=len(TOT))[TOT == 0]
    assert stats.chisquare(members).pvalue > 1e-3
    # the same generator state gives the same draws
    np.testing.assert_array_equal(drawn, sampler.draw(np.random.default_rng(42), 30000))


def test_unbalanced_draws_follow_the_data_and_coarse_bins_pool_groups():
    drawn = Sampler(TOT, balanced=False).draw(np.random.default_rng(1), 30000)
    counts = np.array([np.sum(TOT[drawn] == t) for t in SIZES])
    expected = np.array(list(SIZES.values())) / len(TOT) * len(drawn)
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    assert stats.chisquare(counts).pvalue < 1e-100  # far from balanced
    coarse = Sampler(TOT, bin_width=50).draw(np.random.default_rng(2), 30000)
    groups = np.bincount(score_groups(TOT[coarse], 50))  # 0..24.9 | 25..74.9 | 75..100
    assert stats.chisquare(groups).pvalue > 1e-3


def test_tempered_balance_draws_groups_by_size_to_one_minus_power():
    for power in (0.0, 0.5):
        drawn = Sampler(TOT, power=power).draw(np.random.default_rng(3), 30000)
        counts = np.array([np.sum(TOT[drawn] == t) for t in SIZES])
        weights = np.array(list(SIZES.values()), float) ** (1 - power)
        assert stats.chisquare(counts, weights / weights.sum() * len(drawn)).pvalue > 1e-3
    with pytest.raises(ConfigError, match="power"):
        Sampler(TOT, power=1.5)
