"""Text-video clips of one moving shape, with labelled defects, as mp4 files, a webdataset shard and a labels table.

A clip is ``frames`` frames (16 by default) of ``size`` x ``size`` pixels: one shape (from the image world's
vocabulary) moving left, right, up or down across a textured background, or growing or shrinking in place. The
caption reads "a red circle moving right on a black background" or "a red circle growing on a black background".

Like the image world, every clip has a ground-truth ``kind`` and what a correct video curation must do with it
(``expected_decision``, ``expected_reason``, using the curation reason codes); :data:`KIND_FRACTIONS` and
:data:`KIND_EXPECTATIONS` hold the kinds, their shares and that mapping. ``clean`` clips are as described above;
``static`` clips do not move, ``jumpy`` ones flicker, ``scene_cut`` ones cut to another clip half way,
``watermark`` ones carry a text overlay, ``mismatched`` ones have a wrong caption, ``truncated`` ones a cut mp4.

Decisions worth knowing:

- Frames are rendered with the image world's primitives (supersampled masks, the same background texture), so a
  frame of a clip looks like a toy image; object centres and radii are continuous, so motion is smooth.
- Moving shapes travel 40-60% of the frame from a start that keeps them in frame; growing/shrinking goes between
  radius 0.06 and 0.20 of the frame. The object's colour, rotation and the background are fixed per clip.
- A moving object leaves a faint trail (:func:`trail_mask`): faded copies of itself along the last 30% of its
  path, at most 56 grey levels from the background (the pixel readers' object threshold is 60). It makes the
  direction of motion visible in every single frame, the cue a text-to-video model needs: a motion module has no
  text input, so it can only continue a motion the spatial layers already draw (a trail behind the object, a ring
  round a shrinking one, none round a growing one).
- Encoding is H.264 (libx264, yuv420p, constant QP 18, 8 fps) by default, ``mpeg4`` as the alternative. One
  encoder thread and the bitexact flags make the bytes a function of the frames (and the FFmpeg build), so a seed
  reproduces the same files. Each mp4 is encoded once, in memory, and the same bytes go to ``mp4/`` and to the tar
  shard.
- Randomness: clip i's content uses ``default_rng([seed, 2, i])`` (stream 2 of a world seed), exactly as before
  the kinds existed; its kind and every draw of its defect come from ``default_rng([seed, 2, i, 1])``, the kind
  first (:func:`clip_kind`). So a clip's kind depends only on (seed, i), and a degraded clip is its clean
  counterpart (same shape, colour, motion, background texture) with the defect added.
- Kinds are drawn independently per clip with the shares of :data:`KIND_FRACTIONS` (60% clean), not planned: a
  50-clip world usually has every kind, but a given 6% kind is missing from about 1 world in 20, and some
  kind from about 1 in 6.
- Every degraded clip has exactly one defect, so its expected reason is unambiguous whatever order the filters run
  in (a ``jumpy`` clip is also ugly frame by frame: an aesthetic filter may fire too, but ``too_jumpy`` is the
  defect).
- ``static`` clips repeat frame 0 exactly (no noise: independent ±1 noise per pixel already gives a mean frame
  difference near 0.9 grey levels), so their motion is 0 (decoded from the mp4: at most 0.013 grey levels per
  frame, measured); their ``direction`` is None and the caption has no motion phrase ("a red circle on a black
  background"), so it still matches.
- Some clean clips barely move in grey: a green shape is ~11 grey levels from a gray background, and a growing
  shape changes few pixels per frame. Measured on the 300 clips of seed 0, decoded from the mp4: the mean absolute
  grey difference of consecutive frames is 0.09-3.8 for clean clips (a quarter below 0.5) and at most 0.013 for
  static ones; on 8 centred frames at 32 px analysis size, clean clips and scene-cut halves score at least 0.06 and
  static clips at most 0.008. A motion threshold that keeps the clean clips and rejects the static ones must sit
  around 0.02-0.05, far below 0.5.
- ``jumpy`` frames are ``0.25 * clean + 0.75 * target``: a strobe of blotches. The target is one blotchy grey field
  per clip (mid grey ± the image world's soft-clipped low-frequency background texture, peak 90-120 levels) rolled
  by a random offset in every frame, plus independent ±24 per-pixel grey noise. Blotches (not pixel noise alone)
  keep the motion when a curation analyses downscaled frames; independent offsets (not an alternation) keep any
  sampling stride from aliasing it away; and a roll keeps the field's values, so every frame has about the same
  grey histogram and a histogram scene-cut detector sees no cut (a jumpy clip split into short pieces would be
  rejected as too short instead). A draw is redrawn until every window of 8 frames taken 1 or 2 apart, at full and
  at half resolution, has a mean absolute grey difference of at least :data:`JUMPY_MIN_DIFF` (60) between its
  consecutive frames (about 1 clip in 13 needs a redraw). Measured on the 81 jumpy clips of seeds 0-3 (300 clips
  each), decoded from the mp4: the motion of 8 frames 1 or 2 apart at 32 or 16 px analysis size is at least 56,
  the consecutive-frame histogram distance (16 bins) at most 0.2. The shape stays faintly visible.
- ``scene_cut`` clips show their own clip up to ``cut_frame`` (``frames // 2``) and from there the same frames of
  another clip with a different background and a different colour (shape and motion drawn anew), so the cut is a
  large grey-histogram change while each half is smooth. The caption and labels describe the first half. The
  expected decision is ``"split"`` (the curation's default scene-cut policy), with reason ``scene_cut``: the
  reason a curation that rejects cut clips (``scene_cut: reject``) must give.
- ``watermark`` clips carry one fixed overlay on every frame. :func:`toyworld.degrade.add_watermark` returns only
  the composited image, and its colour and opacity depend on the image's mean brightness, so calling it on every
  frame would draw a different mark per frame. Instead :func:`watermark_overlay` runs it on grey probe images of
  frame 0's size and exact mean brightness (so text, layout, colour and opacity are what it would draw on frame 0)
  and measures the overlay, which :func:`apply_watermark` then composites onto each frame: the mark does not move
  with the content, and frame 0 matches ``add_watermark(frame 0)`` within 1 grey level (rounding).
- ``mismatched`` captions replace the colour or the shape word (50/50) with another word of the same vocabulary;
  the ``shape`` and ``colour`` labels stay the truth, so the true caption is ``video_caption(shape, colour,
  direction, background)``. Expected: rejected, ``low_clip_score``.
- ``truncated`` clips have clean frames, but their mp4 is cut to :data:`TRUNCATE_AT` (60%) of its bytes, the
  same cut bytes in ``mp4/`` and in the tar shard. PyAV's mp4 muxer writes the index (``moov``) at the end, so the
  cut file cannot even be opened: quarantined, ``undecodable``. The tar's ``KEY.json`` still states the nominal
  frames and size, as a producer would have recorded them.
"""

