"""OpenPose-style pose maps (the control frames of pose-conditioned video models) and a pluggable pose annotator.

A pose map is a black RGB image with the skeleton of every person drawn in OpenPose's conventional colours: each of
the 17 bones of the BODY-18 (COCO-18) skeleton in its own colour of a rainbow, each joint as a filled circle of its
own colour. ControlNet-style pose models were trained on maps drawn this way, so the palette, the bone order and the
drawing rules follow the ControlNet openpose annotator (v1.1): bones first, at 60% of the palette's brightness, then
the joints on top at full brightness.

Keypoints come either from the dataset (``pose/`` JSON files, :func:`parse_pose_json`) or from a pose model run on the
frames. No pose model ships with the platform: :func:`build_pose_annotator` imports a user-supplied class that
implements :class:`PoseAnnotator`, with local weights.

A person is a ``(18, 3)`` float32 array of ``[x, y, confidence]`` in pixels (origin top-left, a pixel's centre at
integer coordinates), joints in :data:`JOINTS` order; a joint with confidence 0 is missing.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

JOINTS = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
"""Joint names in OpenPose BODY-18 (COCO-18) order."""

_J = {name: index for index, name in enumerate(JOINTS)}

LIMBS: tuple[tuple[int, int], ...] = tuple(
    (_J[a], _J[b])
    for a, b in (
        ("neck", "right_shoulder"),
        ("neck", "left_shoulder"),
        ("right_shoulder", "right_elbow"),
        ("right_elbow", "right_wrist"),
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
)
"""The 17 bones as joint index pairs, in the annotator's drawing order (bone k is drawn in ``LIMB_COLOURS[k]``)."""

JOINT_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
)
"""RGB of joint j (in JOINTS order): OpenPose's palette, a rainbow in hue steps of 20 degrees starting at red."""

LIMB_COLOURS: tuple[tuple[int, int, int], ...] = (
    (153, 0, 0),
    (153, 51, 0),
    (153, 102, 0),
    (153, 153, 0),
    (102, 153, 0),
    (51, 153, 0),
    (0, 153, 0),
    (0, 153, 51),
    (0, 153, 102),
    (0, 153, 153),
    (0, 102, 153),
    (0, 51, 153),
    (0, 0, 153),
    (51, 0, 153),
    (102, 0, 153),
    (153, 0, 153),
    (153, 0, 102),
)
"""RGB drawn for bone k (in LIMBS order): the palette's k-th colour at 60% brightness, as the annotator draws bones."""

POSE_SOURCES = ("keypoints", "annotator", "none")
"""Where control frames come from: the dataset's pose JSON, a pose model run on the frames, or nowhere."""

_IMPORT_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")
_MAX_SUPERSAMPLE = 4
# cap on the supersampled canvas's longer side, so large maps do not allocate huge temporary images
_MAX_SUPERSAMPLED_SIDE = 4096


# --------------------------------------------------------------------------------------------------- parsing


def _person_from_flat(values: Any, where: str) -> np.ndarray:
    if not isinstance(values, list) or not all(isinstance(v, int | float) for v in values):
        raise ValueError(f"{where}: expected a flat list of numbers [x1, y1, c1, x2, y2, c2, ...]")
    if len(values) % 3:
        raise ValueError(f"{where}: has {len(values)} numbers, not a multiple of 3 (x, y, confidence per joint)")
    if len(values) // 3 != len(JOINTS):
        raise ValueError(
            f"{where}: has {len(values) // 3} joints, expected {len(JOINTS)} (OpenPose COCO-18 / BODY-18); "
            "other layouts such as BODY_25 must be converted first"
        )
    person = np.asarray(values, dtype=np.float32).reshape(len(JOINTS), 3)
    if not np.isfinite(person).all():
        raise ValueError(f"{where}: contains NaN or infinite values")
    return person


def _person_from_toy(doc: dict) -> np.ndarray:
    keypoints = doc["keypoints"]
    if not isinstance(keypoints, list) or not all(
        isinstance(k, list) and len(k) == 3 and all(isinstance(v, int | float) for v in k) for k in keypoints
    ):
        raise ValueError("pose JSON 'keypoints': expected a list of [x, y, visibility] triples")
    names = doc.get("joints", list(JOINTS))
    if not isinstance(names, list) or len(names) != len(keypoints):
        raise ValueError(
            f"pose JSON 'joints' has {len(names) if isinstance(names, list) else names!r} names for "
            f"{len(keypoints)} keypoints: expected one name per keypoint"
        )
    if not all(isinstance(n, str) for n in names):
        kinds = sorted({type(n).__name__ for n in names if not isinstance(n, str)})
        raise ValueError(f"pose JSON 'joints': every name must be a string, found {', '.join(kinds)}")
    if sorted(names) != sorted(JOINTS):
        raise ValueError(
            f"pose JSON has {len(keypoints)} joints {names}, expected the {len(JOINTS)} BODY-18 joints {list(JOINTS)}"
        )
    raw = np.asarray(keypoints, dtype=np.float32)
    if not np.isfinite(raw).all():
        raise ValueError("pose JSON 'keypoints': contains NaN or infinite values")
    person = np.zeros((len(JOINTS), 3), dtype=np.float32)
    for name, (x, y, v) in zip(names, raw, strict=True):
        # COCO visibility: 2 visible, 1 labelled but hidden (still drawn, as annotators draw occluded joints),
        # 0 not labelled / outside the frame
        person[_J[name]] = (x, y, 1.0 if v > 0 else 0.0)
    return person


