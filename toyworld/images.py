"""A raw image-text dataset with a ground-truth label on every row, in img2dataset and webdataset layouts.

This is the input the image curation job is tested against: each row says what is wrong with it (``label``) and
what a correct curation must do with it (``expected_decision``, ``expected_reason``, using the curation reason
codes). :data:`LABEL_EXPECTATIONS` holds that mapping.

Decisions worth knowing:

- Every row has exactly one defect, so its expected reason is unambiguous whatever order the filters run in.
  In particular ``bad_aspect`` strips keep the clean images' short side (``image_size``) and are 4-6 times as long,
  so they fail the aspect-ratio rule only, never the minimum-side rule; ``low_resolution`` images keep a square
  aspect and only fail the minimum side (16-28 px).
- Duplicates copy an earlier ``clean`` row (row 0 is always clean): ``exact_duplicate`` has the same bytes and
  caption under a new key, ``near_duplicate`` is :func:`toyworld.degrade.near_duplicate` of the original's decoded
  pixels with the same caption, checked on the stored bytes to be within 4 pHash and 6 dHash bits of the original.
  The original stays ``clean`` / kept: both copies have the original's pixel count, and a dedup filter is expected
  to keep the first occurrence in key order (keys sort in generation order) and reject later ones.
- ``corrupt`` rows are quarantined (reason ``undecodable``): half are a real JPEG cut at 30-70% of its length, half
  random bytes; ``width``/``height`` are what the producer claimed (the nominal size), as a crawler would record.
- ``oversized`` rows are valid PNGs of one solid colour, 4800-6400 px a side (23-41 megapixels), hand-assembled
  from repeated deflate blocks so each costs milliseconds and ~100 KB instead of a second of zlib time. They are
  quarantined with ``too_large`` (the curation vocabulary's decompression-bomb guard, judged from the header).
- ``odd_mode`` rows are the clean picture stored as RGBA PNG, CMYK JPEG, greyscale (L) PNG or 16-bit greyscale
  (I;16) PNG, and ``mode`` records that mode. RGBA and CMYK keep every colour, so they are expected ``kept``. L and
  I;16 lose the colour words of the caption, so whether a CLIP-score filter keeps them is not knowable in advance:
  their ``expected_decision`` is ``"any"`` (reason None). Curation tests should only check that they are decoded
  (not quarantined).
- ``mode`` is the PIL mode of the decoded image for every decodable row ("RGB" for ordinary rows), None for corrupt.
- ``scene`` is the JSON of the scene the caption was made from; for ``oversized`` and random-bytes ``corrupt`` rows
  the pixels do not show it. The true caption of any row is ``caption_for(scene_from_dict(json.loads(scene)))``.
- Randomness: the label plan comes from ``default_rng([seed, 1, 0])``, row i from ``default_rng([seed, 1, 1, i])``,
  so a row depends only on (seed, i, its label, and for duplicates the earlier rows it copies). The kinds within a
  label that tests want to see (truncated vs random-bytes corrupt rows, the four odd modes) go in turn rather than
  at random, so even a small world has each.
- No ``webp`` rows are generated, so the Parquet shards carry ``jpg`` and ``png`` columns only.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from toyworld import degrade
from toyworld.scenes import SceneSpec, caption_for, mismatched_caption, render_scene, sample_scene

logger = logging.getLogger(__name__)

LABELS = (
    "clean",
    "watermark",
    "blur",
    "noise",
    "low_resolution",
    "bad_aspect",
    "caption_mismatch",
    "caption_empty",
    "caption_too_short",
    "caption_too_long",
    "caption_control_chars",
    "exact_duplicate",
    "near_duplicate",
    "corrupt",
    "oversized",
    "odd_mode",
)
DEGRADED_LABELS = LABELS[1:]
CAPTION_LABELS = ("caption_mismatch", "caption_empty", "caption_too_short", "caption_too_long", "caption_control_chars")
"""Labels whose image is clean and whose caption carries the defect."""

DECISIONS = ("kept", "rejected", "quarantined", "any")
"""Expected decisions; "any" marks rows whose outcome is legitimately filter-dependent (greyscale odd modes)."""

LABEL_EXPECTATIONS: dict[str, tuple[str, str | None]] = {
    "clean": ("kept", None),
    "watermark": ("rejected", "watermark"),
    "blur": ("rejected", "low_aesthetic"),
    "noise": ("rejected", "low_aesthetic"),
    "low_resolution": ("rejected", "low_resolution"),
    "bad_aspect": ("rejected", "bad_aspect"),
    "caption_mismatch": ("rejected", "low_clip_score"),
    "caption_empty": ("rejected", "caption_empty"),
    "caption_too_short": ("rejected", "caption_too_short"),
    "caption_too_long": ("rejected", "caption_too_long"),
    "caption_control_chars": ("rejected", "caption_control_chars"),
    "exact_duplicate": ("rejected", "duplicate"),
    "near_duplicate": ("rejected", "duplicate"),
    "corrupt": ("quarantined", "undecodable"),
    "oversized": ("quarantined", "too_large"),
    "odd_mode": ("kept", None),
}
"""label -> (expected_decision, expected_reason); odd_mode rows in L or I;16 mode expect "any" instead of "kept"."""

ODD_MODES = ("RGBA", "CMYK", "L", "I;16")
"""Modes of odd_mode rows: RGBA/L/I;16 are stored as PNG, CMYK as JPEG."""

GREY_MODES = ("L", "I;16")
"""Odd modes that drop colour; their expected decision is "any"."""

CAPTION_TOO_LONG_MIN = 301
"""caption_too_long rows have at least this many characters (the toy curation limit is 300)."""

OVERSIZED_SIDE = (4800, 6400)
"""Inclusive range of each side of an oversized PNG; 4800**2 = 23 megapixels, above the 20 MP test threshold."""

IMAGE_COLUMNS = ("jpg", "png")
"""Binary columns of the img2dataset-style Parquet shards; a row fills the one named by its ``format``."""

_STREAM = 1  # images' stream id inside a world seed (videos and dancers use others)
_CONTROL_CHARS = ("\x00", "\x07", "\x1b")
_LONG_FILLER = ("high quality", "4k", "wallpaper", "photo", "hd", "trending", "beautiful", "detailed", "free download")


# ---------------------------------------------------------------------------------------------------------------------
# Encoding helpers


def encode_jpeg(img: Image.Image, quality: int = 92) -> bytes:
    """Baseline JPEG bytes (deterministic for a given libjpeg build)."""
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes at zlib level 6 (Pillow's default)."""
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid 8-bit RGB PNG of one colour, built without compressing width*height*3 bytes.

    Row 0 is stored with filter 0 (the colour), every later row with filter 2 ("Up"), i.e. all zeros. Blocks of
    identical rows are deflated once with a fresh compressor and a full flush, which makes each block byte-aligned
    and self-contained, so the same compressed block can be repeated; the Adler-32 of the whole stream is computed
    incrementally.
    """
    if width < 1 or height < 1:
        raise ValueError(f"solid_png size {width}x{height}: both sides must be positive")
    first_row = b"\x00" + bytes(rgb) * width
    zero_row = b"\x02" + b"\x00" * (3 * width)
    rows_per_block = 256

    def deflate_block(data: bytes) -> bytes:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)

    n_zero_rows = height - 1
    n_blocks, remainder = divmod(n_zero_rows, rows_per_block)
    block = zero_row * rows_per_block
    adler = zlib.adler32(first_row)
    for _ in range(n_blocks):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(zero_row * remainder, adler)
    deflated = (
        deflate_block(first_row)
        + deflate_block(block) * n_blocks
        + (deflate_block(zero_row * remainder) if remainder else b"")
        + b"\x03\x00"  # an empty final block with fixed Huffman codes: ends the deflate stream
    )
    idat = b"\x78\xda" + deflated + struct.pack(">I", adler & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _decode_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


# ---------------------------------------------------------------------------------------------------------------------
# Captions


def _too_long_caption(caption: str, rng: np.random.Generator) -> str:
    target = int(rng.integers(CAPTION_TOO_LONG_MIN, 2 * CAPTION_TOO_LONG_MIN))
    parts = [caption]
    while len(", ".join(parts)) < target:
        if rng.uniform() < 0.5:
            parts.append(caption)
        else:
            parts.append(_LONG_FILLER[int(rng.integers(len(_LONG_FILLER)))])
    return ", ".join(parts)


def _control_char_caption(caption: str, rng: np.random.Generator) -> str:
    chars = list(caption)
    for _ in range(int(rng.integers(1, 4))):
        at = int(rng.integers(1, len(chars)))
        chars.insert(at, _CONTROL_CHARS[int(rng.integers(len(_CONTROL_CHARS)))])
    return "".join(chars)


def _short_caption(scene: SceneSpec, rng: np.random.Generator) -> str:
    obj = scene.objects[0]
    words = (obj.shape, obj.colour, scene.background, "image", "photo", "shapes")
    return words[int(rng.integers(len(words)))]


def degraded_caption(label: str, scene: SceneSpec, rng: np.random.Generator) -> str:
    """The caption of a caption-defect row (one of CAPTION_LABELS) for an image of ``scene``."""
    if label == "caption_mismatch":
        return mismatched_caption(scene, rng)
    elif label == "caption_empty":
        return ("", " ", "   ", "\t", " \n ")[int(rng.integers(5))]
    elif label == "caption_too_short":
        return _short_caption(scene, rng)
    elif label == "caption_too_long":
        return _too_long_caption(caption_for(scene), rng)
    elif label == "caption_control_chars":
        return _control_char_caption(caption_for(scene), rng)
    else:
        raise ValueError(f"label={label!r}: choose one of {CAPTION_LABELS}")


# ---------------------------------------------------------------------------------------------------------------------
# Records


def _label_plan(seed: int, n: int, degraded_fraction: float) -> list[str]:
    """Labels of rows 0..n-1: about degraded_fraction of them degraded, evenly over DEGRADED_LABELS, row 0 clean."""
    if n <= 0:
        return []
    rng = np.random.default_rng([seed, _STREAM, 0])
    n_degraded = min(round(n * degraded_fraction), n - 1)
    order = rng.permutation(len(DEGRADED_LABELS))  # which labels get the extra rows when counts do not divide
    degraded = [DEGRADED_LABELS[int(order[j % len(order)])] for j in range(n_degraded)]
    labels = ["clean"] * (n - n_degraded) + degraded
    labels = [labels[int(j)] for j in rng.permutation(n)]
    first_clean = labels.index("clean")
    labels[0], labels[first_clean] = labels[first_clean], labels[0]
    return labels


def _base_record(key: str, caption: str, scene: SceneSpec, label: str) -> dict:
    decision, reason = LABEL_EXPECTATIONS[label]
    return {
        "key": key,
        "caption": caption,
        "url": f"toy://images/{key}",
        "label": label,
        "expected_decision": decision,
        "expected_reason": reason,
        "duplicate_of": None,
        "scene": json.dumps(scene.to_dict(), sort_keys=True),
    }


def _with_image(record: dict, data: bytes, fmt: str, width: int, height: int, mode: str | None) -> dict:
    record.update({"image": data, "format": fmt, "width": width, "height": height, "mode": mode})
    return record


def _make_row(
    key: str, label: str, rng: np.random.Generator, image_size: int, records: list[dict], variant: int
) -> dict:
    """One record of the given label; duplicates read the earlier ``records``. ``variant`` counts the earlier rows
    of the same label, and picks the kind of corrupt row and the odd mode in turn, so every kind appears."""
    scene = sample_scene(rng)
    caption = caption_for(scene)
    img = render_scene(scene, image_size)
    quality = int(rng.integers(85, 96))

    if label in ("exact_duplicate", "near_duplicate"):
        originals = [r for r in records if r["label"] == "clean"]
        original = originals[int(rng.integers(len(originals)))]
        record = _base_record(key, original["caption"], scene, label)
        record["scene"] = original["scene"]
        record["duplicate_of"] = original["key"]
        if label == "exact_duplicate":
            return _with_image(
                record, original["image"], original["format"], original["width"], original["height"], original["mode"]
            )
        source = _decode_rgb(original["image"])
        for _ in range(8):  # the stored (re-encoded) copy must still be near; a redraw is rarely needed
            data = encode_jpeg(degrade.near_duplicate(source, rng), quality)
            if degrade.is_near(source, _decode_rgb(data)):
                break
        else:
            data = encode_jpeg(source, 95)
        return _with_image(record, data, "jpg", source.width, source.height, "RGB")

    if label in CAPTION_LABELS:
        caption = degraded_caption(label, scene, rng)
    record = _base_record(key, caption, scene, label)

    if label == "clean" or label in CAPTION_LABELS:
        out = img
    elif label == "watermark":
        out = degrade.add_watermark(img, rng)
    elif label == "blur":
        out = degrade.blur(img, rng)
    elif label == "noise":
        out = degrade.add_noise(img, rng)
    elif label == "low_resolution":
        out = degrade.low_resolution(img, rng)
    elif label == "bad_aspect":
        long_side = int(round(image_size * rng.uniform(4.0, 6.0)))
        size = (long_side, image_size) if rng.uniform() < 0.5 else (image_size, long_side)
        out = img.resize(size, Image.Resampling.BICUBIC)
    elif label == "corrupt":
        if variant % 2 == 0:
            data = encode_jpeg(img, quality)
            data = data[: int(len(data) * rng.uniform(0.3, 0.7))]
        else:
            data = rng.integers(0, 256, size=int(rng.integers(256, 4096)), dtype=np.uint8).tobytes()
        return _with_image(record, data, "jpg", image_size, image_size, None)
    elif label == "oversized":
        width, height = (int(v) for v in rng.integers(OVERSIZED_SIDE[0], OVERSIZED_SIDE[1] + 1, size=2))
        rgb = tuple(int(v) for v in rng.integers(0, 256, size=3))
        return _with_image(record, solid_png(width, height, rgb), "png", width, height, "RGB")
    elif label == "odd_mode":
        mode = ODD_MODES[variant % len(ODD_MODES)]
        if mode == "RGBA":
            data, fmt = encode_png(img.convert("RGBA")), "png"
        elif mode == "CMYK":
            data, fmt = encode_jpeg(img.convert("CMYK"), quality), "jpg"
        elif mode == "L":
            data, fmt = encode_png(img.convert("L")), "png"
        elif mode == "I;16":
            grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257  # full 16-bit range: 255 -> 65535
            data, fmt = encode_png(Image.fromarray(grey)), "png"
        else:
            raise ValueError(f"mode={mode!r}: choose one of {ODD_MODES}")
        if mode in GREY_MODES:
            record["expected_decision"] = "any"
        return _with_image(record, data, fmt, img.width, img.height, mode)
    else:
        raise ValueError(f"label={label!r}: choose one of {LABELS}")
    return _with_image(record, encode_jpeg(out, quality), "jpg", out.width, out.height, "RGB")


def generate_image_records(seed: int, n: int, *, image_size: int = 64, degraded_fraction: float = 0.4) -> list[dict]:
    """Generate ``n`` labelled image-text rows; about ``degraded_fraction`` of them carry one defect each.

    Each record has: key, caption, image (bytes), format ("jpg" | "png"), url, width, height, label,
    expected_decision, expected_reason, duplicate_of, mode, scene (JSON). Identical for identical arguments.
    """
    if n < 0:
        raise ValueError(f"n={n}: must be >= 0")
    if not 0.0 <= degraded_fraction <= 1.0:
        raise ValueError(f"degraded_fraction={degraded_fraction}: must be in [0, 1]")
    if image_size < 16:
        raise ValueError(f"image_size={image_size}: must be at least 16 pixels")
    records: list[dict] = []
    seen: Counter[str] = Counter()
    for i, label in enumerate(_label_plan(seed, n, degraded_fraction)):
        rng = np.random.default_rng([seed, _STREAM, 1, i])
        records.append(_make_row(f"img-{seed}-{i:06d}", label, rng, image_size, records, seen[label]))
        seen[label] += 1
    logger.info("generated %d image records (seed %d): %s", n, seed, dict(Counter(r["label"] for r in records)))
    return records


# ---------------------------------------------------------------------------------------------------------------------
# Writing


LABEL_COLUMNS = ("key", "label", "expected_decision", "expected_reason", "duplicate_of", "mode", "scene", "format")
"""Columns of ``labels.parquet`` (no image bytes)."""

_SHARD_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("caption", pa.string()),
        ("jpg", pa.binary()),
        ("png", pa.binary()),
        ("url", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
_LABEL_SCHEMA = pa.schema([(name, pa.string()) for name in LABEL_COLUMNS])


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a file with fixed metadata (mtime 0, root, 0644), so the archive bytes depend on content only."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """Write a deterministic (USTAR, fixed metadata) tar file with ``members`` in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            _tar_member(tar, name, data)


