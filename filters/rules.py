"""Per-row curation filters: pure functions over a record batch.

A batch is a ``dict[str, np.ndarray]`` (Ray Data's numpy batch format). Each filter is a :class:`Filter`: a name,
a version (bumped whenever its behaviour changes, and recorded in the manifest), the columns it reads, the reason it
emits, and a function ``fn(batch, cfg) -> np.ndarray[bool]`` that marks the rows to reject. Thresholds come from
:class:`FilterConfig`; nothing is hard-coded in a filter. The top-percent filters (``clip_top_percent``,
``aesthetic_top_percent``) need the whole input, not a batch: they are in :mod:`filters.percentile`.

Filters run only over decodable rows (``decodable`` column true); model scores for other rows are NaN. A NaN score
never rejects (it cannot be judged) — such rows are quarantined before scoring anyway.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Batch = dict[str, np.ndarray]

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the rule filters."""

    min_side: int = 256
    """Smallest allowed shorter image side in pixels (``low_resolution`` below it)."""
    max_aspect: float = 3.0
    """Largest allowed long side / short side (``bad_aspect`` above it)."""
    caption_min_words: int = 3
    """Fewest whitespace-separated words in a caption (``caption_too_short`` below it)."""
    caption_max_chars: int = 300
    """Most characters in a caption (``caption_too_long`` above it)."""
    watermark_max: float = 0.8
    """Highest allowed watermark probability (``watermark`` above it)."""
    aesthetic_min: float = 4.5
    """Lowest allowed aesthetic score, on the scorer's own scale (``low_aesthetic`` below it)."""
    clip_min: float = 20.0
    """Lowest allowed CLIP image-text score, cosine × 100 (``low_clip_score`` below it)."""
    clip_top_percent: float | None = None
    """Keep only the top this-many percent of the scored rows by CLIP score, in (0, 100] (``below_clip_percentile``
    below the threshold, :mod:`filters.percentile`); null: off. Applies on top of ``clip_min``."""
    aesthetic_top_percent: float | None = None
    """Keep only the top this-many percent of the scored rows by aesthetic score, in (0, 100]
    (``below_aesthetic_percentile``, :mod:`filters.percentile`); null: off. Applies on top of ``aesthetic_min``."""

    def __post_init__(self) -> None:
        if self.min_side < 1:
            raise ValueError(f"min_side={self.min_side!r}: must be ≥ 1 pixel")
        if self.max_aspect < 1.0:
            raise ValueError(f"max_aspect={self.max_aspect!r}: must be ≥ 1.0 (long side / short side)")
        if self.caption_min_words < 0:
            raise ValueError(f"caption_min_words={self.caption_min_words!r}: must be ≥ 0")
        if self.caption_max_chars < 1:
            raise ValueError(f"caption_max_chars={self.caption_max_chars!r}: must be ≥ 1")
        if not 0.0 <= self.watermark_max <= 1.0:
            raise ValueError(f"watermark_max={self.watermark_max!r}: must be a probability in [0, 1]")
        if not -100.0 <= self.clip_min <= 100.0:
            raise ValueError(f"clip_min={self.clip_min!r}: must be in [-100, 100] (cosine × 100)")
        for name in ("clip_top_percent", "aesthetic_top_percent"):
            check_percent(name, getattr(self, name))


def check_percent(name: str, percent: float | None) -> None:
    """Raise ``ValueError`` naming ``name=value`` unless ``percent`` is None (off) or a percent in (0, 100]."""
    if percent is None:
        return
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0.0 < percent <= 100.0:
        raise ValueError(f"{name}={percent!r}: must be a percent in (0, 100] of the scored rows to keep (e.g. 30 "
                         "keeps the top 30%), or null for no percentile filter")  # fmt: skip


@dataclass(frozen=True)
class Filter:
    """One named, versioned decision over a batch."""

    name: str
    version: str
    reason: str
    reads: tuple[str, ...]
    fn: Callable[[Batch, FilterConfig], np.ndarray]


def _captions(batch: Batch) -> list[str]:
    return ["" if c is None else str(c) for c in batch["caption"]]


def min_resolution(batch: Batch, cfg: FilterConfig) -> np.ndarray:
    """Reject images whose shorter side is below ``min_side``."""
    short = np.minimum(batch["width"].astype(np.int64), batch["height"].astype(np.int64))
    return short < cfg.min_side


