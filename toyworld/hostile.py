"""A hostile-input corpus with the outcome each row must get: the curation jobs' bad-data contract, as data.

:func:`write_hostile_images` and :func:`write_hostile_videos` write inputs that real scrapes and uploads contain
(and some that attackers craft) next to a few clean toy rows, and return one :class:`Expect` per input row:

- images: zero-byte, truncated JPEG and PNG, a decompression bomb (a tiny PNG declaring 50000×50000 pixels), a
  1×100000 strip, animated GIF and WebP, CMYK JPEG, 16-bit PNG, an EXIF-rotated JPEG; captions with non-UTF-8 bytes,
  1 MB of text, control characters, only whitespace; Parquet with a missing image column, a mistyped caption column,
  a file that is not Parquet, a key repeated across shards; a webdataset tar with ``../`` and absolute member names,
  a symlink member and members without their pair;
- videos: zero-byte, truncated mp4, an image in a ``.mp4`` name, a stream declaring 0 fps, 10,000 frames, a dancer
  sequence with a gap in its frame numbering, and a tar with the same unsafe members.

An expectation is a decision (``kept``/``rejected``/``quarantined``, or ``decoded``: kept or rejected, whichever the
scorers say, but read and decoded) and, where the case determines it, the reason that must be among the row's
reasons. The names that would escape (``../``, absolute) carry ``tag`` so a test can check that nothing was
written there.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

DECODED = "decoded"
"""Expectation: read and judged by the filters (kept or rejected), never quarantined."""


@dataclass(frozen=True)
class Expect:
    """What one input row must become in the audit."""

    key: str
    decision: str
    reason: str | None = None
    case: str = ""


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _animated(img: Image.Image, fmt: str, **kw) -> bytes:
    """A two-frame animation (``img``, then its mirror image): decoders judge the first frame."""
    second = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _encode(img, fmt, save_all=True, append_images=[second], duration=100, **kw)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width``×``height`` pixels with one tiny IDAT: parsers must refuse it from the
    header, before allocating ``width * height * 3`` bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _exif_rotated_jpeg(img: Image.Image) -> bytes:
    """``img`` stored sideways (turned 90° counter-clockwise) with EXIF orientation 6, which says to turn it 90°
    clockwise for display: decoded correctly it has ``img``'s size again."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(img.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for field, value in fields.items():
        setattr(info, field, value)
    tar.addfile(info, io.BytesIO(data))


