"""Per-clip curation filters for text-video pairs, and the motion and scene-cut measures they rely on.

Batches and filters follow :mod:`filters.rules`: a batch is a ``dict[str, np.ndarray]``, each filter is a
:class:`~filters.rules.Filter` whose ``fn(batch, cfg)`` marks the rows to reject, and every threshold comes from
:class:`VideoFilterConfig`. The caption, resolution and model-score filters of :mod:`filters.rules` are reused as they
are (they read only config fields that :class:`VideoFilterConfig` has too).

Columns of a video batch:

- ``caption`` (object), ``width`` / ``height`` (int64, the SOURCE video's size), ``duration_s`` (float64);
- ``motion_score`` (float64, see :func:`motion_score`), ``watermark_prob`` (max over the sampled frames),
  ``aesthetic_score`` (mean over the sampled frames), ``clip_score`` (the middle sampled frame against the caption,
  cosine × 100); NaN means "not scored" and never rejects;
- ``scene_cuts`` (int64): cuts found inside the clip's frames by :func:`detect_cuts`;
- optionally ``decodable`` (bool): rows where it is false are not judged here (the decoder quarantines them).

Measures over *analysis frames*: a clip is judged on a few frames sampled from it, converted to grey, downscaled and
scaled to [0, 1], stacked as a ``(T, h, w)`` float array. Both measures are per *sampled step*, so they depend on the
sampling rate: the thresholds are tuned for the sampling the pipeline uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from filters.rules import (
    Batch,
    Filter,
    aesthetic,
    caption_control_chars,
    caption_empty,
    caption_too_long,
    caption_too_short,
    clip_score,
    min_resolution,
    watermark,
)

logger = logging.getLogger(__name__)

SCENE_CUT_POLICIES = ("split", "reject", "ignore")
"""What to do with a clip that spans scene cuts: split it into segments, reject it, or ignore the cuts."""

HIST_BINS = 16
"""Grey-level histogram bins of the scene-cut measure."""

CUT_MEDIAN_RATIO = 3.0
"""A step is a cut only if its histogram distance is at least this many times the median of the clip's other steps."""


@dataclass(frozen=True)
class VideoFilterConfig:
    """Thresholds of the video rule filters."""

    min_side: int = 256
    """Smallest allowed shorter side of the SOURCE video in pixels (``low_resolution`` below it)."""
    max_duration_s: float = 60.0
    """Longest allowed source duration in seconds (``too_long`` above it)."""
    motion_min: float = 0.5
    """Lowest allowed motion score, grey levels per sampled step (``too_static`` below it); see motion_score."""
    motion_max: float = 40.0
    """Highest allowed motion score, grey levels per sampled step (``too_jumpy`` above it); see motion_score."""
    watermark_max: float = 0.8
    """Highest allowed watermark probability, max over the sampled frames (``watermark`` above it)."""
    aesthetic_min: float = 4.5
    """Lowest allowed aesthetic score, mean over the sampled frames (``low_aesthetic`` below it)."""
    clip_min: float = 20.0
    """Lowest allowed CLIP score (cosine × 100) of the middle sampled frame vs the caption (``low_clip_score``)."""
    caption_min_words: int = 3
    """Fewest whitespace-separated words in a caption (``caption_too_short`` below it)."""
    caption_max_chars: int = 300
    """Most characters in a caption (``caption_too_long`` above it)."""
    scene_cut: str = "split"
    """Clips spanning scene cuts: 'split' into segments, 'reject' (``scene_cut``), or 'ignore' the cuts."""
    cut_threshold: float = 0.35
    """Smallest grey-histogram distance in (0, 1] between two sampled frames that can be a cut; see detect_cuts."""

    def __post_init__(self) -> None:
        if self.min_side < 1:
            raise ValueError(f"min_side={self.min_side!r}: must be ≥ 1 pixel")
        if not self.max_duration_s > 0.0:
            raise ValueError(f"max_duration_s={self.max_duration_s!r}: must be > 0 seconds")
        if not self.motion_min >= 0.0:
            raise ValueError(f"motion_min={self.motion_min!r}: must be ≥ 0 (grey levels per sampled step)")
        if not self.motion_max > self.motion_min:
            raise ValueError(
                f"motion_max={self.motion_max!r}: must be greater than motion_min={self.motion_min!r}; "
                "raise motion_max or lower motion_min"
            )
        if not 0.0 <= self.watermark_max <= 1.0:
            raise ValueError(f"watermark_max={self.watermark_max!r}: must be a probability in [0, 1]")
        if not np.isfinite(self.aesthetic_min):
            raise ValueError(f"aesthetic_min={self.aesthetic_min!r}: must be a finite number on the scorer's scale")
        if not -100.0 <= self.clip_min <= 100.0:
            raise ValueError(f"clip_min={self.clip_min!r}: must be in [-100, 100] (cosine × 100)")
        if self.caption_min_words < 0:
            raise ValueError(f"caption_min_words={self.caption_min_words!r}: must be ≥ 0")
        if self.caption_max_chars < 1:
            raise ValueError(f"caption_max_chars={self.caption_max_chars!r}: must be ≥ 1")
        if self.scene_cut not in SCENE_CUT_POLICIES:
            raise ValueError(f"scene_cut={self.scene_cut!r}: choose one of {', '.join(SCENE_CUT_POLICIES)}")
        if not 0.0 < self.cut_threshold <= 1.0:
            raise ValueError(
                f"cut_threshold={self.cut_threshold!r}: must be in (0, 1] (a normalised histogram distance)"
            )


