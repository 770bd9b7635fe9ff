"""Reads are bounded before they happen: captions, metadata, Parquet row groups and dictionaries, compressed tars,
sparse members (issue 22). Every input row is still accounted, with its reason and the config key named."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.safe_read import ReadLimits
from pipelines.sources import discover, read_source
from pipelines.video_sources import discover_videos, read_video_source
from toyworld.videos import encode_mp4, render_clip

LIMITS = ReadLimits(caption_bytes=1000, metadata_bytes=2000, row_group_bytes=1_000_000)


def png(color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def rows_of(root, limits=LIMITS, max_bytes=10_000_000):
    sources, _ = discover(root)
    return [r for s in sources for r in read_source(root, s, max_bytes=max_bytes, limits=limits)]


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def dictionary_column(value, n: int, kind=pa.string()) -> pa.DictionaryArray:
    """``n`` rows all holding ``value``, stored once (a dictionary of one entry)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value], kind))


# ------------------------------------------------------------------------------------------------ Parquet


def test_a_dictionary_caption_bomb_is_quarantined_per_row_without_expanding(tmp_path):
    # 20,000 rows share one 512 KB caption: a 50 KB file that materialises to 10 GB of captions.
    n, caption = 20_000, "dance " * 87_382
    table = pa.table({"key": [f"k{i}" for i in range(n)], "caption": dictionary_column(caption, n),
                      "png": dictionary_column(png(), n, pa.binary())})  # fmt: skip
    # Without the stored Arrow schema, as most writers leave it: a plain reader expands the dictionary.
    pq.write_table(table, tmp_path / "bomb.parquet", compression="zstd", store_schema=False)
    assert (tmp_path / "bomb.parquet").stat().st_size < 2_000_000
    # In a fresh process, so its peak memory is this read's alone: VmHWM of its own address space (ru_maxrss would
    # carry the test runner's peak across exec).
    code = (
        "import json, re, sys; from pathlib import Path; from pipelines.sources import discover, read_source\n"
        "root = Path(sys.argv[1])\n"
        "n, reasons, lengths = 0, set(), set()\n"
        "for r in (r for s in discover(root)[0] for r in read_source(root, s, max_bytes=1 << 20)):\n"
        "    n += 1; reasons.add((r['quarantine'], r['error'])); lengths.add(len(r['caption'] or ''))\n"
        "print(json.dumps({'n': n, 'reasons': sorted(reasons), 'lengths': sorted(lengths),\n"
        "                  'peak_kib': int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())[1])}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["n"] == n
    assert got["reasons"] == [["too_large", f"caption is {len(caption)} bytes > decode.max_caption_bytes=65536"]]
    assert got["lengths"] == [1025]  # the first KiB and "…": what the audit keeps
    assert got["peak_kib"] < 1_000_000, f"peak RSS {got['peak_kib']} KiB"  # the expansion alone would be 10 GB
    print(f"peak RSS {got['peak_kib'] / 1024:.0f} MiB for {n} rows")


def test_a_repeated_image_above_max_bytes_is_too_large_per_row_without_expanding(tmp_path):
    blob = b"\x89PNG" + bytes(300_000)
    table = pa.table({"key": ["a", "b", "c"], "png": dictionary_column(blob, 3, pa.binary())})
    pq.write_table(table, tmp_path / "s.parquet")
    rows = rows_of(tmp_path, max_bytes=100_000)
    assert [(r["key"], r["quarantine"], r["error"]) for r in rows] == [
        (k, "too_large", "png: 300004 bytes > 100000") for k in "abc"
    ]


def test_a_row_group_declaring_more_than_its_limit_is_one_row_and_the_others_are_read(tmp_path):
    small = {"key": ["a", "b"], "caption": ["red", "blue"], "png": [png(), png((0, 0, 255))]}
    big = {"key": [f"z{i}" for i in range(4)], "caption": ["x" * 900] * 4, "png": [bytes(400_000)] * 4}
    with pq.ParquetWriter(tmp_path / "s.parquet", pa.table(small).schema, use_dictionary=False) as w:
        w.write_table(pa.table(small))
        w.write_table(pa.table(big))
        w.write_table(pa.table(small))
    rows = rows_of(tmp_path)
    assert [r["key"] for r in rows] == ["a", "b", "s.parquet row group 1", "a", "b"]
    refused = rows[2]
    assert refused["quarantine"] == "too_large" and refused["id"] == "s.parquet#00000002"
    assert "rows 2-5, 4 rows" in refused["error"] and "'png'" in refused["error"]
    assert "> decode.max_row_group_bytes=1000000" in refused["error"]
    assert rows[3]["id"] == "s.parquet#00000006" and rows[3]["image"] == png() and rows[3]["quarantine"] is None


def test_captions_at_the_limit_are_read_whole_and_one_byte_over_is_too_large(tmp_path):
    table = pa.table({"key": ["at", "over"], "caption": ["é" * 500, "é" * 500 + "!"], "png": [png(), png()]})
    pq.write_table(table, tmp_path / "s.parquet")
    at, over = rows_of(tmp_path)
    assert at["quarantine"] is None and at["caption"] == "é" * 500
    assert over["quarantine"] == "too_large" and over["caption"] == "é" * 500 + "!…"
    assert over["error"] == "caption is 1001 bytes > decode.max_caption_bytes=1000"


# ------------------------------------------------------------------------------------------------ tars, folders


def test_tar_captions_and_metadata_above_their_limits_are_too_large_and_the_rest_read(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        add(tar, "ok.png", png())
        add(tar, "ok.txt", b"a red square")
        add(tar, "ok.json", json.dumps({"url": "http://x"}).encode())
        add(tar, "longcap.png", png())
        add(tar, "longcap.txt", "ü".encode() * 1500)  # 3000 bytes; the audit keeps the first 1024: 512 characters
        add(tar, "bigmeta.png", png())
        add(tar, "bigmeta.json", b"[" * 1 + b"0," * 5000 + b"0]")
    ok, longcap, bigmeta = rows_of(tmp_path)
    assert ok["quarantine"] is None and ok["caption"] == "a red square" and ok["url"] == "http://x"
    assert longcap["quarantine"] == "too_large" and longcap["caption"] == "ü" * 512 + "…"
    assert longcap["error"] == "longcap.txt is 3000 bytes > decode.max_caption_bytes=1000"
    assert bigmeta["quarantine"] == "too_large" and bigmeta["image"] is None
    assert bigmeta["error"] == "bigmeta.json is 10003 bytes > decode.max_metadata_bytes=2000"


@pytest.mark.parametrize("compress", [gzip.compress, __import__("bz2").compress, __import__("lzma").compress],
                         ids=["gzip", "bzip2", "xz"])  # fmt: skip
def test_a_compressed_tar_is_refused_unread_naming_the_compression(tmp_path, compress):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add(tar, "a.png", png())
    (tmp_path / "s.tar").write_bytes(compress(buf.getvalue()))
    (row,) = rows_of(tmp_path)
    assert row["quarantine"] == "bad_schema" and "compressed tar: not read" in row["error"]


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar to write a sparse member")
def test_a_sparse_tar_member_is_refused_and_the_other_samples_read(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png())
    with open(src / "b.png", "wb") as f:  # 64 MB of holes around a few bytes
        f.seek(64 << 20)
        f.write(b"end")
    (tmp_path / "in").mkdir()
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(tmp_path / "in" / "s.tar"), "-C", str(src),
                    "a.png", "b.png"], check=True)  # fmt: skip
    with tarfile.open(tmp_path / "in" / "s.tar") as tar:
        assert tar.getmember("b.png").issparse()
    rows = {r["key"]: r for r in rows_of(tmp_path / "in", max_bytes=1 << 30)}
    assert rows["a"]["quarantine"] is None and rows["a"]["image"] == png()
    assert rows["b.png"]["quarantine"] == "unsafe_path" and "sparse member" in rows["b.png"]["error"]


