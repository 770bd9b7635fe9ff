"""Thumbnails of audited rows (``alcm audit dataset --thumbnails`` and ``--sheet``), read back safely.

The audit table keeps every input row's id and source (the shard it came from), not its pixels, so a rejected row is
shown by reading its source again under the dataset's raw input with the same reader curation used: Parquet
shards, webdataset tars and image folders (``pipelines.sources``); video files, video tars and frame sequences
(``pipelines.video_sources``). A kept row's pixels are in the dataset's kept data (its image bytes, or the clip's
stored frames), which :func:`registry.audit.sheet_audit` reads.

Every image is decoded by curation's own safe decoder (:func:`filters.decode.decode_image`, with its default
limits unless others are passed): a decompression bomb or an oversized file is reported with its reason and never
decoded. A video's frame is decoded by curation's video reader (:mod:`models.video_io`, with
:class:`pipelines.data_config.ClipConfig`'s default limits), which checks the declared frame size before decoding
any frame. Rows whose input is gone or does not decode are reported (``id → why not``), not skipped silently.
"""

from __future__ import annotations

from pathlib import Path

from filters.decode import DecodeConfig, decode_image, thumbnail_array
from pipelines.data_config import ClipConfig
from pipelines.sources import ReadLimits, Source, discover, read_source

THUMBNAIL = 128


def _limits(decode: DecodeConfig | None) -> DecodeConfig:
    decode = decode or DecodeConfig()
    return DecodeConfig(max_pixels=decode.max_pixels, max_bytes=decode.max_bytes, scorer_size=THUMBNAIL)


def decode_thumbnail(data: bytes | None, decode: DecodeConfig | None = None):
    """Image bytes as a PIL thumbnail (at most :data:`THUMBNAIL` pixels a side) through the safe decoder, or the
    reason it is not one (``not decoded (too_large): ...``)."""
    from PIL import Image

    decoded = decode_image(data, _limits(decode))  # checks bytes and declared pixels before decoding
    if not decoded.ok:
        return f"not decoded ({decoded.reason}): {decoded.error}"
    width, height = decoded.thumbnail_size
    img = Image.fromarray(thumbnail_array(decoded.thumbnail, width, height))
    img.thumbnail((THUMBNAIL, THUMBNAIL))
    return img


def image_thumbnails(input_root: str | Path, rows: list[dict], *, decode: DecodeConfig | None = None) -> dict:
    """``id → thumbnail`` (PIL image) or ``id → why not`` for audited image rows (dicts with ``id``, ``source``)
    found under ``input_root``. ``decode``: the decoder's limits (default :class:`filters.decode.DecodeConfig`'s)."""
    decode = _limits(decode)
    root = Path(input_root)
    if not root.exists():
        return {r["id"]: f"input {root} no longer exists" for r in rows}
    wanted = {r["id"] for r in rows}
    by_source = {r["source"] for r in rows}
    result: dict = {r["id"]: f"row {r['id']} not found in {root}" for r in rows}
    sources, _ = discover(root)
    for source in sources:
        if source.path not in by_source and not (set(source.files) & by_source):
            continue
        if source.kind == "folder":  # one file per row: read only the wanted ones
            source = Source(source.kind, source.path, tuple(f for f in source.files if f in wanted))
        for raw in read_source(root, source, max_bytes=decode.max_bytes, limits=ReadLimits.of(decode)):
            if raw["id"] not in wanted:
                continue
            if raw.get("image") is None:
                result[raw["id"]] = f"no image bytes ({raw.get('quarantine') or 'missing'})"
            else:
                result[raw["id"]] = decode_thumbnail(raw["image"], decode)
    return result


def write_thumbnails(input_root: str | Path, rows: list[dict], out_dir: Path, *,
                     decode: DecodeConfig | None = None) -> dict[str, str]:  # fmt: skip
    """Write ``<out_dir>/<key>.png`` (at most :data:`THUMBNAIL` pixels a side) for each audited row (dicts with
    ``id``, ``key``, ``source``) found under ``input_root``; returns ``key → path written`` or ``key → why not``.
    ``decode``: the decoder's limits (default :class:`filters.decode.DecodeConfig`'s)."""
    thumbs = image_thumbnails(input_root, rows, decode=decode)
    result: dict[str, str] = {}
    for row in rows:
        thumb = thumbs[row["id"]]
        if isinstance(thumb, str):
            result[row["key"]] = thumb
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{Path(str(row['key'])).name}.png"
        thumb.save(path)
        result[row["key"]] = str(path)
    return result


def clip_frame_index(row: dict) -> int:
    """The input frame a clip starts at: its first sampled frame, else its segment's first frame, else 0."""
    indices = row.get("frame_indices") or []
    return int(indices[0]) if indices else int(row.get("segment_start") or 0)


def video_thumbnails(input_root: str | Path, rows: list[dict], *, clip: ClipConfig | None = None) -> dict:
    """``id → thumbnail`` of each audited clip's first frame (:func:`clip_frame_index`) or ``id → why not``, for
    clip rows (dicts with ``id``, ``parent_id``: the raw input row, ``source``) found under ``input_root``.
    ``clip``: the video reader's limits (default :class:`pipelines.data_config.ClipConfig`'s)."""
    from models.video_io import VideoDecodeError
    from pipelines.video_sources import VideoSource, discover_videos, read_video_source

    clip = clip or ClipConfig()
    root = Path(input_root)
    if not root.exists():
        return {r["id"]: f"input {root} no longer exists" for r in rows}
    by_parent: dict[str, list[dict]] = {}
    for r in rows:
        by_parent.setdefault(r.get("parent_id") or r["id"], []).append(r)
    by_source = {r["source"] for r in rows}
    result: dict = {r["id"]: f"input row {r.get('parent_id') or r['id']} not found in {root}" for r in rows}
    sources, _ = discover_videos(root, chunk=clip.chunk)
    for source in sources:
        if source.path not in by_source:
            continue
        if source.kind in ("video", "tiktok"):  # one input per item: read only the wanted ones
            items = tuple(i for i in source.items if f"{i}#{0:06d}" in by_parent)
            source = VideoSource(source.kind, source.path, items)
        for raw in read_video_source(root, source, max_bytes=clip.max_bytes):
            for row in by_parent.get(raw["id"], []):
                if raw.get("quarantine"):
                    result[row["id"]] = f"not read ({raw['quarantine']}): {raw.get('error')}"
                    continue
                try:
                    result[row["id"]] = _frame(root, raw, clip_frame_index(row), clip)
                except VideoDecodeError as exc:
                    result[row["id"]] = f"not decoded ({exc.reason}): {exc}"
    return result


def _frame(root: Path, raw: dict, index: int, clip: ClipConfig):
    """Frame ``index`` of a raw video row as a PIL thumbnail (frames after it are never decoded)."""
    from PIL import Image

    from models.video_io import VideoDecodeError, iter_video_frames, read_image_frame

    frame = None
    if raw["kind"] == "tiktok":
        files = raw.get("frame_files") or []
        if index < len(files):
            frame = read_image_frame(root / files[index], max_pixels=clip.max_pixels, max_bytes=clip.max_bytes)
    else:
        frames = iter_video_frames(raw["video"], max_frames=clip.max_decode_frames, max_pixels=clip.max_pixels,
                                   name=raw["id"])  # fmt: skip
        for i, f in enumerate(frames):
            if i == index:
                frame = f
                break
    if frame is None:
        raise VideoDecodeError("missing_frames", f"{raw['id']}: no frame {index}")
    img = Image.fromarray(frame)
    img.thumbnail((THUMBNAIL, THUMBNAIL))
    return img