from __future__ import annotations

import copy
import io
import json
import logging
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from toyworld.degrade import add_watermark
from toyworld.images import write_tar
from toyworld.scenes import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    background_texture,
    composite,
    object_colour,
    render_background,
    shape_mask,
)

logger = logging.getLogger(__name__)

DIRECTIONS = ("left", "right", "up", "down", "growing", "shrinking")
"""Motions of a clip; the first four move the shape, the last two scale it in place (static clips have None)."""

KIND_FRACTIONS: tuple[tuple[str, float], ...] = (
    ("clean", 0.60),
    ("static", 0.07),
    ("jumpy", 0.07),
    ("scene_cut", 0.07),
    ("watermark", 0.07),
    ("mismatched", 0.06),
    ("truncated", 0.06),
)
"""(kind, share of clips): each clip's kind is drawn independently with these probabilities (they sum to 1)."""

KINDS = tuple(kind for kind, _ in KIND_FRACTIONS)
"""Kinds of clip, ``clean`` first."""

KIND_EXPECTATIONS: dict[str, tuple[str, str | None]] = {
    "clean": ("kept", None),
    "static": ("rejected", "too_static"),
    "jumpy": ("rejected", "too_jumpy"),
    "scene_cut": ("split", "scene_cut"),
    "watermark": ("rejected", "watermark"),
    "mismatched": ("rejected", "low_clip_score"),
    "truncated": ("quarantined", "undecodable"),
}
"""kind -> (expected_decision, expected_reason); reasons are codes of ``contracts.reasons``."""

