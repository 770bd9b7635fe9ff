"""Seeded scenes of coloured shapes: the ground truth behind every toy image.

A scene is one or two flat shapes (circle, square, triangle) in one of six colours, two sizes and five positions, on
a white, gray or black background. The attributes are a closed vocabulary, so a caption can be generated from a
scene (:func:`caption_for`) and parsed back (:func:`parse_caption`), which is what lets the curation tests know the
right answer for every row, and what a tiny text-to-image model can learn in minutes.

Decisions worth knowing:

- ``SceneSpec.jitter_seed`` carries all rendering randomness (position and size jitter, a small rotation, the
  background texture), so ``render_scene`` is a pure function of the spec: re-rendering a scene gives the same
  pixels, and two scenes with the same attributes but different jitter seeds give different pixels.
- Every background gets a unique low-frequency texture, so that two scenes with the same attributes are not
  perceptual-hash near duplicates (a dedup filter would otherwise, rightly, drop clean rows). A plain smooth
  gradient of ±12 levels is not enough: on these sparse images the 8x8 low DCT block of a pHash is dominated by
  the objects, so a pHash mostly encodes "a blob near position P", and measured on 2,000-row worlds about 8% of
  clean rows had a pHash neighbour within 6 bits. The texture is therefore a random mix of the 8x8 lowest 2-D DCT
  basis functions (up to 3.5 cycles per frame, exactly the block a pHash looks at), soft-clipped with
  ``tanh(2.5 * f / std(f))`` so that it carries much more energy for its peak (camouflage-like blotches), scaled to
  a peak of 15-20 grey levels, plus a constant tint of at most ±4 per channel. With it, distinct same-attribute
  pairs differ by a median of 26 pHash bits (p1 14) and 29 dHash bits, about 1 clean row in 1,500 has another
  within 6 pHash bits, and near duplicates stay within 4 bits (see ``tests/unit/test_toyworld_degrade.py``).
- Background base levels (white 230, gray 128, black 26) leave room for the texture while keeping the names true.
- Shapes are drawn as 4x supersampled masks and box-filtered down, so edges are anti-aliased, and composited over
  the background at the output size (cheap: the texture is computed once, at the output size).
- Positions sit at 0.22/0.5/0.78 of the frame; centres move by up to ±0.07 of the frame, radii by ±15%, squares
  and triangles rotate by up to ±15 degrees, and a shape is pushed back inside the frame if it would cross it. The
  geometric jitter adds pHash diversity too, and still leaves every position word true. In two-object scenes the
  objects are drawn 20% smaller, so that they overlap at most slightly; the later object is drawn on top.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
BACKGROUNDS = ("white", "gray", "black")

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (35, 170, 55),
    "blue": (35, 75, 225),
    "yellow": (240, 205, 25),
    "purple": (145, 55, 185),
    "orange": (245, 135, 25),
}
"""Nominal RGB of each colour word; rendered objects stay within ±8 levels per channel of it."""

BACKGROUND_LEVEL: dict[str, int] = {"white": 230, "gray": 128, "black": 26}
"""Nominal grey level of each background word, before the per-image texture and tint (at most ±24 levels)."""

POSITION_PHRASE: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
"""How each position reads in a caption."""

POSITION_XY: dict[str, tuple[float, float]] = {
    "left": (0.22, 0.5),
    "right": (0.78, 0.5),
    "top": (0.5, 0.22),
    "bottom": (0.5, 0.78),
    "center": (0.5, 0.5),
}
"""Object centre for each position, as fractions of the frame (x, y)."""

SIZE_RADIUS: dict[str, float] = {"small": 0.10, "large": 0.18}
"""Object 'radius' (half the extent) for each size word, as a fraction of the frame side."""

SUPERSAMPLE = 4
"""Shapes are drawn at this multiple of the output size, then box-filtered down (anti-aliasing)."""

TEXTURE_AMPLITUDE = 20.0
"""Largest absolute value of the background texture, in grey levels (8-bit)."""

TEXTURE_MAX_FREQ = 8
"""The texture uses DCT basis functions (u, v) with 0 < u + v and u, v < this (u = 7 is 3.5 cycles per frame)."""

TEXTURE_GAIN = 2.5
"""Soft-clipping gain of the texture (tanh(gain * f / std(f))); 0 keeps the plain smooth field."""

POSITION_JITTER = 0.07
"""Largest shift of an object's centre from its position, as a fraction of the frame, per axis."""

