"""Percentile filters: keep the top X% of the scored rows by a model score, the way DataComp filters its pool.

An absolute threshold (``clip_min``, ``aesthetic_min`` in :class:`filters.rules.FilterConfig`) judges a row alone;
a percentile needs the whole input, so these filters run once, on the driver, in curation's global step (where
deduplication already gathers a few columns of every row): the score columns of the population are gathered with
them, and no second read of the data is made.

Definitions (the same for every percentile filter):

- **Population**: the rows that reached scoring and were not quarantined (rows quarantined by the reader, the
  decoder or as a ``duplicate_key`` are not judged at all), whatever their rule reasons: a row that another filter
  (``clip_min`` included) rejects still counts, and so does a duplicate. A row whose score is NaN cannot be ranked:
  it is left out of the population and never rejected here (like the absolute filters, which never reject a NaN).
- **Threshold**: with ``N`` rows in the population and ``percent`` = P, ``k = ceil(N · P / 100)`` (P read as the
  decimal it was written as, so ``N = 10, P = 30`` gives exactly 3), and the threshold is the k-th highest score
  (``P = 100``: the lowest score, so every row is kept). It depends on the multiset of scores only, not on the order
  the rows arrive in.
- **Decision**: a row is rejected with the filter's reason when its score is strictly below the threshold; rows
  equal to it are kept, so ties at the threshold are all kept and at least ``k`` rows pass. An empty population has
  no threshold (``None``) and rejects nothing.
- **With the absolute threshold**: both apply and a row must pass both. The percentile is computed over the
  population above, not over the rows that passed ``clip_min``, so with both set the kept share is at most P%; a row
  failing both carries both reasons (``low_clip_score`` and ``below_clip_percentile``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from filters.rules import FilterConfig, check_percent


@dataclass(frozen=True)
class PercentileFilter:
    """One named, versioned top-percent decision over a score column of the whole population."""

    name: str
    version: str
    reason: str
    score: str
    """The score column ranked (higher is better)."""
    percent_field: str
    """The :class:`FilterConfig` field holding the percent kept (null: the filter is off)."""


#: Percentile filters in the order their reasons are listed in the audit (after the rule filters' reasons).
PERCENTILE_FILTERS: tuple[PercentileFilter, ...] = (
    PercentileFilter("clip_percentile", "1", "below_clip_percentile", "clip_score", "clip_top_percent"),
    PercentileFilter(
        "aesthetic_percentile", "1", "below_aesthetic_percentile", "aesthetic_score", "aesthetic_top_percent"
    ),
)


@dataclass(frozen=True)
class PercentileCut:
    """What one percentile filter decided over its population (recorded in the curation manifest)."""

    score: str
    """The score column ranked."""
    reason: str
    """The reason of the rows below the threshold."""
    percent: float
    """The percent of the population asked to be kept."""
    population: int
    """Rows ranked: judged rows with a score (see the module docstring)."""
    threshold: float | None
    """The k-th highest score; rows below it are rejected. None for an empty population."""
    at_or_above: int
    """Population rows with a score ≥ the threshold (≥ k: ties at the threshold are all kept)."""
    below: int
    """Population rows rejected with :attr:`reason`."""

    def to_dict(self) -> dict:
        """The cut as plain JSON (the manifest's ``percentiles`` entry, less its config key)."""
        return {
            "score": self.score,
            "reason": self.reason,
            "percent": self.percent,
            "population": self.population,
            "threshold": self.threshold,
            "at_or_above": self.at_or_above,
            "below": self.below,
        }


def keep_count(population: int, percent: float) -> int:
    """``k = ceil(population · percent / 100)``, with ``percent`` taken as the decimal it was written as."""
    if percent is None:
        raise ValueError("percent=None: a percentile filter that is off keeps every row; give a percent in (0, 100]")
    check_percent("percent", percent)
    if population < 0:
        raise ValueError(f"population={population!r}: must be ≥ 0")
    return math.ceil(Fraction(repr(float(percent))) * population / 100)


def top_percent_threshold(scores: np.ndarray, percent: float) -> float | None:
    """The score of the ``k``-th highest of the non-NaN ``scores`` (:func:`keep_count`); None when there are none.

    Keeping the rows whose score is ≥ this value keeps the top ``percent`` % (more when scores tie at it)."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[~np.isnan(s)]
    k = keep_count(len(s), percent)
    if k == 0:
        return None
    # Position n - k of the ascending order is the k-th highest; partition finds it in linear time.
    return float(np.partition(s, len(s) - k)[len(s) - k])


def enabled(cfg: FilterConfig,
            filters: tuple[PercentileFilter, ...] = PERCENTILE_FILTERS) -> tuple[PercentileFilter, ...]:  # fmt: skip
    """The percentile filters whose percent is set in ``cfg``."""
    return tuple(f for f in filters if getattr(cfg, f.percent_field) is not None)


def apply_percentiles(scores: dict[str, np.ndarray], cfg: FilterConfig, *, rows: int,
                      filters: tuple[PercentileFilter, ...] = PERCENTILE_FILTERS,
                      ) -> tuple[list[list[str]], dict[str, PercentileCut]]:  # fmt: skip
    """Reasons per row of a population of ``rows`` rows, and each enabled filter's cut (by filter name).

    ``scores`` holds the score column of every enabled filter, one value per row (the caller leaves the quarantined
    rows out; NaN scores are left out here). Reasons are added in ``filters`` order; with no filter enabled every
    row gets none."""
    on = enabled(cfg, filters)
    for f in on:
        if f.score not in scores or len(scores[f.score]) != rows:
            raise ValueError(f"apply_percentiles: {f.name} needs {f.score!r} with {rows} values, one per row")
    reasons: list[list[str]] = [[] for _ in range(rows)]
    cuts: dict[str, PercentileCut] = {}
    for f in on:
        percent = float(getattr(cfg, f.percent_field))
        s = np.asarray(scores[f.score], dtype=np.float64)
        threshold = top_percent_threshold(s, percent)
        ranked = ~np.isnan(s)
        below = ranked & (s < threshold) if threshold is not None else np.zeros(rows, dtype=bool)
        for i in np.flatnonzero(below):
            reasons[i].append(f.reason)
        cuts[f.name] = PercentileCut(
            score=f.score,
            reason=f.reason,
            percent=percent,
            population=int(ranked.sum()),
            threshold=threshold,
            at_or_above=int(ranked.sum() - below.sum()),
            below=int(below.sum()),
        )
    return reasons, cuts


def percentile_versions() -> dict[str, str]:
    """``{filter name: version}`` of every percentile filter, for the manifest."""
    return {f.name: f.version for f in PERCENTILE_FILTERS}
