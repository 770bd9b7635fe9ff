"""Decoding video bytes and frame files into RGB arrays, safely, plus the frame geometry the video models share.

Untrusted video meets a parser here, so the rules of ``filters/decode.py`` carry over:

- limits are checked from the header before any frame is decoded: width x height against ``max_pixels`` (a
  decompression-bomb guard), and the frame count against ``max_frames`` as frames come out, so a long video costs
  at most ``max_frames + 1`` decoded frames;
- every failure is a :class:`VideoDecodeError` with one reason code (``undecodable``, ``too_large``, ``too_long``,
  ``missing_frames``) and a message naming the file or key; FFmpeg's own exceptions never escape;
- decoding is in memory (``io.BytesIO``) with one decoder thread, so the frames are a function of the bytes;
- media never reaches the network or another file: FFmpeg is not left to guess the format (a playlist or session
  description saved as ``.mp4`` would pick the HLS, ffconcat or SDP demuxer, which open the URLs, files and UDP
  ports they name). The container is told from its first bytes (:func:`sniff_container`), only the allow-listed
  demuxers open it, and with an empty protocol allow-list, so no nested open of any kind succeeds;
- a declared frame count above ``max_frames`` is refused from the header, before any frame is decoded.

What PyAV (FFmpeg) does with a truncated file, measured on the toy clips, and how each case is caught:

- an mp4 whose ``moov`` index comes last (the usual layout, and the toy clips') loses part of the index. Cut deep
  (toy clip at 50%), opening fails (``InvalidDataError``, ``EOFError``) or finds no stream: ``undecodable``. Cut
  inside the index (toy clip at 90%), FFmpeg may still parse a damaged index that declares all 8 frames and then
  demuxes none of them, without an error: caught by the declared-count check below. Cut only in the trailing
  ``udta`` metadata (the last ~2%), every frame is intact and the video is accepted;
- an mp4 with the index first (``faststart``) opens and declares all its frames; the demuxer then stops early
  *without an error*, and the packet cut at the end of the data comes out flagged corrupt. Some decoders
  (H.264) then raise, others (MPEG-4 part 2) silently decode a damaged frame or nothing at all. So a corrupt packet
  is ``undecodable``, and so is a stream that decodes fewer frames than it declares;
- Matroska/WebM declare no frame count, and a cut stream just ends early with no error. There the frame count is
  estimated from the declared duration (only where that duration is the video stream's own), and a shortfall of
  more than one frame (or 2%, whichever is larger) is ``undecodable``. A WebM cut inside its last frame or two
  is therefore accepted as a slightly shorter clip: its frames are intact.

Frame geometry (:class:`FrameTransform`) uses continuous pixel coordinates with the origin at the top-left
*corner* of the top-left pixel (pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``), so a keypoint maps by one
multiply-and-subtract. A keypoint given in pixel-centre convention (integers at pixel centres) picks up an offset
of ``0.5 * (scale - 1)`` output pixels: a quarter pixel at half size.

This module imports no project package (it sits under ``models/``) and no torch.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from models.errtext import describe_error

log = logging.getLogger(__name__)

VIDEO_DECODE_REASONS = ("undecodable", "too_large", "too_long", "missing_frames")
"""Reason codes a :class:`VideoDecodeError` can carry (all in ``contracts.reasons``)."""

FPS_RANGE = (1.0, 1000.0)
"""Frame rates a stream may declare. Outside it the stream's timing is broken (an ``mdhd`` time scale of 0 makes
FFmpeg report 1/2048 fps and decode a single frame), so the video is ``undecodable``, not a one-frame clip."""

VIDEO_CONTAINERS = ("mov", "matroska", "avi")
"""The FFmpeg demuxers a video may be opened with: ``mov`` (mp4, mov), ``matroska`` (Matroska, WebM), ``avi``.
Which one is told from the first bytes (:func:`sniff_container`); FFmpeg never probes. Anything else, a PNG or JPEG
included (FFmpeg would "open" it as a one-frame video), is ``undecodable``: a still image is not a video."""

_SIGNATURES: tuple[tuple[str, int, tuple[bytes, ...]], ...] = (
    # (FFmpeg demuxer, offset, byte strings one of which must be there)
    ("mov", 4, (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")),  # ISO BMFF: mp4, mov
    ("matroska", 0, (b"\x1a\x45\xdf\xa3",)),  # EBML: Matroska, WebM
    ("avi", 0, (b"RIFF",)),
)
_OPEN_OPTIONS = {"protocol_whitelist": ""}
"""FFmpeg options of every open: no protocol may be opened from inside the container (the bytes come in by
``io.BytesIO``, which needs none)."""

PNG_COMPRESS_LEVEL = 6
"""zlib level of :func:`encode_png`; fixed so the bytes are a function of the pixels (for a given zlib)."""


# Matroska/WebM: shortfall tolerated against a duration-based frame estimate (rounding, variable frame rate).
_ESTIMATE_SLACK_FRAMES = 1
_ESTIMATE_SLACK_FRACTION = 0.02


class VideoDecodeError(Exception):
    """A video or frame file that cannot be used; ``reason`` is the quarantine/reject code, ``str(exc)`` says why."""

    def __init__(self, reason: str, message: str):
        if reason not in VIDEO_DECODE_REASONS:
            raise ValueError(f"reason={reason!r}: choose one of {VIDEO_DECODE_REASONS}")
        super().__init__(message)
        self.reason = reason
        """One of :data:`VIDEO_DECODE_REASONS`."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video's container header declares about its first video stream."""

    fps: float
    """Average frame rate (falls back to FFmpeg's guessed rate); always > 0."""
    width: int
    """Frame width in pixels; always > 0."""
    height: int
    """Frame height in pixels; always > 0."""
    frames: int | None
    """Declared frame count, or None where the container does not say (Matroska/WebM)."""
    codec: str
    """FFmpeg decoder name, e.g. ``h264``, ``vp9``, ``mpeg4``."""
    container: str
    """The allow-listed FFmpeg demuxer that opened it: ``mov`` (mp4, mov), ``matroska`` (and WebM) or ``avi``."""