# --------------------------------------------------------------------------------------------------- measures


def _check_analysis(analysis: np.ndarray) -> np.ndarray:
    a = np.asarray(analysis)
    if a.ndim != 3:
        raise ValueError(f"analysis has shape {a.shape}: expected (T, h, w) grey frames in [0, 1]")
    if not np.issubdtype(a.dtype, np.floating):
        # integer frames are almost always 0..255 pixels, which would inflate every measure 255-fold
        raise ValueError(f"analysis has dtype {a.dtype}: expected float grey frames scaled to [0, 1]")
    a = a.astype(np.float32, copy=False)
    if a.size and not np.isfinite(a).all():
        raise ValueError("analysis contains NaN or infinite values: expected grey frames in [0, 1]")
    return a


def motion_score(analysis: np.ndarray) -> float:
    """Motion of a clip: mean absolute grey difference between consecutive sampled frames, × 255.

    ``analysis`` is ``(T, h, w)`` float grey frames in [0, 1]. The score is the mean, over every pixel of every
    sampled step, of ``|frame[t] - frame[t-1]|``, times 255: the grey levels an average pixel changes per sampled
    step. A still clip scores ~0, a smooth pan or a moving object a few units, shaky or noisy video tens (independent
    uniform noise scores 85). Fewer than two frames have no step and score 0.0.
    """
    a = _check_analysis(analysis)
    if a.shape[0] < 2:
        return 0.0
    return float(np.abs(np.diff(a, axis=0)).mean(dtype=np.float64) * 255.0)


