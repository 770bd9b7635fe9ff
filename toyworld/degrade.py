"""Image degradations with known labels, and the perceptual hashes used to check them.

Each degradation takes an RGB PIL image and a ``numpy.random.Generator`` and returns a new RGB PIL image; all
randomness comes from the generator, so a seeded caller gets identical pixels every time.

Decisions worth knowing:

- Watermarks must be learnable by a small CNN at 64x64: the font size is 9-22 px at 64 px (scaled with the image),
  drawn at 4x with Pillow's bundled FreeType font (``ImageFont.load_default(size=...)``, identical on every machine;
  never a system font), downsampled and alpha-composited. The colour is chosen to contrast with the image's mean
  brightness (grey only on white or black images), and the opacity (0.35-0.9) is raised where needed so that the
  text differs from the mean by at least 80 grey levels: a watermark is never invisible by accident.
- ``near_duplicate`` applies at least one of: JPEG re-encode, a 1-3 px crop (in total, over the four sides) resized
  back, a brightness shift of at most 4%. About 1 draw in 7 moves the pHash by more than 4 bits or the dHash by
  more than 6 (a crop shifts the objects, and these sparse images' hashes follow the objects), so such draws are
  redrawn: a near duplicate is within NEAR_MAX_PHASH pHash bits and NEAR_MAX_DHASH dHash bits of its source.
- Heavy degradations are labels, not subtle nuisances: a blur of radius 2.5-5 px and noise of sigma 35-60 are far
  outside what the clean rows show, so the aesthetic/quality scorers have a clear boundary to learn.
- ``phash``/``dhash`` follow the ``imagehash`` package's definitions (greyscale, Lanczos resize, DCT of 32x32 and
  the 8x8 low-frequency block against its median; 9x8 horizontal gradient), in numpy, so no extra dependency.
"""

from __future__ import annotations

import io
import logging
import string

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

logger = logging.getLogger(__name__)

WATERMARK_WORDS = (
    "stock",
    "sample",
    "© photo",
    "preview",
    "shutter",
    "© stock",
    "watermark",
    "getty",
    "proof",
    "draft",
    "demo",
    "copyright",
    "©",
    "PREVIEW",
    "SAMPLE",
    "STOCK",
)
"""Watermark texts; ``add_watermark`` also makes random 4-8 letter words and random 'www.<word>.com' marks."""

WATERMARK_LAYOUTS = ("single", "tiled", "diagonal")
"""single: one mark anywhere; tiled: a grid of repeats; diagonal: repeated rows rotated by 20-50 degrees."""

WATERMARK_MIN_CONTRAST = 80.0
"""Least opacity * |text grey - image mean grey| of a watermark, in grey levels (4x the background texture's)."""

NOISE_KINDS = ("gaussian", "salt_pepper", "jpeg_blocks")
"""The three kinds of heavy noise ``add_noise`` chooses from."""

NEAR_MAX_PHASH = 4
"""Largest pHash distance (bits) of a near_duplicate() copy from its source."""

NEAR_MAX_DHASH = 6
"""Largest dHash distance (bits) of a near_duplicate() copy from its source."""

_SUPERSAMPLE = 4


def _rgb(img: Image.Image) -> Image.Image:
    if img.mode != "RGB":
        raise ValueError(f"image mode {img.mode!r}: toyworld.degrade functions take RGB images")
    return img


def _random_word(rng: np.random.Generator) -> str:
    length = int(rng.integers(4, 9))
    return "".join(string.ascii_lowercase[int(i)] for i in rng.integers(0, 26, size=length))


def watermark_text(rng: np.random.Generator) -> str:
    """A watermark text: a stock word (60%), a random 4-8 letter word (25%) or a fake domain (15%)."""
    kind = rng.uniform()
    if kind < 0.6:
        return WATERMARK_WORDS[int(rng.integers(len(WATERMARK_WORDS)))]
    if kind < 0.85:
        word = _random_word(rng)
        return word.upper() if rng.uniform() < 0.3 else word
    return f"www.{_random_word(rng)}.com"


def _luminance(img: Image.Image) -> float:
    return float(np.asarray(img.convert("L"), dtype=np.float64).mean())


def _watermark_colours(mean_luma: float) -> list[tuple[int, int, int]]:
    """Colours (white/black/grey) that differ from the image's mean brightness by at least 90 levels."""
    candidates = [(255, 255, 255), (0, 0, 0), (128, 128, 128)]
    return [c for c in candidates if abs(c[0] - mean_luma) >= 90.0] or [(255, 255, 255), (0, 0, 0)]