SIZE_JITTER = 0.15
"""Object radii are scaled by a factor in [1 - SIZE_JITTER, 1 + SIZE_JITTER]."""

ROTATION_JITTER = 15.0
"""Squares and triangles are rotated by up to this many degrees either way."""


@dataclass(frozen=True)
class ObjectSpec:
    """One shape in a scene; every field is a word from the closed vocabulary above."""

    shape: str
    colour: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for field_name, value, choices in (
            ("shape", self.shape, SHAPES),
            ("colour", self.colour, COLOURS),
            ("size", self.size, SIZES),
            ("position", self.position, POSITIONS),
        ):
            if value not in choices:
                raise ValueError(f"ObjectSpec.{field_name}={value!r}: choose one of {choices}")


@dataclass(frozen=True)
class SceneSpec:
    """A scene: objects (at distinct positions), a background word and the seed of all rendering jitter."""

    objects: tuple[ObjectSpec, ...]
    background: str
    jitter_seed: int

    def __post_init__(self) -> None:
        if not self.objects:
            raise ValueError("SceneSpec.objects is empty: a scene needs at least one object")
        positions = [obj.position for obj in self.objects]
        if len(set(positions)) != len(positions):
            raise ValueError(f"SceneSpec.objects share a position ({positions}): give each object its own position")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"SceneSpec.background={self.background!r}: choose one of {BACKGROUNDS}")

    def to_dict(self) -> dict:
        """A JSON-ready dict (``scene_from_dict`` inverts it)."""
        return {
            "objects": [
                {"shape": o.shape, "colour": o.colour, "size": o.size, "position": o.position} for o in self.objects
            ],
            "background": self.background,
            "jitter_seed": self.jitter_seed,
        }


def scene_from_dict(data: dict) -> SceneSpec:
    """Rebuild a :class:`SceneSpec` from :meth:`SceneSpec.to_dict` output (e.g. a labels row's ``scene`` JSON)."""
    return SceneSpec(
        objects=tuple(ObjectSpec(**obj) for obj in data["objects"]),
        background=data["background"],
        jitter_seed=int(data["jitter_seed"]),
    )


def _choice(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_scene(rng: np.random.Generator, *, max_objects: int = 2) -> SceneSpec:
    """Sample a scene with 1..max_objects objects at distinct positions, uniformly over the vocabulary."""
    if not 1 <= max_objects <= len(POSITIONS):
        raise ValueError(f"max_objects={max_objects}: must be between 1 and {len(POSITIONS)} (one object per position)")
    n_objects = int(rng.integers(1, max_objects + 1))
    position_ids = rng.permutation(len(POSITIONS))[:n_objects]
    objects = tuple(
        ObjectSpec(
            shape=_choice(rng, SHAPES),
            colour=_choice(rng, COLOURS),
            size=_choice(rng, SIZES),
            position=POSITIONS[int(p)],
        )
        for p in position_ids
    )
    return SceneSpec(objects=objects, background=_choice(rng, BACKGROUNDS), jitter_seed=int(rng.integers(2**31)))


def _object_phrase(obj: ObjectSpec) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape} {POSITION_PHRASE[obj.position]}"


def caption_for(scene: SceneSpec) -> str:
    """The true caption, e.g. ``"a large red circle on the left and a small blue square at the top on a black
    background"``; objects are listed in scene order."""
    objects = " and ".join(_object_phrase(obj) for obj in scene.objects)
    return f"{objects} on a {scene.background} background"


