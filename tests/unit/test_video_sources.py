"""Reading raw video inputs (TikTok sequences, loose videos, webdataset tars), with bad data quarantined."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest

from pipelines.video_sources import RAW_VIDEO_COLUMNS, VideoSource, discover_videos, read_video_source
from toyworld.dancers import generate_dancer_sequences, write_dancers
from toyworld.images import write_tar
from toyworld.videos import encode_mp4, render_clip


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return encode_mp4(render_clip("square", "blue", "up", "black", np.random.default_rng(1), frames=4, size=16))


@pytest.fixture(scope="module")
def dancers() -> list[dict]:
    return generate_dancer_sequences(0, 2, frames=4, size=32)


def rows_of(root, max_bytes=10_000_000, chunk=64):
    sources, ignored = discover_videos(root, chunk=chunk)
    return [r for s in sources for r in read_video_source(root, s, max_bytes=max_bytes)], ignored


def one(rows, key):
    (row,) = [r for r in rows if r["key"] == key]
    return row


def add(tar, name, data=b"", **fields):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for field, value in fields.items():
        setattr(info, field, value)
    tar.addfile(info, io.BytesIO(data))


def test_a_mixed_root_reads_sequences_videos_and_tar_samples_with_ignored_files_listed(tmp_path, mp4, dancers):
    write_dancers(tmp_path / "dance", dancers)
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(mp4)
    (tmp_path / "clips" / "a.txt").write_bytes(b"a blue square moving up")
    (tmp_path / "clips" / "notes.md").write_text("not an input")
    meta = json.dumps({"url": "toy://k1"})
    write_tar(
        tmp_path / "wds" / "shard-0.tar", [("k1.mp4", mp4), ("k1.txt", b"caption one"), ("k1.json", meta.encode())]
    )

    sources, ignored = discover_videos(tmp_path)
    assert [(s.kind, s.path, s.items) for s in sources] == [
        ("video", "clips", ("clips/a.mp4",)),
        ("tiktok", "dance", ("dance/dance-0-00000", "dance/dance-0-00001")),
        ("tar", "wds/shard-0.tar", ()),
    ]
    assert ignored == ["clips/notes.md", "dance/labels.parquet"]

    rows, _ = rows_of(tmp_path)
    assert all(tuple(r) == RAW_VIDEO_COLUMNS for r in rows)
    assert all(r["quarantine"] is None and r["error"] is None for r in rows)
    assert [(r["id"], r["kind"], r["key"], r["caption"]) for r in rows] == [
        ("clips/a.mp4#000000", "video", "a", "a blue square moving up"),
        ("dance/dance-0-00000#000000", "tiktok", "dance-0-00000", None),
        ("dance/dance-0-00001#000000", "tiktok", "dance-0-00001", None),
        ("wds/shard-0.tar#000000", "tar", "k1", "caption one"),
    ]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    video, seq, _, sample = rows
    assert video["video"] == mp4 and video["frame_files"] is None and video["meta"] is None
    assert sample["video"] == mp4 and json.loads(sample["meta"]) == {"url": "toy://k1"}
    assert seq["video"] is None and seq["mask_files"] is None
    assert seq["frame_files"] == [f"dance/dance-0-00000/images/{i:04d}.png" for i in range(1, 5)]
    assert seq["pose_files"] == [f"dance/dance-0-00000/pose/{i:04d}.json" for i in range(1, 5)]
    assert json.loads(seq["meta"])["has_densepose"] is False


def test_reading_is_deterministic(tmp_path, mp4, dancers):
    write_dancers(tmp_path, dancers)
    (tmp_path / "b.mp4").write_bytes(mp4)
    assert rows_of(tmp_path) == rows_of(tmp_path)


def test_sequence_extras_align_with_frames_and_a_caption_file_is_read(tmp_path, dancers):
    write_dancers(tmp_path, dancers[:1])
    seq = tmp_path / "dance-0-00000"
    (seq / "pose" / "0002.json").unlink()
    (seq / "masks").mkdir()
    (seq / "masks" / "0003.png").write_bytes((seq / "images" / "0003.png").read_bytes())
    (seq / "densepose").mkdir()
    (seq / "densepose" / "0001.png").write_bytes(b"x")
    (seq / "caption.txt").write_text("a dancer waving", encoding="utf-8")
    (seq / "notes.txt").write_text("stray")
    rows, ignored = rows_of(tmp_path)
    row = one(rows, "dance-0-00000")
    assert row["quarantine"] is None and row["caption"] == "a dancer waving"
    assert [p and p.rsplit("/", 1)[1] for p in row["pose_files"]] == ["0001.json", None, "0003.json", "0004.json"]
    assert row["mask_files"] == [None, None, "dance-0-00000/masks/0003.png", None]
    assert json.loads(row["meta"])["has_densepose"] is True
    assert ignored == ["dance-0-00000/notes.txt", "labels.parquet"]


def test_a_gap_in_the_frame_numbering_is_quarantined_as_missing_frames_naming_the_numbers(tmp_path, dancers):
    write_dancers(tmp_path, dancers[:1])
    (tmp_path / "dance-0-00000" / "images" / "0003.png").unlink()
    row = one(rows_of(tmp_path)[0], "dance-0-00000")
    assert row["quarantine"] == "missing_frames" and "missing frame numbers [3]" in row["error"]
    assert row["frame_files"] is None


@pytest.mark.parametrize(
    ("damage", "reason", "words"),
    [
        ("empty", "missing_frames", "no frames"),
        ("zero-byte", "missing_frames", "0002.png is a zero-byte file"),
        ("non-numeric", "bad_schema", "frame_a.png: file name is not a frame number"),
        ("duplicate", "bad_schema", "frame number 1 also used"),
        ("too-many-digits", "bad_schema", "is not a frame number"),
        ("empty-pose", "bad_schema", "pose/0001.json is a zero-byte file"),
    ],
)
def test_broken_frame_folders_are_quarantined_with_a_reason(tmp_path, dancers, damage, reason, words):
    write_dancers(tmp_path, dancers[:1])
    images = tmp_path / "dance-0-00000" / "images"
    if damage == "empty":
        for path in images.iterdir():
            path.unlink()
    elif damage == "zero-byte":
        (images / "0002.png").write_bytes(b"")
    elif damage == "non-numeric":
        (images / "frame_a.png").write_bytes((images / "0001.png").read_bytes())
    elif damage == "too-many-digits":
        (images / ("1" * 13 + ".png")).write_bytes(b"x")
    elif damage == "empty-pose":
        (tmp_path / "dance-0-00000" / "pose" / "0001.json").write_bytes(b"")
    else:
        (images / "1.jpg").write_bytes((images / "0001.png").read_bytes())
    row = one(rows_of(tmp_path)[0], "dance-0-00000")
    assert row["quarantine"] == reason and words in row["error"], row["error"]


def test_a_huge_gap_is_reported_without_listing_every_missing_number(tmp_path, dancers):
    write_dancers(tmp_path, dancers[:1])
    images = tmp_path / "dance-0-00000" / "images"
    (images / "999999999999.png").write_bytes((images / "0001.png").read_bytes())
    row = one(rows_of(tmp_path)[0], "dance-0-00000")
    assert row["quarantine"] == "missing_frames"
    assert "missing frame numbers [5, 6, 7" in row["error"] and ", ...]" in row["error"]
    assert "999999999994 missing" in row["error"]


def test_unsafe_tar_members_are_quarantined_and_the_safe_sample_still_read(tmp_path, mp4):
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        add(tar, "k1.mp4", mp4)
        add(tar, "k1.txt", b"fine")
        add(tar, "../evil.mp4", mp4)
        add(tar, "/abs/k2.mp4", mp4)
        add(tar, "k3.mp4", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add(tar, "k4.mp4", type=tarfile.CHRTYPE)
    rows, _ = rows_of(tmp_path)
    assert [(r["key"], r["quarantine"]) for r in rows] == [
        ("../evil.mp4", "unsafe_path"),
        ("/abs/k2.mp4", "unsafe_path"),
        ("k3.mp4", "unsafe_path"),
        ("k4.mp4", "unsafe_path"),
        ("k1", None),
    ]
    assert all(r["video"] is None for r in rows[:4]) and rows[4]["video"] == mp4
    assert "'..'" in rows[0]["error"] and "shard.tar" in rows[0]["error"]
    assert len({r["id"] for r in rows}) == 5


def test_a_tar_member_without_its_video_is_bad_schema(tmp_path, mp4):
    write_tar(tmp_path / "s.tar", [("k1.mp4", mp4), ("k2.txt", b"orphan caption"), ("k2.json", b"{}")])
    rows, _ = rows_of(tmp_path)
    assert [(r["key"], r["quarantine"]) for r in rows] == [("k1", None), ("k2", "bad_schema")]
    assert "without its pair" in rows[1]["error"]


def test_an_unreadable_tar_is_one_bad_schema_row_naming_the_shard(tmp_path):
    (tmp_path / "broken.tar").write_bytes(b"this is not a tar archive" * 40)
    rows, _ = rows_of(tmp_path)
    assert len(rows) == 1
    assert rows[0]["quarantine"] == "bad_schema" and "broken.tar" in rows[0]["error"]
    assert rows[0]["id"] == "broken.tar#000000" and rows[0]["kind"] == "tar"


def test_a_tar_sample_with_invalid_metadata_json_is_bad_schema(tmp_path, mp4):
    write_tar(tmp_path / "s.tar", [("k1.mp4", mp4), ("k1.json", b"{not json")])
    (row,) = rows_of(tmp_path)[0]
    assert row["quarantine"] == "bad_schema" and "k1.json is not valid JSON" in row["error"]


DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
"""Valid JSON nested deeper than Python's stack: ``json.loads`` raises RecursionError, not ValueError."""