VIDEO_DECISIONS = ("kept", "rejected", "quarantined", "split")
"""Expected decisions; "split": the clip is cut at ``cut_frame`` into two segments, each judged on its own."""

JUMPY_MIN_DIFF = 60.0
"""Least mean absolute grey difference (levels) between the sampled frames of a jumpy clip (see make_jumpy)."""

TRUNCATE_AT = 0.6
"""A truncated clip's mp4 keeps this share of its bytes."""

VIDEO_CODECS = ("libx264", "mpeg4")
"""Encoders ``encode_mp4`` can use (both ship with PyAV's wheels)."""

FPS = 8
"""Frame rate of the encoded clips."""

LABEL_COLUMNS = (
    "key",
    "caption",
    "shape",
    "colour",
    "direction",
    "background",
    "frames",
    "width",
    "height",
    "fps",
    "kind",
    "expected_decision",
    "expected_reason",
    "cut_frame",
)
"""Columns of ``labels.parquet``; ``direction`` is null for static clips, ``cut_frame`` for all but scene cuts."""

_LABEL_SCHEMA = pa.schema(
    [(name, pa.string()) for name in LABEL_COLUMNS[:6]]
    + [(name, pa.int32()) for name in LABEL_COLUMNS[6:10]]
    + [(name, pa.string()) for name in LABEL_COLUMNS[10:13]]
    + [("cut_frame", pa.int32())]
)

_STREAM = 2
_KIND_STREAM = 1  # clip i's kind and defect: default_rng([seed, _STREAM, i, _KIND_STREAM])
_JUMPY_CLEAN = 0.25  # share of the clean frame in a jumpy frame
_JUMPY_AMPLITUDE = 120.0  # peak of a jumpy frame's blotchy texture (drawn in 0.75-1 times this), grey levels
_JUMPY_NOISE = 24.0  # per-pixel grey noise of a jumpy frame's target, ±
_JUMPY_WINDOW = 8  # a jumpy clip is checked over every window of this many sampled frames
_JUMPY_TRIES = 64
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def video_caption(shape: str, colour: str, direction: str | None, background: str) -> str:
    """The caption of a clip, e.g. "a red circle moving right on a black background"; direction None (a static
    clip) gives "a red circle on a black background"."""
    if direction is None:
        return f"a {colour} {shape} on a {background} background"
    elif direction in ("left", "right", "up", "down"):
        motion = f"moving {direction}"
    elif direction in ("growing", "shrinking"):
        motion = direction
    else:
        raise ValueError(f"direction={direction!r}: choose one of {DIRECTIONS} or None")
    return f"a {colour} {shape} {motion} on a {background} background"