def test_a_folder_caption_sidecar_above_the_limit_is_read_only_up_to_it(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "a.txt").write_text("word " * 400)  # 2000 bytes
    (row,) = rows_of(tmp_path)
    assert row["quarantine"] == "too_large" and row["caption"] == ("word " * 400)[:1024] + "…"
    assert row["error"] == "a.txt is 2000 bytes > decode.max_caption_bytes=1000"


# ------------------------------------------------------------------------------------------------ videos


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return encode_mp4(render_clip("square", "blue", "up", "black", np.random.default_rng(1), frames=4, size=16))


def video_rows(root):
    sources, _ = discover_videos(root, chunk=64)
    return {r["key"]: r for s in sources for r in read_video_source(root, s, max_bytes=1 << 26, limits=LIMITS)}


def test_video_sidecars_are_bounded_by_the_text_limits_not_the_media_limit(tmp_path, mp4):
    for key in ("ok", "cap", "meta"):
        (tmp_path / f"{key}.mp4").write_bytes(mp4)
    (tmp_path / "ok.txt").write_text("a blue square")
    (tmp_path / "cap.txt").write_text("x" * 1001)
    (tmp_path / "meta.json").write_text(json.dumps({"pad": "y" * 2000}))
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        add(tar, "tcap.mp4", mp4)
        add(tar, "tcap.txt", b"z" * 5000)
    rows = video_rows(tmp_path)
    assert rows["ok"]["quarantine"] is None and rows["ok"]["caption"] == "a blue square"
    assert rows["cap"]["quarantine"] == "too_large"
    assert rows["cap"]["error"] == "cap.txt is 1001 bytes > decode.max_caption_bytes=1000"
    assert rows["meta"]["quarantine"] == "too_large" and "> decode.max_metadata_bytes=2000" in rows["meta"]["error"]
    assert rows["tcap"]["quarantine"] == "too_large"
    assert rows["tcap"]["error"] == "t.tar: tcap.txt is 5000 bytes > decode.max_caption_bytes=1000"
