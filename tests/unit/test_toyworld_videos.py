"""Moving-shape clips: labels, motion in the captioned direction, mp4 round trips, deterministic layout."""

from __future__ import annotations

import json
import tarfile

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from toyworld.scenes import BACKGROUND_LEVEL, COLOUR_RGB
from toyworld.videos import (
    DIRECTIONS,
    LABEL_COLUMNS,
    decode_mp4,
    encode_mp4,
    generate_video_records,
    video_caption,
    write_video_dataset,
)


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return generate_video_records(3, 24)


def object_mask(frame: np.ndarray, colour: str) -> np.ndarray:
    """Pixels within 60 (L1 over RGB) of the nominal object colour."""
    return np.abs(frame.astype(np.int32) - np.asarray(COLOUR_RGB[colour])).sum(axis=-1) < 60


def test_video_records_have_16_frames_and_captions_from_their_labels(records):
    assert {r["direction"] for r in records} == set(DIRECTIONS)
    for r in records:
        assert r["frames"].shape == (16, 64, 64, 3) and r["frames"].dtype == np.uint8
        assert r["caption"] == video_caption(r["shape"], r["colour"], r["direction"], r["background"])
    assert video_caption("circle", "red", "right", "black") == "a red circle moving right on a black background"
    assert video_caption("square", "blue", "growing", "white") == "a blue square growing on a white background"


def test_the_shape_moves_in_its_direction(records):
    for r in records:
        masks = [object_mask(f, r["colour"]) for f in r["frames"]]
        first, last = masks[0], masks[-1]
        assert first.sum() > 10 and last.sum() > 3, r["key"]
        ys0, xs0 = np.nonzero(first)
        ys1, xs1 = np.nonzero(last)
        dx, dy = xs1.mean() - xs0.mean(), ys1.mean() - ys0.mean()
        growth = last.sum() / first.sum()
        expected = {
            "right": dx > 15,
            "left": dx < -15,
            "down": dy > 15,
            "up": dy < -15,
            "growing": growth > 3,
            "shrinking": growth < 1 / 3,
        }
        assert expected[r["direction"]], (r["key"], r["direction"], dx, dy, growth)
        corner = r["frames"][0, :4, :4].mean()
        assert abs(corner - BACKGROUND_LEVEL[r["background"]]) < 30


def test_mp4_encoding_is_deterministic_and_decodes_to_16_frames_with_the_right_colours(records):
    for codec in ("libx264", "mpeg4"):
        data = encode_mp4(records[0]["frames"], codec=codec)
        assert data == encode_mp4(records[0]["frames"], codec=codec)
        decoded = decode_mp4(data)
        assert decoded.shape == (16, 64, 64, 3)
        err = np.abs(decoded.astype(np.int16) - records[0]["frames"].astype(np.int16)).mean()
        assert err < 6.0, (codec, err)
    with pytest.raises(ValueError, match="choose one of"):
        encode_mp4(records[0]["frames"], codec="vp9")


def test_written_mp4_decodes_to_16_frames_with_pyav(records, tmp_path):
    summary = write_video_dataset(tmp_path, records[:4])
    assert summary["rows"] == 4 and summary["wds"] == ["wds/shard-00000.tar"]
    for r in records[:4]:
        with av.open(str(tmp_path / "mp4" / f"{r['key']}.mp4")) as container:
            stream = container.streams.video[0]
            assert stream.average_rate == 8
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == 16 and frames[0].shape == (64, 64, 3)
        mid = object_mask(frames[8], r["colour"])
        assert mid.sum() > 3, r["key"]  # the object's colour survives yuv420p
        assert (tmp_path / "mp4" / f"{r['key']}.txt").read_text(encoding="utf-8") == r["caption"]


def test_video_dataset_layout_is_complete_and_byte_identical_for_a_seed(records, tmp_path):
    write_video_dataset(tmp_path / "a", records[:6])
    write_video_dataset(tmp_path / "b", generate_video_records(3, 6))
    files_a = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files_a) == 2 * 6 + 2
    for name in files_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    with tarfile.open(tmp_path / "a" / "wds" / "shard-00000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for r in records[:6]:
        assert members[f"{r['key']}.mp4"] == (tmp_path / "a" / "mp4" / f"{r['key']}.mp4").read_bytes()
        assert members[f"{r['key']}.txt"].decode() == r["caption"]
        assert json.loads(members[f"{r['key']}.json"])["frames"] == 16
    labels = pq.read_table(tmp_path / "a" / "labels.parquet").to_pylist()
    assert [row["key"] for row in labels] == [r["key"] for r in records[:6]]
    assert list(labels[0]) == list(LABEL_COLUMNS)
    assert all(row["direction"] == r["direction"] for row, r in zip(labels, records, strict=False))
    other = generate_video_records(4, 6)
    assert not np.array_equal(other[0]["frames"], records[0]["frames"])


def test_mp4_bytes_do_not_depend_on_what_the_process_has_imported():
    import subprocess
    import sys

    # torch changes the process's floating-point state; a float-driven rate control then changed the bitstream.
    code = (
        "import hashlib\n"
        "from toyworld.videos import generate_video_records, encode_mp4\n"
        "clips = [r['frames'] for s in (0, 3) for r in generate_video_records(s, 6)]\n"
        "before = [hashlib.sha256(encode_mp4(f)).hexdigest() for f in clips]\n"
        "import torch  # noqa: F401\n"
        "after = [hashlib.sha256(encode_mp4(f)).hexdigest() for f in clips]\n"
        "assert before == after, 'mp4 bytes changed after importing torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