def grey_histograms(analysis: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """Per-frame grey histograms ``(T, bins)``, each normalised to sum to 1 (values outside [0, 1] are clipped)."""
    a = _check_analysis(analysis)
    t, h, w = a.shape
    if h * w == 0:
        raise ValueError(f"analysis has shape {a.shape}: frames must have at least one pixel")
    index = np.clip((a * bins).astype(np.int64), 0, bins - 1)
    # one bincount over all frames at once: frame t's bins are offset by t * bins
    index += (np.arange(t, dtype=np.int64) * bins)[:, None, None]
    counts = np.bincount(index.ravel(), minlength=t * bins).reshape(t, bins)
    return counts / float(h * w)


def histogram_distances(analysis: np.ndarray) -> np.ndarray:
    """Distance between each pair of consecutive frames' grey histograms, ``(T-1,)`` in [0, 1].

    The distance is half the L1 distance of the normalised 16-bin histograms (the total-variation distance): the
    share of pixels whose grey level would have to move to another bin to turn one histogram into the other.
    """
    hist = grey_histograms(analysis)
    return 0.5 * np.abs(np.diff(hist, axis=0)).sum(axis=1)


def detect_cuts(analysis: np.ndarray, *, threshold: float) -> list[int]:
    """Hard cuts of a clip: indices ``i`` (1..T-1) such that a cut lies between sampled frames ``i-1`` and ``i``.

    The measure is :func:`histogram_distances`, not a pixel difference: an object moving, or a camera panning over
    the same scene, moves pixels around but barely changes the frame's grey histogram, while a cut to another scene
    changes it a lot. A step is a cut when its distance

    - exceeds ``threshold`` (in (0, 1]), and
    - is at least ``CUT_MEDIAN_RATIO`` (3) times the median distance of the clip's *other* steps,

    so a clip whose histogram changes at every step (strobe, flashing lights, a montage of very short shots) is not
    reported as a cut at every step: such a clip is the motion filter's business. A clip with a single step has no
    other steps to compare with and only needs to exceed ``threshold``.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold!r}: must be in (0, 1] (a normalised histogram distance)")
    dist = histogram_distances(analysis)
    cuts = []
    for step, d in enumerate(dist):
        if d <= threshold:
            continue
        others = np.delete(dist, step)
        if others.size and d < CUT_MEDIAN_RATIO * float(np.median(others)):
            continue
        cuts.append(step + 1)
    return cuts


def split_segments(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    """``[start, end)`` frame ranges covering ``0..n`` split at ``cuts`` (indices where a new scene starts).

    ``cuts`` must be strictly increasing indices in ``1..n-1``, as :func:`detect_cuts` returns. ``n == 0`` gives no
    segment; no cuts give ``[(0, n)]``.
    """
    if n < 0:
        raise ValueError(f"n={n!r}: must be ≥ 0 frames")
    bounds = [int(c) for c in cuts]
    if any(not 1 <= c <= n - 1 for c in bounds) or any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
        raise ValueError(f"cuts={list(cuts)!r}: must be strictly increasing frame indices in 1..{n - 1} (n={n})")
    if n == 0:
        return []
    edges = [0, *bounds, n]
    return list(zip(edges[:-1], edges[1:], strict=True))


# --------------------------------------------------------------------------------------------------- filters


def _above(values: np.ndarray, threshold: float) -> np.ndarray:
    v = values.astype(np.float64)
    return np.where(np.isnan(v), False, v > threshold)


def _below(values: np.ndarray, threshold: float) -> np.ndarray:
    v = values.astype(np.float64)
    return np.where(np.isnan(v), False, v < threshold)


def too_long(batch: Batch, cfg: VideoFilterConfig) -> np.ndarray:
    """Reject clips whose source duration exceeds ``max_duration_s`` (an unknown, NaN duration never rejects)."""
    return _above(batch["duration_s"], cfg.max_duration_s)


def too_static(batch: Batch, cfg: VideoFilterConfig) -> np.ndarray:
    """Reject clips whose motion score is below ``motion_min`` (NaN never rejects)."""
    return _below(batch["motion_score"], cfg.motion_min)


def too_jumpy(batch: Batch, cfg: VideoFilterConfig) -> np.ndarray:
    """Reject clips whose motion score is above ``motion_max`` (NaN never rejects)."""
    return _above(batch["motion_score"], cfg.motion_max)


def scene_cut(batch: Batch, cfg: VideoFilterConfig) -> np.ndarray:
    """With ``scene_cut='reject'``, reject clips with at least one cut; 'split' and 'ignore' never reject here."""
    cuts = batch["scene_cuts"].astype(np.int64)
    if cfg.scene_cut == "reject":
        return cuts > 0
    elif cfg.scene_cut in ("split", "ignore"):
        # 'split' cut the clip into segments before this point; 'ignore' accepts cuts
        return np.zeros(len(cuts), dtype=bool)
    else:
        raise ValueError(f"scene_cut={cfg.scene_cut!r}: choose one of {', '.join(SCENE_CUT_POLICIES)}")


#: Video rule filters in the order their reasons are listed in the audit. The image filters reused here read the
#: same columns and config field names; their semantics for video (source size, per-frame score aggregation) are
#: settled before the batch reaches them.
VIDEO_FILTERS: tuple[Filter, ...] = (
    Filter("min_resolution", "1", "low_resolution", ("width", "height"), min_resolution),
    Filter("too_long", "1", "too_long", ("duration_s",), too_long),
    Filter("caption_empty", "1", "caption_empty", ("caption",), caption_empty),
    Filter("caption_too_short", "1", "caption_too_short", ("caption",), caption_too_short),
    Filter("caption_too_long", "1", "caption_too_long", ("caption",), caption_too_long),
    Filter("caption_control_chars", "1", "caption_control_chars", ("caption",), caption_control_chars),
    Filter("too_static", "1", "too_static", ("motion_score",), too_static),
    Filter("too_jumpy", "1", "too_jumpy", ("motion_score",), too_jumpy),
    Filter("scene_cut", "1", "scene_cut", ("scene_cuts",), scene_cut),
    Filter("watermark", "1", "watermark", ("watermark_prob",), watermark),
    Filter("aesthetic", "1", "low_aesthetic", ("aesthetic_score",), aesthetic),
    Filter("clip_score", "1", "low_clip_score", ("clip_score",), clip_score),
)


def video_filter_versions() -> dict[str, str]:
    """``{filter name: version}`` of every video rule filter, for the manifest."""
    return {f.name: f.version for f in VIDEO_FILTERS}


def apply_video_filters(
    batch: Batch, cfg: VideoFilterConfig, filters: tuple[Filter, ...] = VIDEO_FILTERS
) -> list[list[str]]:
    """Reasons per row: every filter whose mask is true adds its reason, in ``filters`` order.

    If the batch has a ``decodable`` column, rows where it is false are not judged (empty list; the decoder sets
    their quarantine reason). Raises ValueError naming any column the filters read that the batch lacks.
    """
    needed = sorted({column for f in filters for column in f.reads})
    missing = [column for column in needed if column not in batch]
    if missing:
        raise ValueError(f"video batch lacks column(s) {missing}; the filters read {needed}")
    n = len(batch["caption"]) if "caption" in batch else len(next(iter(batch.values()), []))
    judged = batch["decodable"].astype(bool) if "decodable" in batch else np.ones(n, dtype=bool)
    reasons: list[list[str]] = [[] for _ in range(n)]
    for f in filters:
        mask = np.asarray(f.fn(batch, cfg), dtype=bool) & judged
        for i in np.flatnonzero(mask):
            reasons[i].append(f.reason)
    return reasons