def _label(name: str | None) -> str:
    return name if name else "<video bytes>"


def sniff_container(data: bytes, label: str = "<video bytes>") -> str:
    """The allow-listed FFmpeg demuxer (``mov``, ``matroska`` or ``avi``) for ``data``, told from its first bytes.

    Raises :class:`VideoDecodeError` (``undecodable``) naming what the bytes look like otherwise.
    """
    for demuxer, offset, magic in _SIGNATURES:
        if data[offset : offset + 4] in magic and (demuxer != "avi" or data[8:12] == b"AVI "):
            return demuxer
    head = data[:16]
    what = "an image?" if head.startswith((b"\x89PNG", b"\xff\xd8", b"GIF8", b"BM")) else "text or another format?"
    raise VideoDecodeError(
        "undecodable", f"{label}: not a video container ({what}): its first bytes {head[:8]!r} match none of "
        f"mp4/mov, matroska/webm, avi",
    )


def _open(data: bytes, label: str) -> av.container.InputContainer:
    """Open ``data`` with the demuxer its signature names and no protocols (see the module docstring)."""
    return av.open(io.BytesIO(data), mode="r", format=sniff_container(data, label), options=dict(_OPEN_OPTIONS))


def _probe(container: av.container.InputContainer, label: str) -> tuple[VideoInfo, av.video.stream.VideoStream]:
    """Header facts of the first video stream of an open container; raises ``undecodable`` for a non-video."""
    if container.format.name not in VIDEO_CONTAINERS:  # unreachable through _open; kept as the contract's guard
        raise VideoDecodeError("undecodable", f"{label}: container {container.format.name!r} is not allow-listed")
    if not container.streams.video:
        raise VideoDecodeError("undecodable", f"{label}: no video stream (the file may be truncated)")
    stream = container.streams.video[0]
    rate: Fraction | None = stream.average_rate or stream.guessed_rate
    if not rate or rate <= 0:
        raise VideoDecodeError("undecodable", f"{label}: the video stream declares no frame rate")
    if not FPS_RANGE[0] <= float(rate) <= FPS_RANGE[1]:
        raise VideoDecodeError(
            "undecodable",
            f"{label}: the video stream declares {float(rate):.4g} fps, outside {FPS_RANGE[0]:g}-{FPS_RANGE[1]:g}: "
            "its timing is broken (a time scale of 0?)",
        )
    ctx = stream.codec_context
    if ctx is None:
        raise VideoDecodeError("undecodable", f"{label}: no decoder for the video stream's codec")
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    if width <= 0 or height <= 0:
        raise VideoDecodeError("undecodable", f"{label}: the video stream declares a {width}x{height} frame size")
    info = VideoInfo(
        fps=float(rate),
        width=width,
        height=height,
        frames=int(stream.frames) if stream.frames and stream.frames > 0 else None,
        codec=str(ctx.name),
        container=str(container.format.name),
    )
    return info, stream