def _wds_members(record: dict) -> list[tuple[str, bytes]]:
    meta = {"key": record["key"], "url": record["url"], "width": record["width"], "height": record["height"]}
    return [
        (f"{record['key']}.{record['format']}", record["image"]),
        (f"{record['key']}.txt", record["caption"].encode("utf-8")),
        (f"{record['key']}.json", json.dumps(meta, sort_keys=True).encode("utf-8")),
    ]


def _shard_table(rows: list[dict]) -> pa.Table:
    for row in rows:
        if row["format"] not in IMAGE_COLUMNS:
            raise ValueError(f"record {row['key']}: format={row['format']!r}; choose one of {IMAGE_COLUMNS}")
    columns = {
        "key": [r["key"] for r in rows],
        "caption": [r["caption"] for r in rows],
        "jpg": [r["image"] if r["format"] == "jpg" else None for r in rows],
        "png": [r["image"] if r["format"] == "png" else None for r in rows],
        "url": [r["url"] for r in rows],
        "width": [r["width"] for r in rows],
        "height": [r["height"] for r in rows],
    }
    return pa.table(columns, schema=_SHARD_SCHEMA)


def write_image_dataset(out_dir: Path, records: list[dict], *, rows_per_shard: int = 500) -> dict:
    """Write ``records`` as img2dataset-style Parquet shards, webdataset tar shards and ``labels.parquet``.

    Layout: ``parquet/part-NNNNN.parquet`` (key, caption, jpg, png, url, width, height), ``wds/shard-NNNNN.tar``
    (KEY.jpg|KEY.png, KEY.txt, KEY.json) with the same rows per shard, and ``labels.parquet`` (LABEL_COLUMNS).
    Returns a summary: row count, shard paths (relative to ``out_dir``), label and expected-decision counts.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard={rows_per_shard}: must be >= 1")
    out_dir = Path(out_dir)
    (out_dir / "parquet").mkdir(parents=True, exist_ok=True)
    (out_dir / "wds").mkdir(parents=True, exist_ok=True)
    parquet_files, tar_files = [], []
    for shard, start in enumerate(range(0, len(records), rows_per_shard)):
        rows = records[start : start + rows_per_shard]
        parquet_path = out_dir / "parquet" / f"part-{shard:05d}.parquet"
        pq.write_table(_shard_table(rows), parquet_path)
        tar_path = out_dir / "wds" / f"shard-{shard:05d}.tar"
        write_tar(tar_path, [member for row in rows for member in _wds_members(row)])
        parquet_files.append(parquet_path.relative_to(out_dir).as_posix())
        tar_files.append(tar_path.relative_to(out_dir).as_posix())
    labels = pa.table({name: [r[name] for r in records] for name in LABEL_COLUMNS}, schema=_LABEL_SCHEMA)
    pq.write_table(labels, out_dir / "labels.parquet")
    summary = {
        "rows": len(records),
        "parquet": parquet_files,
        "wds": tar_files,
        "labels": "labels.parquet",
        "label_counts": dict(sorted(Counter(r["label"] for r in records).items())),
        "expected_decision_counts": dict(sorted(Counter(r["expected_decision"] for r in records).items())),
    }
    logger.info("wrote %d image rows to %s (%d shards)", len(records), out_dir, len(parquet_files))
    return summary