def write_hostile_images(root: Path, *, seed: int = 77, tag: str = "hostile") -> list[Expect]:
    """Write the hostile image-text corpus under ``root`` (Parquet shards and one tar); return every row's
    expectation, in no particular order."""
    from toyworld.images import generate_image_records

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clean = iter(generate_image_records(seed, 32, degraded_fraction=0.0))
    expects: list[Expect] = []
    rows: list[tuple[str, bytes | None, bytes | None]] = []  # key, caption bytes, image bytes

    def add(case: str, decision: str, reason: str | None, *, image=None, caption=None, record=None) -> None:
        record = record or next(clean)
        key = f"{tag}-{case}"
        img = record["image"] if image is None else image
        cap = record["caption"].encode() if caption is None else caption
        rows.append((key, cap, img))
        expects.append(Expect(key, decision, reason, case))

    def pil(record: dict) -> Image.Image:
        return Image.open(io.BytesIO(record["image"])).convert("RGB")

    for i in range(3):
        add(f"clean{i}", DECODED, None)
    add("zero_byte", "quarantined", "undecodable", image=b"")
    r = next(clean)
    jpg = _encode(pil(r), "JPEG", quality=90)
    add("truncated_jpeg", "quarantined", "undecodable", image=jpg[: len(jpg) // 2], record=r)
    r = next(clean)
    png = _encode(pil(r), "PNG")
    add("truncated_png", "quarantined", "undecodable", image=png[: len(png) // 2], record=r)
    add("decompression_bomb", "quarantined", "too_large", image=_bomb_png(50_000, 50_000))
    add("strip_1x100000", "rejected", "bad_aspect", image=_encode(Image.new("RGB", (1, 100_000), (90, 60, 30)), "PNG"))
    r = next(clean)
    add("animated_gif", DECODED, None, record=r, image=_animated(pil(r), "GIF", loop=0))
    r = next(clean)
    add("animated_webp", DECODED, None, record=r, image=_animated(pil(r), "WEBP", lossless=True))
    r = next(clean)
    add("cmyk_jpeg", DECODED, None, record=r, image=_encode(pil(r).convert("CMYK"), "JPEG", quality=95))
    r = next(clean)
    grey16 = Image.fromarray((np.asarray(pil(r).convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    add("png_16bit", DECODED, None, record=r, image=_encode(grey16, "PNG"))
    r = next(clean)
    add("exif_rotated", DECODED, None, record=r, image=_exif_rotated_jpeg(pil(r).crop((0, 12, 64, 52))))  # 64×40
    add("caption_not_utf8", "quarantined", "bad_encoding", caption=b"a red \xff\xfe circle")
    # Over decode.max_caption_bytes (64 KiB): quarantined unread beyond its first KiB; under it but over the
    # filter's length: rejected.
    add("caption_1mb", "quarantined", "too_large", caption=("a red circle " * 80_660).encode())
    add("caption_10kb", "rejected", "caption_too_long", caption=("a red circle " * 800).encode())
    add("caption_control", "rejected", "caption_control_chars", caption=b"a red \x00circle\x1b[31m on grey")
    add("caption_whitespace", "rejected", "caption_empty", caption=b" \t\n  \r\n ")
    add("dup_key", DECODED, None)
    pq.write_table(
        pa.table({
            "key": [k for k, _, _ in rows],
            "caption": pa.array([c for _, c, _ in rows], pa.binary()),
            "jpg": pa.array([i for _, _, i in rows], pa.binary()),
        }),
        root / "a-hostile.parquet",
    )  # fmt: skip

    # The same key again in a later shard: the first read wins, the repeat is quarantined.
    r = next(clean)
    pq.write_table(pa.table({"key": [f"{tag}-dup_key"], "caption": [r["caption"]], "jpg": [r["image"]]}),
                   root / "b-dup.parquet")  # fmt: skip
    expects.append(Expect(f"{tag}-dup_key", "quarantined", "duplicate_key", "dup_key_repeat"))
    # Malformed shards: no image column; a caption column of integers; not Parquet at all.
    pq.write_table(pa.table({"key": [f"{tag}-noimg0", f"{tag}-noimg1"], "caption": ["a red circle", "a blue box"]}),
                   root / "c-no-image.parquet")  # fmt: skip
    expects += [Expect(f"{tag}-noimg{i}", "quarantined", "bad_schema", "no_image_column") for i in range(2)]
    r = next(clean)
    pq.write_table(pa.table({"key": [f"{tag}-mistyped"], "caption": [12345], "jpg": [r["image"]]}),
                   root / "d-mistyped.parquet")  # fmt: skip
    expects.append(Expect(f"{tag}-mistyped", "quarantined", "bad_schema", "mistyped_caption"))
    (root / "e-not-parquet.parquet").write_bytes(b"PAR1 this is not a parquet file at all")
    expects.append(Expect("e-not-parquet.parquet", "quarantined", "bad_schema", "not_parquet"))

    # A webdataset tar with members that try to leave the root, a symlink, and members without their pair.
    good = next(clean)
    # A member name that is not UTF-8 (Latin-1 "café"): read, its key escaped.
    latin1 = next(clean)
    expects += _unsafe_tar(root / "f-unsafe.tar", tag, "jpg", good["image"], good["caption"], "image",
                           extra=[(f"{tag}-nocaption.jpg", next(clean)["image"]),
                                  (f"{tag}-caf\udce9.jpg", latin1["image"]),
                                  (f"{tag}-caf\udce9.txt", latin1["caption"].encode())])  # fmt: skip
    expects.append(Expect(f"{tag}-nocaption", "rejected", "caption_empty", "tar_member_without_caption"))
    expects.append(Expect(f"{tag}-caf\\xe9", DECODED, None, "tar_member_name_not_utf8"))
    # A stray image whose file name is not UTF-8, beside the shards: listed as ignored (escaped), never read.
    (root / os.fsdecode(b"z-stray-\xff.png")).write_bytes(next(clean)["image"])
    return expects


def write_hostile_videos(root: Path, *, seed: int = 78, tag: str = "hostile") -> list[Expect]:
    """Write the hostile video corpus under ``root`` (loose videos, a dancer sequence and one tar); return every
    row's expectation."""
    from toyworld.dancers import generate_dancer_sequences, write_dancers
    from toyworld.videos import encode_mp4, generate_video_records

    root = Path(root)
    (root / "loose").mkdir(parents=True, exist_ok=True)
    clean = iter([r for r in generate_video_records(seed, 48) if r["kind"] == "clean"])
    expects: list[Expect] = []

    def loose(case: str, data: bytes, decision: str, reason: str | None, *, caption: str = "a red circle moves up"):
        (root / "loose" / f"{tag}-{case}.mp4").write_bytes(data)
        (root / "loose" / f"{tag}-{case}.txt").write_text(caption)
        expects.append(Expect(f"{tag}-{case}", decision, reason, case))

    for i in range(2):
        r = next(clean)
        loose(f"clean{i}", encode_mp4(r["frames"]), DECODED, None, caption=r["caption"])
    loose("zero_byte", b"", "quarantined", "undecodable")
    mp4 = encode_mp4(next(clean)["frames"])
    loose("truncated", mp4[: len(mp4) // 3], "quarantined", "undecodable")
    loose("image_named_mp4", _encode(Image.new("RGB", (64, 64), (10, 200, 30)), "PNG"), "quarantined", "undecodable")
    loose("zero_fps", _zero_fps(encode_mp4(next(clean)["frames"])), "quarantined", "undecodable")
    rng = np.random.default_rng(seed)
    long = rng.integers(0, 255, (1, 16, 16, 3), dtype=np.uint8).repeat(10_000, axis=0)
    loose("frames_10000", encode_mp4(long), "rejected", "too_long")
    r = next(clean)
    loose("name\udcff", encode_mp4(r["frames"]), DECODED, None, caption=r["caption"])  # a file name not UTF-8
    expects[-1] = Expect(f"{tag}-name\\xff", DECODED, None, "file_name_not_utf8")

    # A dancer sequence (TikTok layout) with frame 0002 missing, next to an intact one.
    seqs = generate_dancer_sequences(seed, 2, frames=16, size=64)
    write_dancers(root / "dancers", seqs)
    gap_dir = sorted((root / "dancers").glob("*/images"))[0]
    frames = sorted(gap_dir.iterdir())
    frames[2].unlink()
    names = sorted(p.parent.name for p in (root / "dancers").glob("*/images"))
    (root / "dancers" / names[1]).rename(root / "dancers" / f"{names[1]}\udcfe")  # a folder name not UTF-8
    expects.append(Expect(names[0], "quarantined", "missing_frames", "sequence_gap"))
    expects.append(Expect(f"{names[1]}\\xfe", DECODED, None, "sequence_intact_name_not_utf8"))

    good = next(clean)
    expects += _unsafe_tar(root / "unsafe.tar", tag, "mp4", encode_mp4(good["frames"]), good["caption"], "video")
    (root / "loose" / "notes.md").write_text("not an input: listed as ignored, never read")
    return expects


def _unsafe_tar(path: Path, tag: str, ext: str, media: bytes, caption: str, what: str, *,
                extra: list[tuple[str, bytes]] = ()) -> list[Expect]:  # fmt: skip
    """A webdataset tar whose members try to leave the root (``../``, absolute), a symlink member, a caption without
    its ``what`` member, ``extra`` members, and one good pair; returns the expectations of its samples but
    ``extra``'s."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        _add(tar, f"../{tag}-escape.{ext}", media)
        _add(tar, f"/tmp/{tag}-absolute.{ext}", media)
        _add(tar, f"{tag}-link.{ext}", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tar, f"{tag}-orphan.txt", f"a caption without its {what}".encode())
        for name, data in extra:
            _add(tar, name, data)
        _add(tar, f"{tag}-good.{ext}", media)
        _add(tar, f"{tag}-good.txt", caption.encode())
    return [
        Expect(f"../{tag}-escape.{ext}", "quarantined", "unsafe_path", "tar_parent_member"),
        Expect(f"/tmp/{tag}-absolute.{ext}", "quarantined", "unsafe_path", "tar_absolute_member"),
        Expect(f"{tag}-link.{ext}", "quarantined", "unsafe_path", "tar_symlink_member"),
        Expect(f"{tag}-orphan", "quarantined", "bad_schema", f"tar_member_without_{what}"),
        Expect(f"{tag}-good", DECODED, None, "tar_good"),
    ]


def _zero_fps(mp4: bytes) -> bytes:
    """``mp4`` with its video track's media timescale set to 0: a stream that declares no frame rate."""
    at = mp4.find(b"mdhd")
    if at < 0:
        raise ValueError("no mdhd box in the mp4")
    version = mp4[at + 4]
    offset = at + 4 + 4 + (16 if version == 1 else 8)  # version+flags, then creation and modification times
    return mp4[:offset] + struct.pack(">I", 0) + mp4[offset + 4 :]