def video_info(data: bytes, *, name: str | None = None) -> VideoInfo:
    """Read the header of in-memory video ``data`` (``name``, a file or key, is used in error messages).

    Raises :class:`VideoDecodeError` (``undecodable``) for zero bytes, a non-video container (an image, text), no
    video stream, or a stream without a frame rate or frame size. It reads the header only: a file truncated after
    a readable header passes here and fails in :func:`iter_video_frames`.
    """
    label = _label(name)
    if not data:
        raise VideoDecodeError("undecodable", f"{label}: zero bytes")
    try:
        with _open(data, label) as container:
            info, _ = _probe(container, label)
    except VideoDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser failure is undecodable, by contract
        raise VideoDecodeError("undecodable", f"{label}: not a readable video: {describe_error(exc)}") from exc
    return info


def _expected_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, info: VideoInfo
) -> tuple[int | None, bool]:
    """(frame count the stream should yield, whether it is only an estimate), or (None, False) if unknowable."""
    if info.frames is not None:
        return info.frames, False
    seconds = None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration and len(container.streams) == 1:
        # The container's duration covers every stream: only trusted when the video is the only one.
        seconds = container.duration / av.time_base
    if not seconds or seconds <= 0:
        return None, False
    return round(seconds * info.fps), True


def iter_video_frames(
    data: bytes, *, max_frames: int, max_pixels: int, name: str | None = None
) -> Iterator[np.ndarray]:
    """Yield the frames of in-memory video ``data`` in order, as uint8 RGB arrays (H, W, 3).

    Raises :class:`VideoDecodeError` (the message names ``name`` when given):

    - ``too_large`` if the declared width x height is above ``max_pixels`` (before any frame is decoded) or a
      decoded frame is;
    - ``too_long`` as soon as a frame beyond the first ``max_frames`` decodes (those are yielded first);
    - ``undecodable`` for zero bytes, a non-video, a decode error mid-stream, a frame whose size differs from the
      header's, a packet cut short, or a truncated stream ("truncated: declared N frames, decoded M").
    """
    if max_frames < 1:
        raise ValueError(f"max_frames={max_frames}: must be >= 1")
    if max_pixels < 1:
        raise ValueError(f"max_pixels={max_pixels}: must be >= 1")
    label = _label(name)
    if not data:
        raise VideoDecodeError("undecodable", f"{label}: zero bytes")
    decoded = 0
    stage = "opening"  # only for the error message
    try:
        with _open(data, label) as container:
            info, stream = _probe(container, label)
            stage = "decoding"
            if info.width * info.height > max_pixels:
                raise VideoDecodeError(
                    "too_large",
                    f"{label}: {info.width}x{info.height} = {info.width * info.height} pixels > "
                    f"max_pixels={max_pixels}",
                )
            if info.frames is not None and info.frames > max_frames:
                raise VideoDecodeError(
                    "too_long", f"{label}: the header declares {info.frames} frames > max_frames={max_frames}"
                )
            stream.codec_context.thread_count = 1
            expected, estimated = _expected_frames(container, stream, info)
            packets = discarded = 0
            for packet in container.demux(stream):
                if packet.is_corrupt:
                    # FFmpeg flags a packet whose data ran past the end of the file; decoders may not notice.
                    raise VideoDecodeError(
                        "undecodable", f"{label}: truncated: packet {packets + 1} is cut short by the end of the data"
                    )
                if packet.size:
                    packets += 1
                    # Edit lists (e.g. clips cut without re-encoding) mark leading packets whose frames FFmpeg drops.
                    discarded += bool(packet.is_discard)
                for frame in packet.decode():
                    if decoded >= max_frames:
                        raise VideoDecodeError("too_long", f"{label}: more than max_frames={max_frames} frames")
                    if (frame.width, frame.height) != (info.width, info.height):
                        if frame.width * frame.height > max_pixels:
                            raise VideoDecodeError(
                                "too_large", f"{label}: frame {decoded} is {frame.width}x{frame.height} > max_pixels"
                            )
                        raise VideoDecodeError(
                            "undecodable",
                            f"{label}: frame {decoded} is {frame.width}x{frame.height}, the header says "
                            f"{info.width}x{info.height}",
                        )
                    array = frame.to_ndarray(format="rgb24")
                    decoded += 1
                    yield array
            if expected is not None and not estimated and decoded < expected - discarded:
                raise VideoDecodeError(
                    "undecodable", f"{label}: truncated: declared {expected} frames, decoded {decoded}"
                )
            if expected is not None and estimated:
                slack = max(_ESTIMATE_SLACK_FRAMES, math.ceil(_ESTIMATE_SLACK_FRACTION * expected))
                if decoded < expected - slack:
                    raise VideoDecodeError(
                        "undecodable",
                        f"{label}: truncated: the declared duration implies about {expected} frames, decoded {decoded}",
                    )
            if decoded == 0:
                raise VideoDecodeError("undecodable", f"{label}: no frame decoded ({packets} packets)")
    except VideoDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parser failure is undecodable, by contract
        where = "not a readable video" if stage == "opening" else f"decoding failed after {decoded} frames"
        raise VideoDecodeError("undecodable", f"{label}: {where}: {describe_error(exc)}") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB: alpha composited on white, 16/32-bit grey rescaled to its own range."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        grey = np.zeros(arr.shape, np.uint8) if hi <= lo else np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def read_image_frame(path: Path, *, max_pixels: int, max_bytes: int) -> np.ndarray:
    """Read one frame file (PNG/JPEG) as uint8 RGB (H, W, 3).

    Raises :class:`VideoDecodeError`: ``too_large`` for more than ``max_bytes`` bytes or ``max_pixels`` pixels
    (both checked before decoding), ``missing_frames`` for a missing, zero-byte, truncated or unreadable file. No
    EXIF rotation is applied: pose and mask files refer to the stored pixel grid.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise VideoDecodeError("missing_frames", f"{path}: cannot read the frame: {describe_error(exc)}") from exc
    if size == 0:
        raise VideoDecodeError("missing_frames", f"{path}: zero-byte frame file")
    if size > max_bytes:
        raise VideoDecodeError("too_large", f"{path}: {size} bytes > max_bytes={max_bytes}")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise VideoDecodeError(
                    "too_large", f"{path}: {width}x{height} = {width * height} pixels > max_pixels={max_pixels}"
                )
            img.load()
            rgb = _to_rgb(img)
            return np.asarray(rgb, dtype=np.uint8).copy()
    except VideoDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise VideoDecodeError("too_large", f"{path}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - untrusted file: any parser failure is a missing frame, by contract
        raise VideoDecodeError("missing_frames", f"{path}: unreadable frame: {describe_error(exc)}") from exc


@dataclass(frozen=True)
class FrameTransform:
    """Maps source pixel coordinates to output ones: x' = x*scale - left, y' = y*scale - top."""

    scale: float
    """Uniform resize factor (output pixels per source pixel)."""
    left: float
    """Horizontal crop offset, in resized pixels (may be fractional: the crop is exactly centred)."""
    top: float
    """Vertical crop offset, in resized pixels."""
    out_width: int
    """Width of the output frame."""
    out_height: int
    """Height of the output frame."""

    def apply(self, xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) source (x, y) coordinates to output coordinates (float64)."""
        xy = np.asarray(xy, dtype=np.float64)
        if xy.shape[-1:] != (2,):
            raise ValueError(f"coordinates of shape {xy.shape}: expected (..., 2)")
        return xy * self.scale - np.array([self.left, self.top])