def test_metadata_nested_past_the_stack_is_one_bad_schema_row_and_the_others_are_read(tmp_path, mp4):
    write_tar(tmp_path / "wds" / "s.tar", [("k1.mp4", mp4), ("k1.json", DEEP_JSON), ("k2.mp4", mp4)])
    (tmp_path / "clips").mkdir()
    for name, meta in (("a", DEEP_JSON), ("b", b'{"fps": 8}')):
        (tmp_path / "clips" / f"{name}.mp4").write_bytes(mp4)
        (tmp_path / "clips" / f"{name}.json").write_bytes(meta)
    rows, _ = rows_of(tmp_path)
    assert {r["key"]: r["quarantine"] for r in rows} == {"k1": "bad_schema", "k2": None, "a": "bad_schema", "b": None}
    assert "k1.json is not valid JSON: RecursionError" in one(rows, "k1")["error"]
    assert "clips/a.json is not valid JSON: RecursionError" in one(rows, "a")["error"]
    assert one(rows, "b")["video"] == mp4 and one(rows, "k2")["video"] == mp4


def test_symlinks_leaving_the_root_are_quarantined_and_never_opened(tmp_path, mp4, dancers):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.mp4").write_bytes(mp4)
    (outside / "frame.png").write_bytes(b"png")
    root = tmp_path / "root"
    write_dancers(root, dancers[:1])
    (root / "link.mp4").symlink_to(outside / "x.mp4")
    (root / "linked_dir").symlink_to(outside)
    frame = root / "dance-0-00000" / "images" / "0002.png"
    frame.unlink()
    frame.symlink_to(outside / "frame.png")
    rows, ignored = rows_of(root)
    assert [(r["id"], r["kind"], r["quarantine"]) for r in rows] == [
        ("dance-0-00000#000000", "tiktok", "unsafe_path"),
        ("link.mp4#000000", "unsafe", "unsafe_path"),
        ("linked_dir#000000", "unsafe", "unsafe_path"),
    ]
    assert "0002.png" in rows[0]["error"]
    assert all(r["video"] is None for r in rows)
    assert ignored == ["labels.parquet"]


