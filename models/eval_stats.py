"""Set-level statistics of an evaluation at small N: KID beside the Fréchet distance, and bootstrap intervals.

- :func:`kid`: the kernel inception distance, the unbiased estimator of the squared MMD between two feature sets with
  the cubic polynomial kernel ``k(x, y) = (x·y / d + 1)³`` (Bińkowski et al., 2018). Unlike a Fréchet distance it
  has no bias that depends on N, so two sets from one distribution score 0 on average at any N (and single draws can
  be slightly negative).
- :func:`bootstrap`: a percentile interval of any statistic, each set resampled (rows with replacement)
  independently, with a fixed seed so a report is reproducible; :func:`mean_interval` for per-sample means.
- :func:`subsample_interval`: the interval of a set distance (Fréchet or KID). A bootstrap replicate repeats rows,
  and a set with repeats is farther from another set by itself (its covariance shrinks, its self-similarity
  grows): at N = 8 the percentile interval of a floor did not even contain the floor. So set distances are
  resampled without replacement, half of each set at a time, and the spread of the half-set figures around their
  median, scaled to the full N by √(m/N) (the figures are root-N statistics), is placed around the figure as
  computed (subsampling, Politis & Romano 1994). It measures how much the figure moves with the draw of the sets,
  not the Fréchet distance's N-dependent bias: that is what the reference-against-reference floor shows.
  Whether two intervals are apart is the gate's question (:func:`contracts.gate.apart`).

Pure numpy; the evaluation job (:mod:`pipelines.evaluate`) applies them to the features its actors extract.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

LEVEL = 0.95
"""The intervals' coverage."""


def kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased squared MMD of feature sets ``a`` (m, d) and ``b`` (n, d) under ``(x·y / d + 1)³``."""
    m, n = len(a), len(b)
    if m < 2 or n < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {m} and {n}")
    d = a.shape[1]
    a, b = a.astype(np.float64), b.astype(np.float64)
    kaa, kbb, kab = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
    within_a = (kaa.sum() - np.trace(kaa)) / (m * (m - 1))
    within_b = (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
    return float(within_a + within_b - 2 * kab.mean())


def bootstrap(statistic: Callable[..., float], *sets: np.ndarray, n: int = 200, seed: int = 0,
              level: float = LEVEL) -> tuple[float, float]:  # fmt: skip
    """The ``level`` percentile interval of ``statistic(*sets)`` over ``n`` bootstrap replicates (each set's rows
    resampled with replacement, independently); (nan, nan) when ``n`` is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.empty(n)
    for r in range(n):
        values[r] = statistic(*(s[rng.integers(0, len(s), len(s))] for s in sets))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def subsample_interval(statistic: Callable[..., float], *sets: np.ndarray, n: int = 200, seed: int = 0,
                       level: float = LEVEL, fraction: float = 0.5) -> tuple[float, float]:  # fmt: skip
    """The ``level`` interval of a set distance ``statistic(*sets)`` from ``n`` subsamples without replacement
    (``fraction`` of each set's rows, at least 2), see the module docstring; (nan, nan) when ``n`` is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction!r}: must be in (0, 1)")
    rng = np.random.default_rng(seed)
    sizes = [min(len(s), max(2, int(round(fraction * len(s))))) for s in sets]
    values = np.empty(n)
    for r in range(n):
        values[r] = statistic(*(s[rng.choice(len(s), m, replace=False)] for s, m in zip(sets, sizes, strict=True)))
    scale = np.sqrt(min(m / len(s) for s, m in zip(sets, sizes, strict=True)))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail]) - np.median(values)
    estimate = statistic(*sets)
    return float(estimate + scale * lo), float(estimate + scale * hi)


def mean_interval(values: np.ndarray, *, n: int = 200, seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """The bootstrap interval of the mean of per-sample ``values`` (NaNs ignored; (nan, nan) if none is left)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    return bootstrap(lambda v: float(v.mean()), values, n=n, seed=seed, level=level)