def frame_transform(width: int, height: int, *, short_side: int, square: bool) -> FrameTransform:
    """The transform that resizes a ``width`` x ``height`` frame so its shorter side is ``short_side`` (aspect kept)
    and, if ``square``, centre-crops it to ``short_side`` x ``short_side``.

    Without ``square`` the longer side is rounded down to whole pixels and the sub-pixel remainder split evenly
    between both edges, so one scale factor maps both axes exactly.
    """
    if width < 1 or height < 1:
        raise ValueError(f"frame size {width}x{height}: both sides must be >= 1")
    if short_side < 1:
        raise ValueError(f"short_side={short_side}: must be >= 1")
    scale = short_side / min(width, height)
    if square:
        out_w = out_h = short_side
    else:
        # The epsilon keeps an exact product (48 * 0.5) from flooring one pixel short through float error.
        out_w = short_side if width <= height else max(short_side, math.floor(width * scale + 1e-6))
        out_h = short_side if height < width else max(short_side, math.floor(height * scale + 1e-6))
    left = max(0.0, (width * scale - out_w) / 2)
    top = max(0.0, (height * scale - out_h) / 2)
    return FrameTransform(scale=scale, left=left, top=top, out_width=out_w, out_height=out_h)


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        shape = getattr(frame, "shape", None)
        raise ValueError(f"frame {shape} {getattr(frame, 'dtype', type(frame))}: expected uint8 (H, W, 3)")


