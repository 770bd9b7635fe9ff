"""Safe image decoding and the per-row image facts the filters need.

Decoding is the one place untrusted bytes meet a parser, so it is defensive by construction:

- the byte size and the pixel count *declared in the header* are checked before any pixel is decoded
  (``Image.open`` is lazy), so a decompression bomb is refused as ``too_large`` without allocating it;
- any exception while parsing or decoding becomes ``undecodable`` with the exception text; it never escapes;
- every mode is normalised to 8-bit RGB: palette and alpha images are composited on white, CMYK converted,
  16-bit and 32-bit greyscale rescaled to 8 bits (PIL's plain ``convert`` clips them), EXIF orientation applied;
- animated images (GIF/WebP/APNG) are judged on their first frame.

It returns plain values (no PIL objects) so results can cross process boundaries cheaply.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from models.errtext import describe_error

# Our own limits are enforced from the header; PIL's global bomb check is made to agree with them per call.
_PIL_LIMIT_SLACK = 1


@dataclass(frozen=True)
class DecodeConfig:
    """Limits and output size of the safe decoder."""

    max_pixels: int = 64_000_000
    """Largest width×height (as declared in the image header) that is decoded; above it the row is ``too_large``."""
    max_bytes: int = 64 * 1024 * 1024
    """Largest encoded image size in bytes; above it the row is ``too_large``."""
    max_caption_bytes: int = 65_536
    """Largest caption (``.txt`` sidecar, tar member or caption column) in bytes; above it the row is ``too_large``
    and only its first KiB is read (kept in the audit, the full length in the error)."""
    max_metadata_bytes: int = 1_048_576
    """Largest metadata (``.json`` sidecar or tar member) in bytes; above it the row is ``too_large``, unread."""
    max_row_group_bytes: int = 2_147_483_648
    """Largest uncompressed size a Parquet row group may declare for one column read; above it the row group is
    one ``too_large`` row, unread."""
    scorer_size: int = 224
    """Shorter side of the RGB thumbnail handed to the model scorers (aspect kept; each scorer crops or resizes
    it to its own input by its own recipe)."""

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels={self.max_pixels!r}: must be ≥ 1 (e.g. 64000000)")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes={self.max_bytes!r}: must be ≥ 1 (e.g. 67108864)")
        for name in ("max_caption_bytes", "max_metadata_bytes", "max_row_group_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1 bytes")
        if not 8 <= self.scorer_size <= 1024:
            raise ValueError(f"scorer_size={self.scorer_size!r}: must be in [8, 1024] (64 for toy, 224 for sd15)")


@dataclass(frozen=True)
class Decoded:
    """What decoding one image produced: either the facts about a good image, or the quarantine reason."""

    ok: bool
    reason: str | None = None
    error: str | None = None
    width: int = 0
    height: int = 0
    format: str | None = None
    mode: str | None = None
    sha256: str | None = None
    phash: int | None = None
    thumbnail: bytes | None = None
    thumbnail_size: tuple[int, int] | None = None


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of raw bytes (the exact-duplicate key)."""
    return hashlib.sha256(data).hexdigest()


def to_rgb(img: Image.Image) -> Image.Image:
    """Normalise any PIL mode to 8-bit RGB (see module docstring for the rules)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        # 16-bit data is rescaled linearly to its own range; PIL's convert("L") would clip at 255.
        grey = np.clip((arr - lo) * scale, 0, 255).astype(np.uint8) if scale else np.zeros(arr.shape, np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


_DCT_N = 32


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(_DCT_N)


def phash(img: Image.Image) -> int:
    """64-bit DCT perceptual hash: 32×32 greyscale, 2-D DCT, the 8×8 lowest frequencies against their median.

    Robust to re-encoding, small crops and brightness shifts; returned as an unsigned int in [0, 2**64).
    """
    grey = np.asarray(img.convert("L").resize((_DCT_N, _DCT_N), Image.Resampling.BILINEAR), dtype=np.float64)
    coeffs = _DCT @ grey @ _DCT.T
    low = coeffs[:8, :8].flatten()
    # The DC term carries only mean brightness; the median over the other 63 decides the bits.
    bits = low > np.median(low[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two 64-bit hashes."""
    return (a ^ b).bit_count()


def decode_image(data: bytes | None, cfg: DecodeConfig) -> Decoded:
    """Decode untrusted image bytes into the facts the filters use, or a quarantine reason. Never raises."""
    if data is None or len(data) == 0:
        return Decoded(ok=False, reason="undecodable", error="no image bytes")
    if len(data) > cfg.max_bytes:
        return Decoded(ok=False, reason="too_large", error=f"{len(data)} bytes > max_bytes={cfg.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > cfg.max_pixels:
                return Decoded(
                    ok=False,
                    reason="too_large",
                    error=f"{width}x{height} = {width * height} pixels > max_pixels={cfg.max_pixels}",
                    width=width,
                    height=height,
                    format=img.format,
                )
            fmt, mode = img.format, img.mode
            old_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = cfg.max_pixels + _PIL_LIMIT_SLACK
            try:
                img.seek(0)
                img.load()
                img = ImageOps.exif_transpose(img)
            finally:
                Image.MAX_IMAGE_PIXELS = old_limit
            rgb = to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Decoded(ok=False, reason="too_large", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser failure is a quarantine, by contract
        return Decoded(ok=False, reason="undecodable", error=describe_error(exc))
    width, height = rgb.size
    thumb = rgb.resize(thumbnail_size(width, height, cfg.scorer_size), Image.Resampling.BICUBIC)
    return Decoded(
        ok=True,
        width=width,
        height=height,
        format=(fmt or "").lower() or None,
        mode=mode,
        sha256=sha256_bytes(data),
        phash=phash(rgb),
        thumbnail=np.asarray(thumb, dtype=np.uint8).tobytes(),
        thumbnail_size=thumb.size,
    )


#: Longest thumbnail side, in multiples of the shorter one: beyond it (a 1×100000 strip) the image is squashed,
#: which bounds memory; such rows are rejected as ``bad_aspect`` anyway.
MAX_THUMBNAIL_ASPECT = 4


def thumbnail_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) of the scorer thumbnail: shorter side ``short_side``, aspect kept up to :data:`MAX_THUMBNAIL_ASPECT`."""
    scale = short_side / min(width, height)
    cap = short_side * MAX_THUMBNAIL_ASPECT
    return min(max(round(width * scale), 1), cap), min(max(round(height * scale), 1), cap)


def thumbnail_array(thumbnail: bytes, width: int, height: int) -> np.ndarray:
    """The scorer thumbnail bytes back as a (height, width, 3) uint8 array."""
    return np.frombuffer(thumbnail, dtype=np.uint8).reshape(height, width, 3)