def _trajectory(direction: str, rng: np.random.Generator, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame centre x, centre y and radius, as fractions of the frame."""
    t = np.linspace(0.0, 1.0, frames)
    if direction in ("left", "right", "up", "down"):
        radius = np.full(frames, rng.uniform(0.10, 0.15))
        travel = rng.uniform(0.4, 0.6)
        start = rng.uniform(radius[0] + 0.02, 1.0 - radius[0] - 0.02 - travel)
        across = rng.uniform(0.3, 0.7)
        if direction == "right":
            x, y = start + travel * t, np.full(frames, across)
        elif direction == "left":
            x, y = 1.0 - start - travel * t, np.full(frames, across)
        elif direction == "down":
            x, y = np.full(frames, across), start + travel * t
        else:
            x, y = np.full(frames, across), 1.0 - start - travel * t
        return x, y, radius
    elif direction in ("growing", "shrinking"):
        small, large = rng.uniform(0.05, 0.08), rng.uniform(0.18, 0.22)
        radius = small + (large - small) * (t if direction == "growing" else 1.0 - t)
        x = np.full(frames, rng.uniform(0.35, 0.65))
        y = np.full(frames, rng.uniform(0.35, 0.65))
        return x, y, radius
    else:
        raise ValueError(f"direction={direction!r}: choose one of {DIRECTIONS}")


TRAIL_SPAN = 0.3
"""How far back along its path (in clip time, 0-1) a moving object's trail reaches."""
TRAIL_COPIES = 6
"""Faded copies of the object along that stretch of its path, drawn under it."""
TRAIL_ALPHA = 0.22
"""Opacity of the nearest copy (the farthest fades towards 0): at most 0.22 × 255 = 56 grey levels from the
background, under the 60 that the pixel readers take for an object."""


def trail_mask(shape: str, x: np.ndarray, y: np.ndarray, radius: np.ndarray, angle: float, size: int) -> np.ndarray:
    """(frames, size, size) opacity of the object's trail in each frame: faded copies of the shape where it was
    during the last :data:`TRAIL_SPAN` of the clip (its path extended backwards before frame 0; paths are linear in
    time), the nearer the more opaque. A moving object's trail lies behind it and a shrinking one's rings it, so a
    single frame shows where the object is heading; a growing object's trail hides under it."""
    frames = len(x)
    out = np.zeros((frames, size, size), dtype=np.float32)
    if frames < 2:
        return out
    rate = np.array([x[-1] - x[0], y[-1] - y[0], radius[-1] - radius[0]])  # per unit of clip time
    for t in range(frames):
        for k in range(1, TRAIL_COPIES + 1):
            back = TRAIL_SPAN * k / TRAIL_COPIES
            cx, cy, r = np.array([x[t], y[t], radius[t]]) - back * rate
            if r * size < 0.5:
                continue  # a growing object was smaller than a pixel this far back
            alpha = TRAIL_ALPHA * (1.0 - (k - 1) / TRAIL_COPIES)
            np.maximum(out[t], alpha * shape_mask(shape, cx * size, cy * size, r * size, angle, size), out=out[t])
    return out


def render_clip(
    shape: str, colour: str, direction: str, background: str, rng: np.random.Generator, *, frames: int, size: int,
    trail: bool = True,
) -> np.ndarray:  # fmt: skip
    """Render a (frames, size, size, 3) uint8 clip of one shape in motion, with its :func:`trail_mask` trail unless
    ``trail`` is false (the trail draws no random numbers: a clip is the same clip either way)."""
    x, y, radius = _trajectory(direction, rng, frames)
    canvas = render_background(background, rng, size)
    rgb = object_colour(colour, rng)
    angle = rng.uniform(-15.0, 15.0)
    trails = trail_mask(shape, x, y, radius, angle, size) if trail else None
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        base = composite(canvas, trails[t], rgb) if trails is not None else canvas
        mask = shape_mask(shape, x[t] * size, y[t] * size, radius[t] * size, angle, size)
        out[t] = np.clip(np.rint(composite(base, mask, rgb)), 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Defects


def clip_kind(seed: int, i: int) -> str:
    """The kind of clip ``i`` of a world seed: the first draw of its defect stream, so it needs no rendering."""
    return _draw_kind(np.random.default_rng([seed, _STREAM, i, _KIND_STREAM]))


def _draw_kind(rng: np.random.Generator) -> str:
    shares = np.array([share for _, share in KIND_FRACTIONS], dtype=np.float64)
    return KINDS[int(rng.choice(len(KINDS), p=shares / shares.sum()))]


def grey(frames: np.ndarray) -> np.ndarray:
    """Grey levels (float64, ITU-R 601 luma) of (..., 3) RGB frames."""
    return frames.astype(np.float64) @ _LUMA


def _window_diffs(frames: np.ndarray) -> float:
    """Least mean absolute grey difference of a clip over the samplings JUMPY_MIN_DIFF promises (see make_jumpy)."""
    t, h, w, _ = frames.shape
    g = grey(frames)
    half = g[:, : h // 2 * 2, : w // 2 * 2].reshape(t, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    least = np.inf
    for scaled in (g, half):
        for stride in (1, 2):
            steps = np.abs(scaled[stride:] - scaled[:-stride]).mean(axis=(1, 2))  # one value per step
            n = min(_JUMPY_WINDOW - 1, len(steps))  # steps within a window of _JUMPY_WINDOW sampled frames
            if n < 1:
                continue  # a clip too short for this stride
            for start in range(len(steps) - stride * (n - 1)):
                least = min(least, float(steps[start : start + stride * n : stride].mean()))
    return least


def make_jumpy(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strobe every frame: ``0.25 * clean + 0.75 * target``, each frame's target one blotchy grey field (mid grey ± a
    soft-clipped low-frequency texture of peak 90-120 levels), rolled by a random offset per frame, plus ±24
    per-pixel grey noise. A roll keeps the field's values, so every frame has about the same grey histogram.

    Redrawn until every window of 8 frames taken 1 or 2 apart, at full and at half resolution, has a mean absolute
    grey difference between its consecutive frames of at least JUMPY_MIN_DIFF (the draw with the largest smaller
    value is the last resort, never needed in practice).
    """
    t, h, w, _ = frames.shape
    clean = frames.astype(np.float64)
    best, best_diff = frames, -1.0
    for _ in range(_JUMPY_TRIES):
        field = background_texture(rng, max(h, w), amplitude=_JUMPY_AMPLITUDE)[:h, :w]
        shifts = zip(rng.integers(0, h, size=t), rng.integers(0, w, size=t), strict=True)
        texture = np.stack([np.roll(field, (int(dy), int(dx)), axis=(0, 1)) for dy, dx in shifts])
        noise = rng.uniform(-_JUMPY_NOISE, _JUMPY_NOISE, size=(t, h, w))
        target = 127.5 + texture + noise
        mixed = _JUMPY_CLEAN * clean + (1.0 - _JUMPY_CLEAN) * target[..., None]
        out = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
        diff = _window_diffs(out)
        if diff >= JUMPY_MIN_DIFF:
            return out
        if diff > best_diff:
            best, best_diff = out, diff
    logger.warning("jumpy clip: no draw in %d reached %.0f grey levels (best %.1f)", _JUMPY_TRIES, JUMPY_MIN_DIFF,
                   best_diff)  # fmt: skip
    return best


def _probe(values: np.ndarray, shape: tuple[int, int]) -> Image.Image:
    """A grey RGB image whose luma is exactly ``values`` (Pillow's L of (v, v, v) is v)."""
    v = values.reshape(shape).astype(np.uint8)
    return Image.fromarray(np.repeat(v[:, :, None], 3, axis=2), "RGB")


def watermark_overlay(frame: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Measure the watermark ``add_watermark(frame, rng)`` draws as ``(base, gain)``, float (H, W, 3) arrays, so that
    ``base + gain * f`` is any frame ``f`` of the same size under that watermark (``rng`` advances as one call would).

    ``add_watermark`` alpha-composites an overlay that depends only on the image's size, its mean brightness and the
    generator, so it is run, from copies of the generator's state, on grey probe images of the same size and exactly
    the same mean brightness, made of 0 and 255 pixels (one pixel holds the remainder). The probes are rolled so
    that every pixel is 0 in one and 255 in another: there ``base`` is the 0 probe's output and ``gain`` the
    difference / 255 (1 where no watermark covers the pixel, less under the text).
    """
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame {frame.shape} {frame.dtype}: expected uint8 (H, W, 3)")
    h, w = frame.shape[:2]
    n = h * w
    luma_sum = int(np.asarray(Image.fromarray(frame, "RGB").convert("L"), dtype=np.int64).sum())
    n_high, remainder = divmod(luma_sum, 255)
    n_low = n - n_high - (1 if remainder else 0)
    step = min(n_high, n_low)
    if step < 1:
        raise ValueError(f"frame of mean brightness {luma_sum / n:.1f}: too close to black or white to measure")
    state = copy.deepcopy(rng)
    base = np.full((h, w, 3), np.nan)
    high = np.full((h, w, 3), np.nan)
    index = np.arange(n)
    for start in range(0, n, step):
        values = np.zeros(n, dtype=np.int64)
        hi = (start + index[:n_high]) % n
        values[hi] = 255
        if remainder:
            values[(start + n_high) % n] = remainder
        out = np.asarray(add_watermark(_probe(values, (h, w)), copy.deepcopy(state)), dtype=np.float64)
        is_high = (values == 255).reshape(h, w)
        is_low = (values == 0).reshape(h, w)
        high[is_high] = out[is_high]
        base[is_low] = out[is_low]
    if np.isnan(base).any() or np.isnan(high).any():
        raise RuntimeError("watermark_overlay: a pixel was never 0 or never 255 in the probes")  # by construction
    add_watermark(Image.fromarray(frame, "RGB"), rng)  # advance rng as the one call on the frame would
    return base, (high - base) / 255.0


def apply_watermark(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same watermark on every frame: the one ``add_watermark`` draws for frame 0 (see watermark_overlay)."""
    base, gain = watermark_overlay(frames[0], rng)
    out = base[None] + gain[None] * frames.astype(np.float64)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _mismatch(shape: str, colour: str, rng: np.random.Generator) -> tuple[str, str]:
    """(shape, colour) with exactly one of the two replaced by another word of its vocabulary."""
    if rng.uniform() < 0.5:
        others = tuple(c for c in COLOURS if c != colour)
        return shape, others[int(rng.integers(len(others)))]
    others = tuple(s for s in SHAPES if s != shape)
    return others[int(rng.integers(len(others)))], colour


def _scene_cut(
    frames: np.ndarray, colour: str, background: str, rng: np.random.Generator, size: int
) -> tuple[np.ndarray, int]:
    """Frames up to ``len // 2`` from ``frames``, then another clip's (different colour and background)."""
    n = frames.shape[0]
    colours = tuple(c for c in COLOURS if c != colour)
    backgrounds = tuple(b for b in BACKGROUNDS if b != background)
    other_shape = SHAPES[int(rng.integers(len(SHAPES)))]
    other_colour = colours[int(rng.integers(len(colours)))]
    other_direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    other_background = backgrounds[int(rng.integers(len(backgrounds)))]
    other = render_clip(other_shape, other_colour, other_direction, other_background, rng, frames=n, size=size)
    cut = n // 2
    return np.concatenate([frames[:cut], other[cut:]]), cut


# ---------------------------------------------------------------------------------------------------------------------
# Records


def generate_video_records(seed: int, n: int, *, frames: int = 16, size: int = 64) -> list[dict]:
    """Generate ``n`` labelled clips, each a dict: key, caption, frames (uint8 array (T, H, W, 3)), shape, colour,
    direction (None for static clips), background, kind, expected_decision, expected_reason, cut_frame (None but for
    scene cuts). Identical for identical arguments; see the module docstring for the kinds."""
    if n < 0:
        raise ValueError(f"n={n}: must be >= 0")
    if frames < 2:
        raise ValueError(f"frames={frames}: a clip needs at least 2 frames")
    if size < 16 or size % 2:
        raise ValueError(f"size={size}: must be an even number >= 16 (yuv420p needs even sides)")
    records = []
    for i in range(n):
        defect = np.random.default_rng([seed, _STREAM, i, _KIND_STREAM])
        kind = _draw_kind(defect)
        rng = np.random.default_rng([seed, _STREAM, i])
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        clip = render_clip(shape, colour, direction, background, rng, frames=frames, size=size)
        caption_shape, caption_colour, cut_frame = shape, colour, None
        if kind in ("clean", "truncated"):
            pass  # a truncated clip's frames are clean: write_video_dataset cuts its mp4 bytes
        elif kind == "static":
            clip = np.repeat(clip[:1], frames, axis=0)
            direction = None
        elif kind == "jumpy":
            clip = make_jumpy(clip, defect)
        elif kind == "scene_cut":
            clip, cut_frame = _scene_cut(clip, colour, background, defect, size)
        elif kind == "watermark":
            clip = apply_watermark(clip, defect)
        elif kind == "mismatched":
            caption_shape, caption_colour = _mismatch(shape, colour, defect)
        else:
            raise ValueError(f"kind={kind!r}: choose one of {KINDS}")
        decision, reason = KIND_EXPECTATIONS[kind]
        records.append(
            {
                "key": f"vid-{seed}-{i:06d}",
                "caption": video_caption(caption_shape, caption_colour, direction, background),
                "frames": clip,
                "shape": shape,
                "colour": colour,
                "direction": direction,
                "background": background,
                "kind": kind,
                "expected_decision": decision,
                "expected_reason": reason,
                "cut_frame": cut_frame,
            }
        )
    logger.info("generated %d video records (seed %d): %s", n, seed, dict(Counter(r["kind"] for r in records)))
    return records


# ---------------------------------------------------------------------------------------------------------------------
# Encoding and writing


def encode_mp4(frames: np.ndarray, *, fps: int = FPS, codec: str = "libx264") -> bytes:
    """Encode (T, H, W, 3) uint8 RGB frames as an mp4 (yuv420p) in memory; deterministic for a given build."""
    if codec not in VIDEO_CODECS:
        raise ValueError(f"codec={codec!r}: choose one of {VIDEO_CODECS}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames {frames.shape} {frames.dtype}: expected uint8 (T, H, W, 3)")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        if codec == "libx264":
            # Constant quantiser, not crf: crf's rate control is floating point, and its decisions changed with
            # the process's floating-point state (measured: importing torch changed the bytes of some clips).
            stream.options = {"qp": "18", "preset": "medium"}
        elif codec == "mpeg4":
            stream.options = {"qscale": "2"}
        else:
            raise ValueError(f"codec={codec!r}: choose one of {VIDEO_CODECS}")
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def decode_mp4(data: bytes) -> np.ndarray:
    """Decode mp4 bytes to (T, H, W, 3) uint8 RGB frames."""
    with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return np.stack(frames)


def write_video_dataset(
    out_dir: Path, records: list[dict], *, codec: str = "libx264", rows_per_shard: int = 500
) -> dict:
    """Write clips as ``mp4/KEY.mp4`` + ``mp4/KEY.txt``, ``wds/shard-NNNNN.tar`` (KEY.mp4, KEY.txt, KEY.json) and
    ``labels.parquet`` (LABEL_COLUMNS); return a summary (row count, shard paths, direction and kind counts).

    A ``truncated`` clip's mp4 is cut to TRUNCATE_AT of its bytes in both places. Records without the kind fields
    (hand-made ones) are written as clean clips.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard={rows_per_shard}: must be >= 1")
    out_dir = Path(out_dir)
    (out_dir / "mp4").mkdir(parents=True, exist_ok=True)
    (out_dir / "wds").mkdir(parents=True, exist_ok=True)
    members: list[tuple[str, bytes]] = []
    label_rows = []
    for record in records:
        key = record["key"]
        frames = record["frames"]
        kind = record.get("kind", "clean")
        if kind not in KIND_EXPECTATIONS:
            raise ValueError(f"record {key}: kind={kind!r}; choose one of {KINDS}")
        data = encode_mp4(frames, codec=codec)
        if kind == "truncated":
            data = data[: int(len(data) * TRUNCATE_AT)]
        caption = record["caption"].encode("utf-8")
        (out_dir / "mp4" / f"{key}.mp4").write_bytes(data)
        (out_dir / "mp4" / f"{key}.txt").write_bytes(caption)
        meta = {
            "key": key,
            "frames": int(frames.shape[0]),
            "width": int(frames.shape[2]),
            "height": int(frames.shape[1]),
            "fps": FPS,
        }
        members.append((f"{key}.mp4", data))
        members.append((f"{key}.txt", caption))
        members.append((f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8")))
        labels = {name: record[name] for name in ("caption", "shape", "colour", "direction", "background")}
        decision, reason = KIND_EXPECTATIONS[kind]
        expected = {
            "kind": kind,
            "expected_decision": record.get("expected_decision", decision),
            "expected_reason": record.get("expected_reason", reason),
            "cut_frame": record.get("cut_frame"),
        }
        label_rows.append({**meta, **labels, **expected})
    per_shard = 3 * rows_per_shard
    shards = []
    for shard, start in enumerate(range(0, len(members), per_shard)):
        path = out_dir / "wds" / f"shard-{shard:05d}.tar"
        write_tar(path, members[start : start + per_shard])
        shards.append(path.relative_to(out_dir).as_posix())
    table = pa.table({name: [row[name] for row in label_rows] for name in LABEL_COLUMNS}, schema=_LABEL_SCHEMA)
    pq.write_table(table, out_dir / "labels.parquet")
    logger.info("wrote %d clips to %s", len(records), out_dir)
    return {
        "rows": len(records),
        "wds": shards,
        "labels": "labels.parquet",
        "direction_counts": dict(sorted(Counter(r["direction"] for r in label_rows if r["direction"]).items())),
        "kind_counts": dict(sorted(Counter(r["kind"] for r in label_rows).items())),
    }