def test_a_sequence_whose_images_folder_links_outside_the_root_is_unsafe(tmp_path, dancers):
    write_dancers(tmp_path / "outside", dancers[:1])
    root = tmp_path / "root"
    (root / "seq").mkdir(parents=True)
    (root / "seq" / "images").symlink_to(tmp_path / "outside" / "dance-0-00000" / "images")
    rows, ignored = rows_of(root)
    assert [(r["key"], r["kind"], r["quarantine"], r["frame_files"]) for r in rows] == [
        ("seq", "tiktok", "unsafe_path", None)
    ]
    assert "seq/images" in rows[0]["error"] and not ignored


def test_a_symlink_that_stays_inside_the_root_is_read(tmp_path, mp4):
    (tmp_path / "real.mp4").write_bytes(mp4)
    (tmp_path / "alias.mp4").symlink_to(tmp_path / "real.mp4")
    rows, _ = rows_of(tmp_path)
    assert [(r["key"], r["quarantine"], r["video"] == mp4) for r in rows] == [
        ("alias", None, True),
        ("real", None, True),
    ]


def test_non_utf8_captions_are_quarantined_as_bad_encoding(tmp_path, mp4, dancers):
    (tmp_path / "b.mp4").write_bytes(mp4)
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe caption")
    write_tar(tmp_path / "s.tar", [("k1.mp4", mp4), ("k1.txt", b"\xc3\x28")])
    write_dancers(tmp_path / "d", dancers[:1])
    (tmp_path / "d" / "dance-0-00000" / "caption.txt").write_bytes(b"\xff")
    rows, _ = rows_of(tmp_path)
    assert [(r["key"], r["quarantine"]) for r in rows] == [
        ("b", "bad_encoding"),
        ("dance-0-00000", "bad_encoding"),
        ("k1", "bad_encoding"),
    ]
    assert all("UTF-8" in r["error"] for r in rows)