def parse_pose_json(text: str) -> list[np.ndarray]:
    """People in a pose JSON document: one ``(18, 3)`` float32 ``[x, y, confidence]`` array per person.

    Two formats are accepted:

    - the toy dataset's ``{"joints": [...], "keypoints": [[x, y, v], ...], "width": W, "height": H}`` (one person;
      ``v`` is COCO visibility, and both 1 (labelled but hidden) and 2 (visible) become confidence 1.0, 0 becomes
      0.0; joints are reordered to :data:`JOINTS` by name);
    - OpenPose output ``{"people": [{"pose_keypoints_2d": [x1, y1, c1, ...]}, ...]}`` with 18 COCO-18 joints in
      pixels (an empty ``people`` list gives no person).

    Raises ValueError (never anything else) for text that is not JSON (also nested too deep to parse), another
    layout, another joint count or joint names that are not strings.
    """
    try:
        doc = json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:  # RecursionError: nesting deeper than Python's stack
        raise ValueError(f"pose file is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if isinstance(doc, dict) and "keypoints" in doc:
        return [_person_from_toy(doc)]
    elif isinstance(doc, dict) and "people" in doc:
        people = doc["people"]
        if not isinstance(people, list) or not all(isinstance(p, dict) for p in people):
            raise ValueError("pose JSON 'people': expected a list of objects with 'pose_keypoints_2d'")
        out = []
        for i, person in enumerate(people):
            if "pose_keypoints_2d" not in person:
                raise ValueError(f"pose JSON people[{i}]: has no 'pose_keypoints_2d'")
            out.append(_person_from_flat(person["pose_keypoints_2d"], f"pose JSON people[{i}].pose_keypoints_2d"))
        return out
    else:
        found = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(
            f"unrecognised pose JSON (found {found}): expected the toy format with 'keypoints' or OpenPose output "
            "with 'people'"
        )


# --------------------------------------------------------------------------------------------------- rendering


class PointTransform(Protocol):
    """Maps source pixel coordinates to output pixel coordinates (e.g. the frames' resize and crop)."""

    def apply(self, xy: np.ndarray) -> np.ndarray:
        """``xy`` is ``(..., 2)`` source pixel coordinates; returns the same shape in output coordinates."""
        ...


def default_limb_width(width: int, height: int) -> int:
    """Bone thickness in pixels for a ``width`` x ``height`` map: 4 pixels per 64 pixels of the shorter side."""
    return max(1, round(min(width, height) / 64 * 4))


def render_pose(
    people: list[np.ndarray],
    width: int,
    height: int,
    *,
    transform: PointTransform | None = None,
    limb_width: int | None = None,
    min_confidence: float = 0.05,
) -> np.ndarray:
    """Draw a ``(height, width, 3)`` uint8 pose map: every person's skeleton on black.

    Bones are lines ``limb_width`` pixels thick (default :func:`default_limb_width`) in :data:`LIMB_COLOURS`, drawn
    in :data:`LIMBS` order; joints are filled circles of diameter ``limb_width`` in :data:`JOINT_COLOURS`, drawn over
    the bones. A joint whose confidence is below ``min_confidence`` is skipped, and so is every bone with a skipped
    end. ``transform.apply`` (if given) maps the keypoints' source pixel coordinates to the map's; otherwise they are
    used as they are. The map is drawn supersampled (up to 4x) and box-filtered down, so thin bones on small maps
    stay smooth while the inside of a bone keeps its exact colour.
    """
    if width < 1 or height < 1:
        raise ValueError(f"width={width!r}, height={height!r}: a pose map needs at least 1 x 1 pixels")
    if limb_width is None:
        limb_width = default_limb_width(width, height)
    if limb_width < 1:
        raise ValueError(f"limb_width={limb_width!r}: must be ≥ 1 pixel (or None for the default)")
    scale = max(1, min(_MAX_SUPERSAMPLE, _MAX_SUPERSAMPLED_SIDE // max(width, height)))
    canvas = Image.new("RGB", (width * scale, height * scale), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    line_width = limb_width * scale
    radius = limb_width * scale / 2.0
    for p, person in enumerate(people):
        person = np.asarray(person, dtype=np.float32)
        if person.shape != (len(JOINTS), 3):
            raise ValueError(f"people[{p}] has shape {person.shape}: expected ({len(JOINTS)}, 3) [x, y, confidence]")
        xy = person[:, :2].astype(np.float64)
        if transform is not None:
            xy = np.asarray(transform.apply(xy), dtype=np.float64)
            if xy.shape != (len(JOINTS), 2):
                raise ValueError(f"transform.apply returned shape {xy.shape} for ({len(JOINTS)}, 2) points")
        # a pixel's centre is at integer coordinates; in the supersampled canvas output pixel x spans
        # [x*s, x*s + s), so its centre is x*s + (s-1)/2
        xy = xy * scale + (scale - 1) / 2.0
        present = (person[:, 2] >= min_confidence) & np.isfinite(xy).all(axis=1)
        for k, (a, b) in enumerate(LIMBS):
            if present[a] and present[b]:
                draw.line([tuple(xy[a]), tuple(xy[b])], fill=LIMB_COLOURS[k], width=line_width)
        for j in np.flatnonzero(present):
            x, y = xy[j]
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=JOINT_COLOURS[j])
    if scale > 1:
        canvas = canvas.resize((width, height), Image.Resampling.BOX)
    return np.asarray(canvas, dtype=np.uint8).copy()


# --------------------------------------------------------------------------------------------------- annotator


@dataclass(frozen=True)
class PoseConfig:
    """Where the pose control frames come from."""

    source: str = "keypoints"
    """'keypoints': the dataset's pose/ JSON files; 'annotator': a pose model run on the frames; 'none': no control."""
    annotator: str | None = None
    """Import path 'package.module:ClassName' of a PoseAnnotator implementation (source 'annotator')."""
    weights: str | None = None
    """Local weights file or directory of the annotator (source 'annotator'); none ships with the platform."""

    def __post_init__(self) -> None:
        if self.source not in POSE_SOURCES:
            raise ValueError(f"source={self.source!r}: choose one of {', '.join(POSE_SOURCES)}")
        if self.annotator is not None and (
            not isinstance(self.annotator, str) or not _IMPORT_PATH.fullmatch(self.annotator)
        ):
            raise ValueError(
                f"annotator={self.annotator!r}: must be an import path 'package.module:ClassName', or null"
            )
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights):
            raise ValueError(f"weights={self.weights!r}: must be a local file or directory path string, or null")


@runtime_checkable
class PoseAnnotator(Protocol):
    """A pose model: built as ``Class(weights=path)``, called on RGB frames, returns each frame's people.

    ``frames`` are ``(H, W, 3)`` uint8 RGB arrays; the result has one list per frame, holding one ``(18, 3)``
    float32 ``[x, y, confidence]`` array per person in :data:`JOINTS` order, in the frame's pixel coordinates.
    """

    def __call__(self, frames: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Per frame, the people's ``(18, 3)`` keypoints."""
        ...


def build_pose_annotator(cfg: PoseConfig, *, key: str = "pose") -> PoseAnnotator | None:
    """The pose model ``cfg`` asks for, or None when the keypoints come from the dataset or no control is wanted.

    ``key`` is the config section, used to name the offending setting in errors. For source 'annotator', raises
    ValueError when ``annotator`` is unset, FileNotFoundError when ``weights`` is unset or does not exist,
    ImportError when the class cannot be imported, and TypeError when it cannot be built as ``Class(weights=...)``
    or its instances are not callable.
    """
    if cfg.source in ("keypoints", "none"):
        return None
    elif cfg.source == "annotator":
        return _load_annotator(cfg, key)
    else:
        raise ValueError(f"{key}.source={cfg.source!r}: choose one of {', '.join(POSE_SOURCES)}")


def _load_annotator(cfg: PoseConfig, key: str) -> PoseAnnotator:
    """Check the annotator settings, import the class and build it with the weights."""
    if cfg.annotator is None:
        raise ValueError(
            f"{key}.annotator is not set but {key}.source is 'annotator': no pose model ships with the platform. "
            "Write a class implementing models.pose.PoseAnnotator (built as Class(weights=path), called on a list "
            "of (H, W, 3) uint8 RGB frames, returning per frame a list of (18, 3) [x, y, confidence] arrays in "
            f"OpenPose BODY-18 order), set {key}.annotator to 'package.module:ClassName' and {key}.weights to its "
            f"local weights; or use {key}.source 'keypoints' with a dataset that has pose/ files"
        )
    if cfg.weights is None:
        raise FileNotFoundError(
            f"{key}.weights is not set: the pose annotator {cfg.annotator!r} needs a local weights file or directory"
        )
    if not Path(cfg.weights).exists():
        raise FileNotFoundError(f"{key}.weights={cfg.weights!r}: no such file or directory")
    module_name, _, class_name = cfg.annotator.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"{key}.annotator={cfg.annotator!r}: cannot import it ({exc})") from exc
    try:
        annotator = cls(weights=cfg.weights)
    except TypeError as exc:
        raise TypeError(
            f"{key}.annotator={cfg.annotator!r}: cannot build it as {class_name}(weights=...) ({exc})"
        ) from exc
    if not isinstance(annotator, PoseAnnotator):
        raise TypeError(f"{key}.annotator={cfg.annotator!r}: instances are not callable on frames (PoseAnnotator)")
    logger.info("built pose annotator %s with weights %s", cfg.annotator, cfg.weights)
    return annotator