_OBJECT_RE = (
    rf"a (?P<size>{'|'.join(SIZES)}) (?P<colour>{'|'.join(COLOURS)}) (?P<shape>{'|'.join(SHAPES)}) "
    rf"(?P<position>{'|'.join(POSITION_PHRASE.values())})"
)
_CAPTION_RE = re.compile(
    rf"(?P<objects>{_OBJECT_RE}(?: and {_OBJECT_RE.replace('?P<', '?P<x')})*)"
    rf" on a (?P<background>{'|'.join(BACKGROUNDS)}) background"
)
_PHRASE_POSITION = {phrase: position for position, phrase in POSITION_PHRASE.items()}


def parse_caption(caption: str) -> tuple[tuple[ObjectSpec, ...], str]:
    """Parse a caption made by :func:`caption_for` (or :func:`mismatched_caption`) back into (objects, background).

    Raises ValueError when the caption does not follow the template.
    """
    match = _CAPTION_RE.fullmatch(caption)
    if match is None:
        raise ValueError(f"caption {caption!r} does not follow the template of toyworld.scenes.caption_for")
    objects = tuple(
        ObjectSpec(shape=m["shape"], colour=m["colour"], size=m["size"], position=_PHRASE_POSITION[m["position"]])
        for m in re.finditer(_OBJECT_RE, match["objects"])
    )
    return objects, match["background"]


def mismatched_caption(scene: SceneSpec, rng: np.random.Generator) -> str:
    """The caption template with one object's colour or shape word replaced by a wrong one.

    Never equal to the true caption (the replaced word always differs), and never a true description of the scene:
    positions are distinct, so the changed object cannot be read as another one.
    """
    index = int(rng.integers(len(scene.objects)))
    obj = scene.objects[index]
    attribute = _choice(rng, ("colour", "shape"))
    if attribute == "colour":
        wrong = _choice(rng, tuple(c for c in COLOURS if c != obj.colour))
        changed = ObjectSpec(shape=obj.shape, colour=wrong, size=obj.size, position=obj.position)
    elif attribute == "shape":
        wrong = _choice(rng, tuple(s for s in SHAPES if s != obj.shape))
        changed = ObjectSpec(shape=wrong, colour=obj.colour, size=obj.size, position=obj.position)
    else:
        raise ValueError(f"attribute={attribute!r}: choose one of ('colour', 'shape')")
    objects = scene.objects[:index] + (changed,) + scene.objects[index + 1 :]
    return caption_for(SceneSpec(objects=objects, background=scene.background, jitter_seed=scene.jitter_seed))


# ---------------------------------------------------------------------------------------------------------------------
# Rendering


def _dct_basis(size: int, n_freq: int) -> np.ndarray:
    """(n_freq, size) DCT-II basis rows cos(pi * u * (2x + 1) / (2 * size)), the same basis a pHash projects on."""
    x = np.arange(size, dtype=np.float64)
    u = np.arange(n_freq, dtype=np.float64)[:, None]
    return np.cos(np.pi * u * (2 * x + 1) / (2 * size))


def background_texture(rng: np.random.Generator, size: int, *, amplitude: float | None = None) -> np.ndarray:
    """A (size, size) float field in [-amplitude, amplitude]: a random mix of the lowest 2-D DCT basis functions,
    soft-clipped with TEXTURE_GAIN.

    The field's peak amplitude is itself drawn from [0.75, 1] * amplitude, so textures also differ in strength.
    """
    amplitude = TEXTURE_AMPLITUDE if amplitude is None else amplitude
    coefficients = rng.standard_normal((TEXTURE_MAX_FREQ, TEXTURE_MAX_FREQ))
    coefficients[0, 0] = 0.0  # no DC: the background word's level stays the mean
    basis = _dct_basis(size, TEXTURE_MAX_FREQ)
    field = basis.T @ coefficients @ basis  # field[y, x] = sum_uv c[v, u] * cos_v(y) * cos_u(x)
    std = float(field.std())
    if std == 0.0:
        return field
    if TEXTURE_GAIN > 0:
        field = np.tanh(TEXTURE_GAIN * field / std)
    peak = float(np.abs(field).max())
    return field * (amplitude * rng.uniform(0.75, 1.0) / peak)


