"""The stable vocabulary of curation decisions and reasons, and the row-accounting rule every curation job keeps.

Audits rely on these strings: a reason code is never renamed or reused for another meaning. New codes may be
added; each is documented here and in the README's audit section.

Decisions:

- ``kept``: the row passed every filter and is in ``kept/``.
- ``rejected``: the row was read and decoded, and one or more filters said no. All failing filters are listed.
- ``quarantined``: the row could not be judged at all (unreadable bytes, malformed record, unsafe path). It has
  exactly one reason and an ``error`` text.

Accounting: every input row appears in the audit exactly once, with one decision, and kept rows are exactly the
rows written (:func:`check_accounting`).

The top-percent reasons (``below_clip_percentile``, ``below_aesthetic_percentile``) depend on the whole input: the
threshold a row was compared with is in its dataset manifest's ``percentiles`` (:func:`percentile_lines`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

KEPT = "kept"
REJECTED = "rejected"
QUARANTINED = "quarantined"
DECISIONS = (KEPT, REJECTED, QUARANTINED)

#: Reject reasons: the row is well-formed, a filter decided against it.
REJECT_REASONS: dict[str, str] = {
    "low_resolution": "shorter image side below curate_images.filters.min_side",
    "bad_aspect": "long side / short side above curate_images.filters.max_aspect",
    "caption_empty": "caption missing, empty or whitespace only",
    "caption_too_short": "fewer words than curate_images.filters.caption_min_words",
    "caption_too_long": "more characters than curate_images.filters.caption_max_chars",
    "caption_control_chars": "caption contains control characters (other than tab/newline)",
    "watermark": "watermark probability above curate_images.filters.watermark_max",
    "low_aesthetic": "aesthetic score below curate_images.filters.aesthetic_min",
    "low_clip_score": "CLIP image-text score below curate_images.filters.clip_min (caption does not match the image)",
    "below_clip_percentile": "CLIP image-text score below the threshold that keeps the top "
    "curate_images.filters.clip_top_percent % of the scored rows (threshold in the manifest's percentiles)",
    "below_aesthetic_percentile": "aesthetic score below the threshold that keeps the top "
    "curate_images.filters.aesthetic_top_percent % of the scored rows (threshold in the manifest's percentiles)",
    "duplicate": "exact (sha256) or near (perceptual hash) duplicate of the kept row named in duplicate_of",
    # Video curation (curate_videos.filters.*).
    "too_short": "fewer frames than the clip needs (curate_videos.filters.min_frames, after scene-cut splitting)",
    "too_long": "duration above curate_videos.filters.max_duration_s, or more frames than video.max_decode_frames",
    "too_static": "motion score below curate_videos.filters.motion_min (nearly still video)",
    "too_jumpy": "motion score above curate_videos.filters.motion_max (shaky or flickering video)",
    "scene_cut": "the clip spans a scene cut and curate_videos.filters.scene_cut is 'reject'",
}

#: Quarantine reasons: the row could not be judged.
QUARANTINE_REASONS: dict[str, str] = {
    "undecodable": "image or video bytes missing, truncated, zero-byte or not an image/video",
    "too_large": "declared pixel count or byte size above decode limits (decompression-bomb guard)",
    "bad_schema": "record malformed: missing or mistyped columns, unreadable shard, member without its pair",
    "unsafe_path": "a path in the input leaves the dataset root (absolute, '..', or a symlink)",
    "special_file": "an input path is a FIFO, socket, device or directory, not a regular file (never opened)",
    "duplicate_key": "the same key was already read from an earlier row (sources in sorted order)",
    "bad_encoding": "caption bytes are not valid UTF-8",
    "missing_frames": "a frame sequence has gaps in its numbering, no frames, or a frame that cannot be decoded",
}

ALL_REASONS = {**REJECT_REASONS, **QUARANTINE_REASONS}


def check_accounting(ids: Sequence[str], decisions: Sequence[str], kept_keys: Sequence[str]) -> Counter:
    """Raise if an audit (its rows' ``ids`` and ``decisions``) does not account for every row exactly once, or its
    kept rows are not exactly the ``kept_keys`` written; return the decision counts."""
    counts = Counter(decisions)
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"row accounting broken: {len(ids)} audit rows but {len(set(ids))} distinct ids")
    if set(counts) - set(DECISIONS) or sum(counts.values()) != len(ids):
        raise RuntimeError(f"row accounting broken: decisions {dict(counts)} for {len(ids)} rows")
    if counts[KEPT] != len(kept_keys) or len(set(kept_keys)) != len(kept_keys):
        raise RuntimeError(f"row accounting broken: {counts[KEPT]} kept in audit, {len(kept_keys)} written")
    return counts


def percentile_lines(percentiles: dict[str, dict] | None) -> list[str]:
    """One line per top-percent filter of a curation manifest's ``percentiles``: the percent asked, the population
    ranked and the threshold it gave (``filters.percentile``); none when no percentile filter was set."""
    lines = []
    for cut in (percentiles or {}).values():
        asked = f"{cut['config_key']}={cut['percent']:g}"
        if cut["threshold"] is None:
            lines.append(f"{asked}: no scored row to rank, nothing rejected")
            continue
        lines.append(f"{asked}: kept {cut['score']} ≥ {cut['threshold']:.6g} ({cut['at_or_above']} of "
                     f"{cut['population']} scored rows; {cut['below']} {cut['reason']})")  # fmt: skip
    return lines
