"""Thumbnails of audited rows, read back from a curated dataset's raw input (``alcm audit dataset --thumbnails``).

The audit table keeps every input row's id and source (the shard it came from), not its image, so rejected rows are
shown by reading those sources again with the same reader curation used (``pipelines.sources``): Parquet shards,
webdataset tars and image folders. Images are decoded by curation's own safe decoder
(:func:`filters.decode.decode_image`, with its default limits unless others are passed): a decompression bomb or
an oversized file is reported with its reason and never decoded. Rows whose input is gone or does not decode are
reported, not skipped silently.
"""

from __future__ import annotations

from pathlib import Path

from filters.decode import DecodeConfig, decode_image, thumbnail_array
from pipelines.sources import ReadLimits, discover, read_source

THUMBNAIL = 128


def write_thumbnails(input_root: str | Path, rows: list[dict], out_dir: Path, *,
                     decode: DecodeConfig | None = None) -> dict[str, str]:  # fmt: skip
    """Write ``<out_dir>/<key>.png`` (at most :data:`THUMBNAIL` pixels a side) for each audited row (dicts with
    ``id``, ``key``, ``source``) found under ``input_root``; returns ``key → path written`` or ``key → why not``.
    ``decode``: the decoder's limits (default :class:`filters.decode.DecodeConfig`'s)."""
    from PIL import Image

    decode = decode or DecodeConfig()
    decode = DecodeConfig(max_pixels=decode.max_pixels, max_bytes=decode.max_bytes, scorer_size=THUMBNAIL)
    root = Path(input_root)
    if not root.exists():
        return {r["key"]: f"input {root} no longer exists" for r in rows}
    wanted = {r["id"]: r for r in rows}
    by_source = {r["source"] for r in rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, str] = {r["key"]: f"row {r['id']} not found in {root}" for r in rows}
    sources, _ = discover(root)
    for source in sources:
        if source.path not in by_source and not (set(source.files) & by_source):
            continue
        for raw in read_source(root, source, max_bytes=decode.max_bytes, limits=ReadLimits.of(decode)):
            row = wanted.get(raw["id"])
            if row is None:
                continue
            if raw.get("image") is None:
                result[row["key"]] = f"no image bytes ({raw.get('quarantine') or 'missing'})"
                continue
            decoded = decode_image(raw["image"], decode)  # checks bytes and declared pixels before decoding
            if not decoded.ok:
                result[row["key"]] = f"not decoded ({decoded.reason}): {decoded.error}"
                continue
            width, height = decoded.thumbnail_size
            img = Image.fromarray(thumbnail_array(decoded.thumbnail, width, height))
            img.thumbnail((THUMBNAIL, THUMBNAIL))
            path = out_dir / f"{Path(str(row['key'])).name}.png"
            img.save(path)
            result[row["key"]] = str(path)
    return result
