import io
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.sources import discover, read_source


def png(color=(255, 0, 0)):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def rows_of(root, max_bytes=10_000_000):
    sources, ignored = discover(root)
    return [r for s in sources for r in read_source(root, s, max_bytes=max_bytes)], ignored


def add(tar, name, data, **kw):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data))


def test_img2dataset_parquet_rows_are_read_with_caption_and_bytes(tmp_path):
    pq.write_table(
        pa.table(
            {
                "key": ["a", "b"],
                "caption": ["x y z", None],
                "jpg": [png(), None],
                "png": [None, png()],
                "url": ["u", None],
            }
        ),
        tmp_path / "part-0.parquet",
    )
    rows, _ = rows_of(tmp_path)
    assert [(r["id"], r["key"], r["caption"], r["quarantine"]) for r in rows] == [
        ("part-0.parquet#00000000", "a", "x y z", None),
        ("part-0.parquet#00000001", "b", None, None),
    ]
    assert all(r["image"] for r in rows)


def test_parquet_without_image_column_quarantines_every_row_as_bad_schema(tmp_path):
    pq.write_table(pa.table({"key": ["a", "b"], "caption": ["x", "y"]}), tmp_path / "p.parquet")
    rows, _ = rows_of(tmp_path)
    assert [r["quarantine"] for r in rows] == ["bad_schema", "bad_schema"]
    assert "no image column" in rows[0]["error"]


def test_mistyped_columns_and_non_utf8_captions_are_quarantined(tmp_path):
    pq.write_table(
        pa.table({"key": ["a", "b"], "caption": [b"ok words here", b"\xff\xfe"], "jpg": [png(), png()]}),
        tmp_path / "p.parquet",
    )
    pq.write_table(pa.table({"key": [1], "caption": ["x"], "jpg": ["not bytes"]}), tmp_path / "q.parquet")
    rows, _ = rows_of(tmp_path)
    assert [r["quarantine"] for r in rows] == [None, "bad_encoding", "bad_schema"]


def test_unreadable_parquet_is_one_quarantined_row(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1garbage")
    rows, _ = rows_of(tmp_path)
    assert len(rows) == 1 and rows[0]["quarantine"] == "bad_schema" and rows[0]["id"] == "broken.parquet#shard"


def test_webdataset_tar_groups_members_and_quarantines_unsafe_ones(tmp_path):
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:
        add(tar, "k1.jpg", png())
        add(tar, "k1.txt", b"a red circle")
        add(tar, "k1.json", b'{"url": "toy://k1"}')
        add(tar, "../evil.jpg", png())
        add(tar, "/abs.jpg", png())
        add(tar, "link.jpg", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add(tar, "lonely.txt", b"no image here")
        add(tar, "k2.png", png())
    rows, _ = rows_of(tmp_path)
    by_key = {r["key"]: r for r in rows}
    assert by_key["k1"]["caption"] == "a red circle" and by_key["k1"]["url"] == "toy://k1"
    assert by_key["k1"]["quarantine"] is None
    assert by_key["../evil.jpg"]["quarantine"] == "unsafe_path"
    assert by_key["/abs.jpg"]["quarantine"] == "unsafe_path"
    assert by_key["link.jpg"]["quarantine"] == "unsafe_path"
    assert by_key["lonely"]["quarantine"] == "bad_schema"
    assert by_key["k2"]["caption"] is None and by_key["k2"]["quarantine"] is None
    assert len(rows) == 6
    assert not (tmp_path.parent / "evil.jpg").exists()


def test_folder_with_sidecars_and_a_symlink_leaving_the_root(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.png").write_bytes(png())
    (root / "a.txt").write_text("a red square")
    (root / "b.png").write_bytes(png())
    (root / "notes.md").write_text("hello")
    outside = tmp_path / "secret.png"
    outside.write_bytes(png())
    os.symlink(outside, root / "c.png")
    rows, ignored = rows_of(root)
    by_key = {r["key"]: r for r in rows}
    assert by_key["a"]["caption"] == "a red square"
    assert by_key["b"]["caption"] is None
    assert by_key["c"]["quarantine"] == "unsafe_path"
    assert ignored == ["notes.md"]


def test_oversized_members_are_not_read(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        add(tar, "big.png", png())
    rows, _ = rows_of(tmp_path, max_bytes=10)
    assert rows[0]["quarantine"] == "too_large" and rows[0]["image"] is None


def test_parquet_image_paths_are_read_under_the_root_and_escapes_are_quarantined(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png())
    (tmp_path.parent / "outside.png").write_bytes(png())
    pq.write_table(
        pa.table(
            {
                "key": ["a", "b", "c", "d"],
                "caption": ["x y z"] * 4,
                "image_path": ["imgs/a.png", "../outside.png", "/etc/passwd", "imgs/missing.png"],
            }
        ),
        tmp_path / "refs.parquet",
    )
    rows, ignored = rows_of(tmp_path)
    assert [r["quarantine"] for r in rows] == [None, "unsafe_path", "unsafe_path", "bad_schema"]
    assert ignored == ["imgs/a.png"]
    assert rows[0]["image"] == png()
    assert rows[1]["image"] is None and rows[2]["image"] is None


def test_fifos_named_like_inputs_are_quarantined_as_special_files_without_blocking(tmp_path, within):
    folder, shards, refs = tmp_path / "folder", tmp_path / "shards", tmp_path / "refs"
    for d in (folder, shards, refs, refs / "imgs"):
        d.mkdir()
    (folder / "a.png").write_bytes(png())
    os.mkfifo(folder / "b.png")  # an image that is a FIFO: reading it would wait for a writer forever
    (folder / "c.png").write_bytes(png())
    os.mkfifo(folder / "c.txt")  # a caption sidecar that is a FIFO
    rows, _ = within(60, lambda: rows_of(folder))
    assert {r["key"]: r["quarantine"] for r in rows} == {"a": None, "b": "special_file", "c": "special_file"}
    assert "b.png is a FIFO" in next(r for r in rows if r["key"] == "b")["error"]
    assert next(r for r in rows if r["key"] == "a")["image"] == png()

    os.mkfifo(shards / "s.tar")
    os.mkfifo(shards / "p.parquet")
    rows, _ = within(60, lambda: rows_of(shards))
    assert sorted((r["id"], r["quarantine"]) for r in rows) == [("p.parquet#shard", "special_file"),
                                                               ("s.tar#shard", "special_file")]  # fmt: skip

    (refs / "imgs" / "a.png").write_bytes(png())
    os.mkfifo(refs / "imgs" / "f.png")
    pq.write_table(pa.table({"key": ["a", "f"], "image_path": ["imgs/a.png", "imgs/f.png"]}), refs / "r.parquet")
    rows, _ = within(60, lambda: rows_of(refs))
    assert [(r["key"], r["quarantine"]) for r in rows] == [("a", None), ("f", "special_file")]
    assert "imgs/f.png" in rows[1]["error"] and "FIFO" in rows[1]["error"]
