"""Thumbnails of audited rows, read back from a curated dataset's raw input (``alcm audit dataset --thumbnails``).

The audit table keeps every input row's id and source (the shard it came from), not its image, so rejected rows are
shown by reading those sources again with the same reader curation used (``pipelines.sources``): Parquet shards,
webdataset tars and image folders. Rows whose input is gone or does not decode are reported, not skipped silently.
"""

from __future__ import annotations

import io
from pathlib import Path

from pipelines.sources import discover, read_source

THUMBNAIL = 128


def write_thumbnails(input_root: str | Path, rows: list[dict], out_dir: Path, *,
                     max_bytes: int = 64 << 20) -> dict[str, str]:  # fmt: skip
    """Write ``<out_dir>/<key>.png`` for each audited row (dicts with ``id``, ``key``, ``source``) found under
    ``input_root``; returns ``key → path written`` or ``key → why not``."""
    from PIL import Image, UnidentifiedImageError

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
        for raw in read_source(root, source, max_bytes=max_bytes):
            row = wanted.get(raw["id"])
            if row is None:
                continue
            if raw.get("image") is None:
                result[row["key"]] = f"no image bytes ({raw.get('quarantine') or 'missing'})"
                continue
            try:
                with Image.open(io.BytesIO(raw["image"])) as img:
                    img = img.convert("RGB")
                    img.thumbnail((THUMBNAIL, THUMBNAIL))
                    path = out_dir / f"{Path(str(row['key'])).name}.png"
                    img.save(path)
                    result[row["key"]] = str(path)
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                result[row["key"]] = f"does not decode: {exc}"
    return result