def render_background(background: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) float background: base level + texture + a small constant per-channel tint."""
    if background not in BACKGROUND_LEVEL:
        raise ValueError(f"background={background!r}: choose one of {BACKGROUNDS}")
    texture = background_texture(rng, size)
    tint = rng.uniform(-4.0, 4.0, size=3)
    return BACKGROUND_LEVEL[background] + texture[:, :, None] + tint[None, None, :]


def shape_mask(shape: str, cx: float, cy: float, radius: float, angle_deg: float, size: int) -> np.ndarray:
    """(size, size) float coverage in [0, 1] of one shape, drawn at SUPERSAMPLE x and box-filtered (anti-aliased).

    ``cx``, ``cy`` and ``radius`` are in output pixels; ``angle_deg`` rotates squares and triangles.
    """
    big = size * SUPERSAMPLE
    s = float(SUPERSAMPLE)
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    x, y, r = cx * s, cy * s, radius * s
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    elif shape == "square":
        half = r * 0.88  # a square of the same 'radius' as a circle looks bigger; shrink to similar area
        draw.regular_polygon((x, y, half * np.sqrt(2.0)), 4, rotation=angle_deg, fill=255)
    elif shape == "triangle":
        # the centroid sits a little below the bounding-box centre; shift so the triangle looks centred
        draw.regular_polygon((x, y + r * 0.12, r * 1.12), 3, rotation=angle_deg, fill=255)
    else:
        raise ValueError(f"shape={shape!r}: choose one of {SHAPES}")
    small = mask.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def composite(canvas: np.ndarray, mask: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Alpha-blend a flat colour over a float (H, W, 3) canvas with an (H, W) coverage mask."""
    alpha = mask[:, :, None]
    return canvas * (1.0 - alpha) + rgb[None, None, :] * alpha


def to_image(canvas: np.ndarray) -> Image.Image:
    """Round and clip a float (H, W, 3) canvas to an RGB PIL image."""
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")


def object_colour(colour: str, rng: np.random.Generator) -> np.ndarray:
    """The RGB of a colour word, jittered by at most ±8 levels per channel (float, shape (3,))."""
    if colour not in COLOUR_RGB:
        raise ValueError(f"colour={colour!r}: choose one of {COLOURS}")
    return np.asarray(COLOUR_RGB[colour], dtype=np.float64) + rng.uniform(-8.0, 8.0, size=3)


def render_scene(scene: SceneSpec, size: int = 64) -> Image.Image:
    """Render a scene to an RGB image of ``size`` x ``size``; a pure function of the spec and size."""
    if size < 8:
        raise ValueError(f"size={size}: must be at least 8 pixels")
    rng = np.random.default_rng([scene.jitter_seed, size])
    canvas = render_background(scene.background, rng, size)
    scale = 0.8 if len(scene.objects) > 1 else 1.0
    for obj in scene.objects:
        fx, fy = POSITION_XY[obj.position]
        cx = (fx + rng.uniform(-POSITION_JITTER, POSITION_JITTER)) * size
        cy = (fy + rng.uniform(-POSITION_JITTER, POSITION_JITTER)) * size
        radius = SIZE_RADIUS[obj.size] * scale * rng.uniform(1.0 - SIZE_JITTER, 1.0 + SIZE_JITTER) * size
        angle = rng.uniform(-ROTATION_JITTER, ROTATION_JITTER)
        # keep the whole shape in frame (a rotated square reaches about 1.07 radii from its centre)
        cx = float(np.clip(cx, 1.1 * radius, size - 1.1 * radius))
        cy = float(np.clip(cy, 1.1 * radius, size - 1.1 * radius))
        mask = shape_mask(obj.shape, cx, cy, radius, angle, size)
        canvas = composite(canvas, mask, object_colour(obj.colour, rng))
    return to_image(canvas)