def add_watermark(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Overlay a text watermark: varied text, size, opacity (0.35-0.9), colour, position, layout and stroke."""
    img = _rgb(img)
    width, height = img.size
    side = min(width, height)
    big_w, big_h = width * _SUPERSAMPLE, height * _SUPERSAMPLE
    text = watermark_text(rng)
    layout = WATERMARK_LAYOUTS[int(rng.integers(len(WATERMARK_LAYOUTS)))]
    mean_luma = _luminance(img)
    colours = _watermark_colours(mean_luma)
    colour = colours[int(rng.integers(len(colours)))]
    # opacity in [0.35, 0.9], but never so low that the text is fainter than the background texture
    opacity = rng.uniform(max(0.35, min(0.9, WATERMARK_MIN_CONTRAST / abs(colour[0] - mean_luma))), 0.9)
    if layout == "single":
        font_px = rng.uniform(0.16, 0.34) * side
    elif layout in ("tiled", "diagonal"):
        font_px = rng.uniform(0.14, 0.22) * side
    else:
        raise ValueError(f"layout={layout!r}: choose one of {WATERMARK_LAYOUTS}")
    font = ImageFont.load_default(size=max(8, round(font_px * _SUPERSAMPLE)))
    stroke = int(rng.integers(1, 3)) * _SUPERSAMPLE if rng.uniform() < 0.35 else 0
    stroke_colour = tuple(255 - c for c in colour) if colour != (128, 128, 128) else (0, 0, 0)
    fill = (*colour, 255)
    stroke_fill = (*stroke_colour, 255)
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    text_w, text_h = right - left, bottom - top

    if layout == "single":
        # a mark wider than the image is allowed to run off the edge, like a real stock watermark
        x = rng.uniform(-0.1 * text_w, max(0.0, big_w - 0.9 * text_w)) - left
        y = rng.uniform(0.0, max(0.0, big_h - text_h)) - top
        overlay = Image.new("RGBA", (big_w, big_h), (*colour, 0))
        ImageDraw.Draw(overlay).text((x, y), text, font=font, fill=fill, stroke_width=stroke, stroke_fill=stroke_fill)
    elif layout in ("tiled", "diagonal"):
        # draw a grid of repeats on a canvas twice the size, rotate it (diagonal only) and crop the middle
        canvas = Image.new("RGBA", (2 * big_w, 2 * big_h), (*colour, 0))
        draw = ImageDraw.Draw(canvas)
        step_x = text_w + rng.uniform(0.15, 0.6) * text_h
        step_y = text_h * rng.uniform(1.6, 2.6)
        offset_x = rng.uniform(0.0, step_x)
        for row, y in enumerate(np.arange(rng.uniform(0.0, step_y), 2 * big_h, step_y)):
            shift = (step_x / 2.0) * (row % 2)
            for x in np.arange(-offset_x - shift, 2 * big_w, step_x):
                draw.text((x - left, y - top), text, font=font, fill=fill, stroke_width=stroke, stroke_fill=stroke_fill)
        if layout == "diagonal":
            angle = rng.uniform(20.0, 50.0) * (1 if rng.uniform() < 0.5 else -1)
            canvas = canvas.rotate(angle, resample=Image.Resampling.BILINEAR)
        overlay = canvas.crop((big_w // 2, big_h // 2, big_w // 2 + big_w, big_h // 2 + big_h))
    else:
        raise ValueError(f"layout={layout!r}: choose one of {WATERMARK_LAYOUTS}")

    overlay = overlay.resize((width, height), Image.Resampling.BOX)
    alpha = np.asarray(overlay.getchannel("A"), dtype=np.float32) * opacity
    overlay.putalpha(Image.fromarray(np.rint(alpha).astype(np.uint8), "L"))
    return Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")


def blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A strong Gaussian blur: radius 2.5-5 px at 64 px, scaled with the image's short side."""
    img = _rgb(img)
    radius = rng.uniform(2.5, 5.0) * min(img.size) / 64.0
    return img.filter(ImageFilter.GaussianBlur(radius))


def add_noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Heavy noise: Gaussian (sigma 35-60), salt-and-pepper (12-25% of pixels) or blocky JPEG (quality 2-6)."""
    img = _rgb(img)
    kind = NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]
    pixels = np.asarray(img, dtype=np.float32)
    if kind == "gaussian":
        sigma = rng.uniform(35.0, 60.0)
        noisy = pixels + rng.standard_normal(pixels.shape).astype(np.float32) * sigma
        return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")
    elif kind == "salt_pepper":
        amount = rng.uniform(0.12, 0.25)
        hit = rng.uniform(size=pixels.shape[:2]) < amount
        salt = rng.uniform(size=pixels.shape[:2]) < 0.5
        noisy = pixels.copy()
        noisy[hit & salt] = 255.0
        noisy[hit & ~salt] = 0.0
        return Image.fromarray(noisy.astype(np.uint8), "RGB")
    elif kind == "jpeg_blocks":
        return jpeg_roundtrip(img, int(rng.integers(2, 7)))
    else:
        raise ValueError(f"kind={kind!r}: choose one of {NOISE_KINDS}")


def low_resolution(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Downscale so the short side is 16-28 px (aspect ratio kept); the toy curation minimum side is 48."""
    img = _rgb(img)
    width, height = img.size
    target = int(rng.integers(16, 29))
    scale = target / min(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return img.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    """Encode as baseline JPEG at ``quality`` and decode again (RGB)."""
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _near_copy(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One random draw of the near-duplicate transforms (at least one of the three is applied)."""
    steps = rng.uniform(size=3) < 0.6
    if not steps.any():
        steps[int(rng.integers(3))] = True
    out = img
    if steps[1]:
        width, height = out.size
        cut = [0, 0, 0, 0]  # pixels cut from the left, top, right, bottom: 1-3 in total
        for _ in range(int(rng.integers(1, 4))):
            cut[int(rng.integers(4))] += 1
        box = (cut[0], cut[1], width - cut[2], height - cut[3])
        out = out.crop(box).resize((width, height), Image.Resampling.BICUBIC)
    if steps[2]:
        factor = 1.0 + rng.uniform(0.015, 0.04) * (1 if rng.uniform() < 0.5 else -1)
        shifted = np.asarray(out, dtype=np.float32) * factor
        out = Image.fromarray(np.clip(np.rint(shifted), 0, 255).astype(np.uint8), "RGB")
    if steps[0]:
        out = jpeg_roundtrip(out, int(rng.integers(55, 91)))
    return out


def is_near(
    a: Image.Image, b: Image.Image, *, max_phash: int = NEAR_MAX_PHASH, max_dhash: int = NEAR_MAX_DHASH
) -> bool:
    """Whether two images are within ``max_phash`` pHash bits and ``max_dhash`` dHash bits of each other."""
    return hamming(phash(a), phash(b)) <= max_phash and hamming(dhash(a), dhash(b)) <= max_dhash


def near_duplicate(img: Image.Image, rng: np.random.Generator, *, tries: int = 16) -> Image.Image:
    """A near copy: at least one of JPEG re-encode (q 55-90), a 1-3 px crop resized back, a brightness shift ≤ 4%.

    The copy is guaranteed near (:func:`is_near`: pHash within NEAR_MAX_PHASH bits and dHash within NEAR_MAX_DHASH
    bits): a draw that moves the hashes further is redrawn, up to ``tries`` times, and the last resort is a plain
    JPEG re-encode at quality 90 (which is always near in practice; about 15% of first draws are redrawn).
    """
    img = _rgb(img)
    for _ in range(tries):
        out = _near_copy(img, rng)
        if is_near(img, out):
            return out
    logger.debug("near_duplicate: %d draws were not near; falling back to a JPEG re-encode", tries)
    return jpeg_roundtrip(img, 90)


# ---------------------------------------------------------------------------------------------------------------------
# Perceptual hashes


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n, dtype=np.float64)[:, None]
    x = np.arange(n, dtype=np.float64)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * x + 1) / (2 * n))  # scipy.fftpack.dct type II, unnormalised


_DCT32 = _dct_matrix(32)


def phash(img: Image.Image) -> int:
    """64-bit DCT perceptual hash (imagehash.phash): 32x32 greyscale, 2-D DCT, 8x8 low block > its median."""
    grey = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT32 @ grey @ _DCT32.T)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def dhash(img: Image.Image) -> int:
    """64-bit difference hash (imagehash.dhash): 9x8 greyscale, each pixel brighter than its left neighbour."""
    grey = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.float64)
    bits = (grey[:, 1:] > grey[:, :-1]).ravel()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()