def test_files_above_max_bytes_are_too_large_and_not_read(tmp_path, mp4, dancers):
    (tmp_path / "big.mp4").write_bytes(mp4)
    write_tar(tmp_path / "s.tar", [("k1.mp4", mp4)])
    write_dancers(tmp_path / "d", dancers[:1])
    rows, _ = rows_of(tmp_path, max_bytes=len(mp4) - 1)
    assert [(r["key"], r["quarantine"], r["video"]) for r in rows] == [
        ("big", "too_large", None),
        ("dance-0-00000", None, None),
        ("k1", "too_large", None),
    ]
    assert f"{len(mp4)} bytes" in rows[0]["error"]
    frames_too_big = one(rows_of(tmp_path, max_bytes=10)[0], "dance-0-00000")
    assert frames_too_big["quarantine"] == "too_large" and "0001.png" in frames_too_big["error"]


def test_video_files_are_chunked_per_directory(tmp_path, mp4):
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.webm").write_bytes(mp4)
    sources, _ = discover_videos(tmp_path, chunk=2)
    assert sources == [VideoSource("video", ".", ("a.webm", "b.webm")), VideoSource("video", ".", ("c.webm",))]


def test_a_single_video_or_tar_can_be_the_root_and_a_missing_root_is_named(tmp_path, mp4):
    (tmp_path / "one.mp4").write_bytes(mp4)
    (tmp_path / "one.txt").write_text("just one")
    rows, ignored = rows_of(tmp_path / "one.mp4")
    assert [(r["key"], r["caption"], r["video"] == mp4) for r in rows] == [("one", "just one", True)] and not ignored
    write_tar(tmp_path / "one.tar", [("k.mp4", mp4)])
    assert [r["key"] for r in rows_of(tmp_path / "one.tar")[0]] == ["k"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        discover_videos(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="one.txt"):
        discover_videos(tmp_path / "one.txt")


def test_dot_files_are_skipped(tmp_path, mp4):
    (tmp_path / ".hidden.mp4").write_bytes(mp4)
    os.mkdir(tmp_path / ".cache")
    (tmp_path / ".cache" / "x.mp4").write_bytes(mp4)
    assert discover_videos(tmp_path) == ([], [])


def test_fifos_named_like_video_inputs_are_special_files_and_nothing_blocks(tmp_path, mp4, dancers, within):
    (tmp_path / "clips").mkdir()
    os.mkfifo(tmp_path / "clips" / "v.mp4")  # a video that is a FIFO
    (tmp_path / "clips" / "w.mp4").write_bytes(mp4)
    os.mkfifo(tmp_path / "clips" / "w.json")  # a metadata sidecar that is a FIFO
    (tmp_path / "clips" / "x.mp4").write_bytes(mp4)
    (tmp_path / "wds").mkdir()
    os.mkfifo(tmp_path / "wds" / "s.tar")
    write_dancers(tmp_path / "dance", dancers)
    frame = tmp_path / "dance" / "dance-0-00000" / "images" / "0002.png"
    frame.unlink()
    os.mkfifo(frame)  # one frame of a sequence
    rows, _ = within(60, lambda: rows_of(tmp_path))
    assert {r["key"]: r["quarantine"] for r in rows} == {
        "v": "special_file", "w": "special_file", "x": None, "wds/s.tar": "special_file",
        "dance-0-00000": "special_file", "dance-0-00001": None}  # fmt: skip
    assert "v.mp4 is a FIFO" in one(rows, "v")["error"] and "w.json is a FIFO" in one(rows, "w")["error"]
    assert "images/0002.png is not a regular file" in one(rows, "dance-0-00000")["error"]
    assert one(rows, "x")["video"] == mp4