def aspect_ratio(batch: Batch, cfg: FilterConfig) -> np.ndarray:
    """Reject images whose long/short side ratio exceeds ``max_aspect``."""
    w = batch["width"].astype(np.float64)
    h = batch["height"].astype(np.float64)
    short = np.maximum(np.minimum(w, h), 1.0)
    return np.maximum(w, h) / short > cfg.max_aspect


def caption_empty(batch: Batch, cfg: FilterConfig) -> np.ndarray:
    """Reject rows with a missing, empty or whitespace-only caption."""
    return np.array([not c.strip() for c in _captions(batch)], dtype=bool)


def caption_too_short(batch: Batch, cfg: FilterConfig) -> np.ndarray:
    """Reject non-empty captions with fewer than ``caption_min_words`` words."""
    return np.array([0 < len(c.split()) < cfg.caption_min_words for c in _captions(batch)], dtype=bool)


def caption_too_long(batch: Batch, cfg: FilterConfig) -> np.ndarray:
    """Reject captions longer than ``caption_max_chars`` characters."""
    return np.array([len(c) > cfg.caption_max_chars for c in _captions(batch)], dtype=bool)


def caption_control_chars(batch: Batch, cfg: FilterConfig) -> np.ndarray:
    """Reject captions containing control characters other than tab and newline."""
    return np.array([bool(_CONTROL.search(c)) for c in _captions(batch)], dtype=bool)


def _above(scores: np.ndarray, threshold: float) -> np.ndarray:
    s = scores.astype(np.float64)
    return np.where(np.isnan(s), False, s > threshold)


def _below(scores: np.ndarray, threshold: float) -> np.ndarray:
    s = scores.astype(np.float64)
    return np.where(np.isnan(s), False, s < threshold)


def watermark(batch: Batch, cfg: FilterConfig) -> np.ndarray:
    """Reject images whose watermark probability exceeds ``watermark_max``."""
    return _above(batch["watermark_prob"], cfg.watermark_max)


def aesthetic(batch: Batch, cfg: FilterConfig) -> np.ndarray:
    """Reject images whose aesthetic score is below ``aesthetic_min``."""
    return _below(batch["aesthetic_score"], cfg.aesthetic_min)


def clip_score(batch: Batch, cfg: FilterConfig) -> np.ndarray:
    """Reject pairs whose CLIP image-text score is below ``clip_min``."""
    return _below(batch["clip_score"], cfg.clip_min)


#: Rule filters in the order their reasons are listed in the audit.
FILTERS: tuple[Filter, ...] = (
    Filter("min_resolution", "1", "low_resolution", ("width", "height"), min_resolution),
    Filter("aspect_ratio", "1", "bad_aspect", ("width", "height"), aspect_ratio),
    Filter("caption_empty", "1", "caption_empty", ("caption",), caption_empty),
    Filter("caption_too_short", "1", "caption_too_short", ("caption",), caption_too_short),
    Filter("caption_too_long", "1", "caption_too_long", ("caption",), caption_too_long),
    Filter("caption_control_chars", "1", "caption_control_chars", ("caption",), caption_control_chars),
    Filter("watermark", "1", "watermark", ("watermark_prob",), watermark),
    Filter("aesthetic", "1", "low_aesthetic", ("aesthetic_score",), aesthetic),
    Filter("clip_score", "1", "low_clip_score", ("clip_score",), clip_score),
)


def filter_versions() -> dict[str, str]:
    """``{filter name: version}`` of every rule filter, for the manifest."""
    return {f.name: f.version for f in FILTERS}


def apply_filters(batch: Batch, cfg: FilterConfig, filters: tuple[Filter, ...] = FILTERS) -> list[list[str]]:
    """Reasons per row: every filter whose mask is true adds its reason, in ``filters`` order.

    Only rows with ``decodable`` true are judged; other rows get an empty list here (their quarantine reason is
    set by the reader or decoder).
    """
    n = len(batch["key"])
    judged = batch["decodable"].astype(bool)
    reasons: list[list[str]] = [[] for _ in range(n)]
    for f in filters:
        mask = f.fn(batch, cfg) & judged
        for i in np.flatnonzero(mask):
            reasons[i].append(f.reason)
    return reasons
