"""File, member and folder names that are not valid UTF-8: every input accounted, keys escaped, Arrow builds."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipelines.safe_read import escape_name
from pipelines.sources import discover, read_source
from pipelines.video_sources import discover_videos, read_video_source
from toyworld.videos import encode_mp4, render_clip


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 128, 255)).save(buf, format="PNG")
    return buf.getvalue()


def write(root, raw_name: bytes, data: bytes):
    with open(os.path.join(os.fsencode(root), raw_name), "wb") as f:
        f.write(data)


CASES = [("plain", "plain"), ("café ✓", "café ✓"), ("caf\udce9", "caf\\xe9"), ("a\udcff\udcfeb", "a\\xff\\xfeb"),
         ("lone\ud800", "lone\\ud800")]


@pytest.mark.parametrize(("text", "escaped"), CASES)
def test_escaping_keeps_valid_text_and_makes_undecodable_bytes_visible(text, escaped):
    assert escape_name(text) == escaped and escape_name(escaped) == escaped
    escaped.encode("utf-8")


def test_tar_members_and_folder_files_with_latin1_names_are_read_with_escaped_keys(tmp_path):
    tars, folder = tmp_path / "tars", tmp_path / "folder"
    tars.mkdir(), folder.mkdir()
    with tarfile.open(tars / "s.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in [("caf\udce9.png", png()), ("caf\udce9.txt", b"a blue square"), ("ok.png", png())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    write(folder, b"bad\xff.png", png())
    write(folder, b"bad\xff.txt", b"a blue square")
    write(folder, b"good.png", png())
    for root, keys in [(tars, ["caf\\xe9", "ok"]), (folder, ["bad\\xff", "good"])]:
        sources, _ = discover(root)
        rows = [r for s in sources for r in read_source(root, s, max_bytes=1 << 20)]
        assert [r["key"] for r in rows] == keys and all(r["quarantine"] is None for r in rows)
        assert rows[0]["caption"] == "a blue square" and rows[0]["image"] == png()
        assert pa.Table.from_pylist(rows).num_rows == 2  # the build that failed on a surrogate


def test_a_stray_file_with_a_latin1_name_is_listed_as_ignored_escaped(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        info = tarfile.TarInfo("a.png")
        info.size = len(png())
        tar.addfile(info, io.BytesIO(png()))
    write(tmp_path, b"stray-\xe9.png", png())
    _, ignored = discover(tmp_path)
    assert ignored == ["stray-\\xe9.png"]


def test_video_files_and_sequence_folders_with_latin1_names_are_read_with_escaped_keys(tmp_path):
    mp4 = encode_mp4(render_clip("square", "blue", "up", "black", np.random.default_rng(1), frames=4, size=16))
    write(tmp_path, b"clip-\xe9.mp4", mp4)
    seq = os.path.join(os.fsencode(tmp_path), b"dancer-\xfe", b"images")
    os.makedirs(seq)
    for i in range(4):
        write(os.fsdecode(seq), f"{i:04d}.png".encode(), png())
    sources, _ = discover_videos(tmp_path, chunk=8)
    rows = {r["key"]: r for s in sources for r in read_video_source(tmp_path, s, max_bytes=1 << 26)}
    assert set(rows) == {"clip-\\xe9", "dancer-\\xfe"}
    assert all(r["quarantine"] is None for r in rows.values())
    assert rows["clip-\\xe9"]["video"] == mp4 and len(rows["dancer-\\xfe"]["frame_files"]) == 4
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k not in ("frame_files",)} for r in rows.values()])
    assert table.num_rows == 2
