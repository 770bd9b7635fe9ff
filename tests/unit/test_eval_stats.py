"""KID and the bootstrap intervals against what they must do: KID unbiased at small N where the Fréchet distance is
not, equal to a hand-computed MMD², intervals that cover the truth at about their level, reproducible by seed."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.gate import apart as separated
from models.eval_stats import bootstrap, kid, mean_interval, subsample_interval
from models.evaluation import frechet_distance


def test_kid_is_the_unbiased_mmd_squared_of_the_cubic_kernel():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = np.array([[0.0, 0.0], [2.0, 0.0]])

    def k(x, y):
        return (x @ y / 2 + 1) ** 3

    within_a = sum(k(a[i], a[j]) for i in range(3) for j in range(3) if i != j) / 6
    within_b = sum(k(b[i], b[j]) for i in range(2) for j in range(2) if i != j) / 2
    cross = sum(k(x, y) for x in a for y in b) / 6
    assert kid(a, b) == pytest.approx(within_a + within_b - 2 * cross, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 samples"):
        kid(a[:1], b)


def test_at_small_n_kid_of_one_distribution_is_zero_on_average_where_the_frechet_distance_is_biased():
    rng = np.random.default_rng(0)
    kids, fds = [], []
    for _ in range(200):
        a, b = rng.normal(size=(12, 16)), rng.normal(size=(12, 16))
        kids.append(kid(a, b))
        fds.append(frechet_distance(a, b))
    spread = np.std(kids) / np.sqrt(len(kids))
    assert abs(np.mean(kids)) < 3 * spread  # unbiased: zero within its standard error
    assert np.mean(fds) > 10 * np.std(fds) / np.sqrt(len(fds))  # the Fréchet distance of one distribution is not
    shifted = np.mean([kid(rng.normal(size=(12, 16)), rng.normal(size=(12, 16)) + 1.0) for _ in range(50)])
    assert shifted > 10 * spread  # and KID sees a real difference


def test_a_bootstrap_interval_covers_the_true_mean_at_about_its_level_and_is_reproducible():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        lo, hi = mean_interval(rng.normal(loc=3.0, size=40), n=300, seed=7)
        covered += lo <= 3.0 <= hi
    assert 0.88 <= covered / 200 <= 0.99  # a percentile interval at n = 40 is a little short of 95%
    values = rng.normal(size=30)
    assert mean_interval(values, seed=3) == mean_interval(values, seed=3)
    assert all(np.isnan(mean_interval(np.array([np.nan, np.nan]))))  # nothing to average: no interval


def test_bootstrap_resamples_every_set_and_separation_needs_disjoint_intervals():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(30, 4)) + 2.0
    lo, hi = bootstrap(frechet_distance, a, b, n=100, seed=0)
    assert lo < frechet_distance(a, b) < hi and lo > 0
    assert np.isnan(bootstrap(frechet_distance, a, b, n=0)[0])
    assert separated((1.0, 2.0), (2.5, 3.0), "lower") and not separated((1.0, 2.6), (2.5, 3.0), "lower")
    assert separated((5.0, 6.0), (1.0, 4.0), "higher") and not separated((1.0, 2.0), (2.5, 3.0), "higher")
    assert not separated((float("nan"), 1.0), (2.0, 3.0), "lower")


def test_a_set_distance_interval_contains_its_figure_at_small_n_where_the_bootstrap_of_a_floor_does_not():
    """Two draws of one distribution at N = 8: a bootstrap replicate repeats rows, which pushes the Fréchet distance
    up by itself, so its percentile interval can miss the floor it is meant to bound; half-set subsampling (without
    replacement) keeps the figure inside and its width shrinks as N grows."""
    rng = np.random.default_rng(4)
    missed = 0
    for _ in range(20):
        a, b = rng.normal(size=(8, 6)), rng.normal(size=(8, 6))
        figure = frechet_distance(a, b)
        lo, hi = subsample_interval(frechet_distance, a, b, n=100, seed=0)
        assert lo <= figure <= hi
        klo, khi = subsample_interval(kid, a, b, n=100, seed=0)
        assert klo <= kid(a, b) <= khi
        blo, _ = bootstrap(frechet_distance, a, b, n=100, seed=0)
        missed += blo > figure
    assert missed >= 10  # the with-replacement interval lies above the figure in most draws
    widths = []
    for size in (16, 256):
        a, b = rng.normal(size=(size, 6)), rng.normal(size=(size, 6)) + 0.5
        lo, hi = subsample_interval(kid, a, b, n=100, seed=0)
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2
    a, b = rng.normal(size=(8, 6)), rng.normal(size=(8, 6))
    assert subsample_interval(kid, a, b, seed=5) == subsample_interval(kid, a, b, seed=5)
    assert np.isnan(subsample_interval(kid, a, b, n=0)[0])
    with pytest.raises(ValueError, match="fraction"):
        subsample_interval(kid, a, b, fraction=1.0)


def test_for_two_draws_of_one_distribution_the_kid_interval_covers_zero_where_the_bootstrap_one_does_not():
    """KID is unbiased, so two sets from one distribution have a true KID of 0: the half-set interval covers it at
    about its level; the with-replacement bootstrap interval almost never does (repeated rows raise the figure)."""
    rng = np.random.default_rng(5)
    sub = boot = 0
    for _ in range(40):
        a, b = rng.normal(size=(24, 16)), rng.normal(size=(24, 16))
        lo, hi = subsample_interval(kid, a, b, n=100, seed=0)
        sub += lo <= 0.0 <= hi
        lo, hi = bootstrap(kid, a, b, n=100, seed=0)
        boot += lo <= 0.0 <= hi
    assert sub >= 34 and boot <= 6
