"""TikTok-style dancers: stick figures with ground-truth 2-D poses, in the TikTok dataset's folder layout.

Each sequence is one figure doing one dance pattern for ``frames`` frames, written as ``SEQ/images/0001.png ...``
and ``SEQ/pose/0001.json ...`` (no captions: the recaptioning job adds them). ``labels.parquet`` at the root holds
the sequence-level truth (pattern, shirt, pants, background, speed, phase).

Decisions worth knowing:

- Joints follow the OpenPose BODY-18 (COCO-18) order, the format ControlNet-style pose conditioning draws:
  nose, neck, shoulders, elbows, wrists, hips, knees, ankles, eyes, ears (18 joints). Keypoints are
  ``[x, y, visibility]`` in pixels of the written image (origin top-left), with COCO visibility: 2 visible,
  1 labelled but hidden (nose and eyes while a spinning figure faces away), 0 outside the frame.
- The body is posed in a small skeleton space (units of torso length, y down) from joint angles, so every pattern
  is a few lines of angle curves. The figure is scaled so that its full reach (wrists overhead to ankles) spans
  80-92% of the frame height (a standing figure is 65-75% of it), centred with a small horizontal jitter.
- Patterns: arm_wave (arms wave overhead, out of phase), jumping_jack (arms and legs open and close while the body
  hops), side_step (the body sways sideways with knee bends), spin (the body turns about its vertical axis, so
  left/right joints swap sides and the face is hidden half the time), squat (knees bend, the body drops, arms rise
  for balance). Speed is 0.5-1.5 cycles per 16 frames (2 s at 8 fps), whatever the length; phase is random.
- Drawing: limbs are thick lines at 4x supersampling, box-filtered down; arms and torso in the shirt colour, legs and
  the hip bar in the pants colour, a skin-coloured head. Shirt and pants always differ. The background is the image
  world's textured background.
- Randomness: sequence i uses ``default_rng([seed, 3, i])`` (stream 3 of a world seed).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from models.pose import JOINTS as POSE_JOINTS
from toyworld.scenes import BACKGROUND_LEVEL, BACKGROUNDS, COLOUR_RGB, COLOURS, SUPERSAMPLE, render_background

logger = logging.getLogger(__name__)

JOINTS = POSE_JOINTS
"""Joint names in OpenPose BODY-18 order (the pose maps' order, :data:`models.pose.JOINTS`)."""

LIMBS = (
    ("neck", "right_shoulder"),
    ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_wrist"),
    ("neck", "left_shoulder"),
    ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist"),
    ("neck", "right_hip"),
    ("right_hip", "right_knee"),
    ("right_knee", "right_ankle"),
    ("neck", "left_hip"),
    ("left_hip", "left_knee"),
    ("left_knee", "left_ankle"),
    ("neck", "nose"),
    ("nose", "right_eye"),
    ("right_eye", "right_ear"),
    ("nose", "left_eye"),
    ("left_eye", "left_ear"),
)
"""Bones of the OpenPose BODY-18 skeleton, as joint-name pairs (useful for drawing pose maps)."""

PATTERNS = ("arm_wave", "jumping_jack", "side_step", "spin", "squat")
"""Dance patterns."""

SKIN_RGB = (224, 172, 138)
"""Head colour."""

LABEL_COLUMNS = ("seq", "pattern", "shirt", "pants", "background", "speed", "phase", "frames", "width", "height")
"""Columns of ``labels.parquet``."""

_STREAM = 3
_J = {name: index for index, name in enumerate(JOINTS)}

# skeleton proportions in units of the torso (neck to hip centre)
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.55, 0.5, 0.62, 0.6
_SHOULDER_HALF, _HIP_HALF, _HEAD = 0.33, 0.2, 0.32


def _angles(pattern: str, s: float) -> dict[str, float]:
    """Pose parameters at cycle phase ``s`` (radians): bone angles, body offsets and the turn angle."""
    c, w = np.cos(s), np.sin(s)
    pose = {
        "r_upper": 0.25, "r_fore": 0.15, "l_upper": -0.25, "l_fore": -0.15,
        "r_thigh": 0.08, "r_shin": 0.0, "l_thigh": -0.08, "l_shin": 0.0,
        "dx": 0.0, "dy": 0.0, "turn": 0.0,
    }  # fmt: skip
    if pattern == "arm_wave":
        pose.update(r_upper=2.3 + 0.5 * w, r_fore=2.6 + 0.9 * w, l_upper=-2.3 + 0.5 * c, l_fore=-2.6 + 0.9 * c)
    elif pattern == "jumping_jack":
        open_ = 0.5 - 0.5 * c  # 0 closed .. 1 open
        pose.update(r_upper=0.2 + 2.5 * open_, r_fore=0.2 + 2.7 * open_, l_upper=-0.2 - 2.5 * open_,
                    l_fore=-0.2 - 2.7 * open_, r_thigh=0.05 + 0.35 * open_, r_shin=0.05 + 0.35 * open_,
                    l_thigh=-0.05 - 0.35 * open_, l_shin=-0.05 - 0.35 * open_, dy=-0.25 * abs(np.sin(s)))  # fmt: skip
    elif pattern == "side_step":
        bend = 0.5 + 0.5 * np.cos(2 * s)
        pose.update(dx=0.45 * w, r_upper=0.5 + 0.4 * w, l_upper=-0.5 + 0.4 * w, r_fore=1.2 + 0.4 * w,
                    l_fore=-1.2 + 0.4 * w, r_thigh=0.25 + 0.2 * w, l_thigh=-0.25 + 0.2 * w, dy=0.06 * bend,
                    r_shin=0.25 + 0.2 * w - 0.2 * bend, l_shin=-0.25 + 0.2 * w + 0.2 * bend)  # fmt: skip
    elif pattern == "spin":
        pose.update(turn=s, r_upper=1.2, r_fore=1.4, l_upper=-1.2, l_fore=-1.4, r_thigh=0.12, l_thigh=-0.12)
    elif pattern == "squat":
        depth = 0.5 - 0.5 * c
        pose.update(r_thigh=0.2 + 1.0 * depth, r_shin=0.2 - 0.4 * depth, l_thigh=-0.2 - 1.0 * depth,
                    l_shin=-0.2 + 0.4 * depth, dy=0.45 * depth, r_upper=0.3 + 1.1 * depth, r_fore=0.3 + 1.3 * depth,
                    l_upper=-0.3 - 1.1 * depth, l_fore=-0.3 - 1.3 * depth)  # fmt: skip
    else:
        raise ValueError(f"pattern={pattern!r}: choose one of {PATTERNS}")
    return pose


def _bone(origin: np.ndarray, angle: float, length: float, squash: float) -> np.ndarray:
    """End of a bone from ``origin``: angle 0 points down (+y); positive angles swing the figure's right limbs
    outward (-x, the figure faces the viewer) and negative angles its left limbs outward (+x). ``squash`` is the
    cosine of the body's turn about its vertical axis (orthographic view)."""
    return origin + length * np.array([-np.sin(angle) * squash, np.cos(angle)])


def skeleton(pattern: str, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Joint positions (18, 2) in skeleton units (torso length 1, y down, neck near the origin) and a hidden mask.

    ``hidden[j]`` is True for the nose and eyes while the figure faces away (spin only).
    """
    p = _angles(pattern, s)
    squash = float(np.cos(p["turn"]))
    neck = np.array([p["dx"], p["dy"]])
    hip_centre = neck + np.array([0.0, 1.0])
    points = np.zeros((len(JOINTS), 2))
    points[_J["neck"]] = neck
    for side, sign in (("right", -1.0), ("left", 1.0)):
        k = side[0]
        shoulder = neck + np.array([sign * _SHOULDER_HALF * squash, 0.05])
        elbow = _bone(shoulder, p[f"{k}_upper"], _UPPER_ARM, squash)
        wrist = _bone(elbow, p[f"{k}_fore"], _FOREARM, squash)
        hip = hip_centre + np.array([sign * _HIP_HALF * squash, 0.0])
        knee = _bone(hip, p[f"{k}_thigh"], _THIGH, squash)
        ankle = _bone(knee, p[f"{k}_shin"], _SHIN, squash)
        for name, value in zip(("shoulder", "elbow", "wrist", "hip", "knee", "ankle"),
                               (shoulder, elbow, wrist, hip, knee, ankle), strict=True):  # fmt: skip
            points[_J[f"{side}_{name}"]] = value
        points[_J[f"{side}_eye"]] = neck + np.array([sign * 0.07 * squash, -_HEAD - 0.05])
        points[_J[f"{side}_ear"]] = neck + np.array([sign * 0.15 * squash, -_HEAD - 0.02])
    points[_J["nose"]] = neck + np.array([0.0, -_HEAD + 0.02])
    hidden = np.zeros(len(JOINTS), dtype=bool)
    if np.cos(p["turn"]) < 0:
        hidden[[_J["nose"], _J["right_eye"], _J["left_eye"]]] = True
    return points, hidden


# vertical extent of any pose, in skeleton units relative to the neck: wrists overhead reach about -1.05, ankles
# about +2.25; the figure is scaled so this range fills 80-92% of the frame
_TOP, _BOTTOM = -1.1, 2.3


def _draw_figure(canvas: np.ndarray, points_px: np.ndarray, unit: float, shirt: tuple, pants: tuple) -> np.ndarray:
    """Draw the stick figure over a float (H, W, 3) canvas: 4x supersampled layers, box-filtered, composited."""
    size = canvas.shape[0]
    big = size * SUPERSAMPLE
    pts = points_px * SUPERSAMPLE
    width_limb = max(2, round(0.16 * unit * SUPERSAMPLE))
    layers = []
    for colour, parts in (
        (pants, (("right_hip", "left_hip"), ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
                 ("left_hip", "left_knee"), ("left_knee", "left_ankle"))),
        (shirt, (("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
                 ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"))),
    ):  # fmt: skip
        mask = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(mask)
        for a, b in parts:
            pa_, pb_ = tuple(pts[_J[a]]), tuple(pts[_J[b]])
            draw.line([pa_, pb_], fill=255, width=width_limb)
            for end in (pa_, pb_):  # round joints
                r = width_limb / 2
                draw.ellipse((end[0] - r, end[1] - r, end[0] + r, end[1] + r), fill=255)
        if colour is shirt:
            torso = [pts[_J[n]] for n in ("right_shoulder", "left_shoulder", "left_hip", "right_hip")]
            draw.polygon([tuple(q) for q in torso], fill=255)
            draw.line([tuple(torso[0]), tuple(torso[1])], fill=255, width=width_limb)
        layers.append((mask, colour))
    head = Image.new("L", (big, big), 0)
    centre = pts[_J["neck"]] + np.array([0.0, -_HEAD * unit * SUPERSAMPLE])
    r = 0.2 * unit * SUPERSAMPLE
    ImageDraw.Draw(head).ellipse((centre[0] - r, centre[1] - r, centre[0] + r, centre[1] + r), fill=255)
    layers.append((head, SKIN_RGB))
    for mask, colour in layers:
        alpha = np.asarray(mask.resize((size, size), Image.Resampling.BOX), dtype=np.float32)[:, :, None] / 255.0
        canvas = canvas * (1.0 - alpha) + np.asarray(colour, dtype=np.float64)[None, None, :] * alpha
    return canvas


def render_dancer(
    pattern: str,
    shirt: str,
    pants: str,
    background: str,
    rng: np.random.Generator,
    *,
    speed: float,
    phase: float,
    frames: int,
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one sequence: frames (T, size, size, 3) uint8 and keypoints (T, 18, 3) float32 [x, y, visibility]."""
    for name, value, choices in (
        ("shirt", shirt, COLOURS),
        ("pants", pants, COLOURS),
        ("background", background, BACKGROUNDS),
    ):
        if value not in choices:
            raise ValueError(f"{name}={value!r}: choose one of {choices}")
    unit = rng.uniform(0.8, 0.92) * size / (_BOTTOM - _TOP)
    origin = np.array([size * (0.5 + rng.uniform(-0.05, 0.05)), size * 0.5 - unit * (_TOP + _BOTTOM) / 2])
    canvas0 = render_background(background, rng, size)
    shirt_rgb, pants_rgb = COLOUR_RGB[shirt], COLOUR_RGB[pants]
    images = np.empty((frames, size, size, 3), dtype=np.uint8)
    keypoints = np.empty((frames, len(JOINTS), 3), dtype=np.float32)
    for t in range(frames):
        s = phase + 2.0 * np.pi * speed * t / 16.0
        points, hidden = skeleton(pattern, s)
        points_px = origin + points * unit
        canvas = _draw_figure(canvas0, points_px, unit, shirt_rgb, pants_rgb)
        images[t] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        inside = (points_px >= 0).all(axis=1) & (points_px <= size - 1).all(axis=1)
        visibility = np.where(inside, np.where(hidden, 1.0, 2.0), 0.0)
        keypoints[t, :, :2] = np.round(points_px, 2)
        keypoints[t, :, 2] = visibility
    return images, keypoints


COLOUR_TOLERANCE = 80.0
"""Largest Euclidean RGB distance from a pixel to the shirt (pants) colour for it to count as shirt (pants)."""
FIGURE_DISTANCE = 60.0
"""A pixel further than this from the background's grey level (any channel) is the figure's (as ``read_object``)."""
def figure_masks(frame: np.ndarray, shirt: str, pants: str, background: str) -> tuple[np.ndarray, ...]:
    """Boolean (H, W) shirt, pants and whole-figure masks of a dancer frame, by colour, as ``bench/adapter_fidelity``
    and the image teacher's validation read samples: a pixel is *shirt* when, of the four colours the frame should
    hold (shirt, pants, the head's skin, the background's grey level), the shirt's is the nearest and within
    :data:`COLOUR_TOLERANCE`; likewise *pants*; *figure* is every pixel more than :data:`FIGURE_DISTANCE` from the
    background's grey level in some channel."""
    palette = np.array([COLOUR_RGB[shirt], COLOUR_RGB[pants], SKIN_RGB, (BACKGROUND_LEVEL[background],) * 3], float)
    distance = np.linalg.norm(frame.astype(np.float64)[:, :, None, :] - palette[None, None], axis=-1)
    nearest = distance.argmin(axis=-1)
    close = distance.min(axis=-1) <= COLOUR_TOLERANCE
    figure = np.abs(frame.astype(np.float64) - BACKGROUND_LEVEL[background]).max(axis=-1) > FIGURE_DISTANCE
    return (nearest == 0) & close, (nearest == 1) & close, figure


def draw_dancer(rng: np.random.Generator, *, frames: int, size: int) -> dict:
    """One dancer drawn as the toy world draws it (pattern, shirt ≠ pants, background, speed, phase, in that order
    from ``rng``) and rendered: those fields plus ``frames`` (T, H, W, 3) uint8 and ``keypoints`` (T, 18, 3)."""
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    shirt_id, pants_id = rng.choice(len(COLOURS), size=2, replace=False)
    shirt, pants = COLOURS[int(shirt_id)], COLOURS[int(pants_id)]
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    speed = float(rng.uniform(0.5, 1.5))
    phase = float(rng.uniform(0.0, 2.0 * np.pi))
    images, keypoints = render_dancer(
        pattern, shirt, pants, background, rng, speed=speed, phase=phase, frames=frames, size=size
    )
    return {"pattern": pattern, "shirt": shirt, "pants": pants, "background": background, "speed": speed,
            "phase": phase, "frames": images, "keypoints": keypoints}  # fmt: skip


def generate_dancer_sequences(seed: int, n: int, *, frames: int = 16, size: int = 64) -> list[dict]:
    """Generate ``n`` dancer sequences: seq, pattern, shirt, pants, background, speed, phase, frames (T, H, W, 3)
    uint8, keypoints (T, 18, 3) float32 and joints (names). Identical for identical arguments."""
    if n < 0:
        raise ValueError(f"n={n}: must be >= 0")
    if frames < 1:
        raise ValueError(f"frames={frames}: must be >= 1")
    if size < 32:
        raise ValueError(f"size={size}: must be at least 32 pixels (the figure needs room)")
    sequences = []
    for i in range(n):
        d = draw_dancer(np.random.default_rng([seed, _STREAM, i]), frames=frames, size=size)
        pattern, shirt, pants, background, speed, phase = (
            d[k] for k in ("pattern", "shirt", "pants", "background", "speed", "phase"))
        images, keypoints = d["frames"], d["keypoints"]
        sequences.append(
            {
                "seq": f"dance-{seed}-{i:05d}",
                "pattern": pattern,
                "shirt": shirt,
                "pants": pants,
                "background": background,
                "speed": speed,
                "phase": phase,
                "frames": images,
                "keypoints": keypoints,
                "joints": JOINTS,
            }
        )
    logger.info("generated %d dancer sequences (seed %d)", n, seed)
    return sequences


def write_dancers(out_dir: Path, seqs: list[dict]) -> dict:
    """Write the TikTok layout: ``SEQ/images/0001.png``, ``SEQ/pose/0001.json`` per frame, and ``labels.parquet``.

    Pose JSON: ``{"joints": [...], "keypoints": [[x, y, visibility], ...], "width": W, "height": H}``.
    Returns a summary (sequence count, frame count, pattern counts).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_frames = 0
    for seq in seqs:
        images_dir = out_dir / seq["seq"] / "images"
        pose_dir = out_dir / seq["seq"] / "pose"
        images_dir.mkdir(parents=True, exist_ok=True)
        pose_dir.mkdir(parents=True, exist_ok=True)
        for t, (frame, keypoints) in enumerate(zip(seq["frames"], seq["keypoints"], strict=True), start=1):
            Image.fromarray(frame, "RGB").save(images_dir / f"{t:04d}.png")
            pose = {
                "joints": list(seq["joints"]),
                "keypoints": [[round(float(x), 2), round(float(y), 2), int(v)] for x, y, v in keypoints],
                "width": int(frame.shape[1]),
                "height": int(frame.shape[0]),
            }
            (pose_dir / f"{t:04d}.json").write_text(json.dumps(pose), encoding="utf-8")
            n_frames += 1
    schema = pa.schema(
        [(name, pa.string()) for name in ("seq", "pattern", "shirt", "pants", "background")]
        + [("speed", pa.float64()), ("phase", pa.float64())]
        + [(name, pa.int32()) for name in ("frames", "width", "height")]
    )
    rows = {name: [seq[name] for seq in seqs] for name in ("seq", "pattern", "shirt", "pants", "background")}
    rows["speed"] = [seq["speed"] for seq in seqs]
    rows["phase"] = [seq["phase"] for seq in seqs]
    rows["frames"] = [int(seq["frames"].shape[0]) for seq in seqs]
    rows["width"] = [int(seq["frames"].shape[2]) for seq in seqs]
    rows["height"] = [int(seq["frames"].shape[1]) for seq in seqs]
    pq.write_table(pa.table(rows, schema=schema), out_dir / "labels.parquet")
    logger.info("wrote %d dancer sequences (%d frames) to %s", len(seqs), n_frames, out_dir)
    return {
        "sequences": len(seqs),
        "frames": n_frames,
        "labels": "labels.parquet",
        "pattern_counts": dict(sorted(Counter(seq["pattern"] for seq in seqs).items())),
    }