def resize_frame(frame: np.ndarray, transform: FrameTransform) -> np.ndarray:
    """Apply ``transform`` to a uint8 (H, W, 3) frame; returns uint8 (out_height, out_width, 3).

    Resize and crop are one resampling: Pillow's bicubic filter over the source box the output covers. Pillow
    widens the bicubic kernel by the reduction factor when downscaling, so it averages like an area filter there
    (no aliasing) and interpolates when upscaling. A frame already at the target size comes back unchanged, and a
    pure crop (scale 1, whole-pixel offsets) is copied without resampling.
    """
    _check_frame(frame)
    height, width = frame.shape[:2]
    t = transform
    if t.scale == 1 and float(t.left).is_integer() and float(t.top).is_integer():
        left, top = int(t.left), int(t.top)
        if left + t.out_width > width or top + t.out_height > height:
            raise ValueError(f"transform {t} does not fit a {width}x{height} frame")
        if (left, top, t.out_width, t.out_height) == (0, 0, width, height):
            return frame
        return frame[top : top + t.out_height, left : left + t.out_width].copy()
    box = (
        t.left / t.scale,
        t.top / t.scale,
        (t.left + t.out_width) / t.scale,
        (t.top + t.out_height) / t.scale,
    )
    if box[2] > width + 1e-6 or box[3] > height + 1e-6:
        raise ValueError(f"transform {t} does not fit a {width}x{height} frame")
    image = Image.fromarray(frame)
    resized = image.resize((t.out_width, t.out_height), Image.Resampling.BICUBIC, box=box)
    return np.asarray(resized, dtype=np.uint8).copy()


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def analysis_frame(frame: np.ndarray, *, size: int = 32) -> np.ndarray:
    """Grey float32 (size, size) in [0, 1] for motion and scene-cut statistics: BT.601 luma, area-resized (aspect
    not kept)."""
    _check_frame(frame)
    if size < 1:
        raise ValueError(f"size={size}: must be >= 1")
    grey = (frame.astype(np.float32) @ _LUMA) / np.float32(255.0)
    small = Image.fromarray(grey).resize((size, size), Image.Resampling.BOX)
    return np.clip(np.asarray(small, dtype=np.float32), 0.0, 1.0)


def sample_indices(n: int, *, frames: int, stride: int, start: int = 0) -> list[int] | None:
    """Indices of ``frames`` frames ``stride`` apart, their window (span ``(frames-1)*stride+1``) centred in
    ``[start, start+n)`` (the odd frame of slack goes after the window); None if ``n`` is shorter than the span."""
    if frames < 1:
        raise ValueError(f"frames={frames}: must be >= 1")
    if stride < 1:
        raise ValueError(f"stride={stride}: must be >= 1")
    if n < 0 or start < 0:
        raise ValueError(f"n={n}, start={start}: must be >= 0")
    span = (frames - 1) * stride + 1
    if n < span:
        return None
    first = start + (n - span) // 2
    return [first + i * stride for i in range(frames)]


def encode_png(frame: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 RGB (H, W, 3) frame; deterministic (fixed compression level, no metadata)."""
    _check_frame(frame)
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes → uint8 RGB (H, W, 3); raises :class:`VideoDecodeError` (``undecodable``) if they are not a PNG."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            img.load()
            return np.asarray(_to_rgb(img), dtype=np.uint8).copy()
    except Exception as exc:  # noqa: BLE001 - any parser failure is the same answer: not a readable PNG
        raise VideoDecodeError("undecodable", f"<png bytes>: not a readable PNG: {describe_error(exc)}") from exc
