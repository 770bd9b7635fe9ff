"""The audit contact sheet (``alcm audit dataset --sheet``) on a hand-built dataset version in an embedded registry:
its grid and size, which pixels each tile shows (kept rows from the kept data, rejected rows from the raw input,
quarantined rows never decoded), the bar chart's counts, its HTML page; and video clips' first frames."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from contracts.manifest import write_manifest
from pipelines.audit_samples import THUMBNAIL, video_thumbnails
from pipelines.contact_sheet import GAP, HEAD_W, ROW_H, reason_chart, sheet_size, sheet_tiles, write_contact_sheet
from registry.audit import dataset_audit, sheet_audit
from registry.store import Registry

RED, GREEN, BLUE, PURPLE, YELLOW = (220, 30, 30), (30, 200, 40), (30, 40, 220), (150, 40, 160), (230, 220, 20)
#: key, decision, reasons, file in the raw input (None: gone), scores (clip, aesthetic, watermark)
ROWS = [
    ("a", "kept", [], "a.png", (0.31, 5.2, 0.01)),
    ("e", "kept", [], "e.png", (0.29, 5.0, 0.02)),
    ('c"<b>', "rejected", ["low_clip_score", "watermark"], "c.png", (0.05, 4.1, 0.93)),
    ("b", "rejected", ["watermark"], "b.png", (0.30, 4.8, 0.97)),
    ("g", "rejected", ["low_clip_score"], None, (0.02, 3.3, 0.10)),
    ("d", "quarantined", ["too_large"], "d.png", (None, None, None)),
    ("f", "quarantined", ["undecodable"], "f.png", (None, None, None)),
]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _dataset(root, name: str, rows) -> tuple:
    """A curated version: raw/ (an image folder), out/audit/ and out/kept/ (kept rows' bytes: purple for ``a``,
    unlike its raw red, to tell where a tile was read from), and its manifest."""
    raw, out = root / "raw", root / "out"
    raw.mkdir(parents=True)
    colours = {"a.png": RED, "b.png": GREEN, "c.png": BLUE, "e.png": YELLOW}
    for _, _, _, file, _ in rows:
        if file in colours:
            (raw / file).write_bytes(_png(Image.new("RGB", (80, 60), colours[file])))
        elif file == "d.png":
            (raw / file).write_bytes(_png(Image.new("1", (4000, 4000))))  # 16 Mpx in a few kB
        elif file == "f.png":
            (raw / file).write_bytes(b"not an image")
    (out / "audit").mkdir(parents=True)
    (out / "kept").mkdir()
    ids = [file or f"{key}.png" for key, _, _, file, _ in rows]
    pq.write_table(pa.table({
        "id": ids, "key": [r[0] for r in rows], "source": ["."] * len(rows), "caption": ["a caption"] * len(rows),
        "decision": [r[1] for r in rows], "reasons": pa.array([r[2] for r in rows], pa.list_(pa.string())),
        "error": ["16000000 pixels > max_pixels" if r[2] == ["too_large"] else None for r in rows],
        **{c: pa.array([r[4][i] for r in rows], pa.float32())
           for i, c in enumerate(("clip_score", "aesthetic_score", "watermark_prob"))},
    }), out / "audit" / "part-0.parquet")  # fmt: skip
    kept = [(i, r) for i, r in zip(ids, rows, strict=True) if r[1] == "kept"]
    pq.write_table(pa.table({"id": [i for i, _ in kept], "key": [r[0] for _, r in kept],
                             "image": [_png(Image.new("RGB", (80, 60), PURPLE if r[0] == "a" else YELLOW))
                                       for _, r in kept]}), out / "kept" / "part-0.parquet")  # fmt: skip
    decisions = {d: sum(r[1] == d for r in rows) for d in ("kept", "rejected", "quarantined")}
    digest = "sha256:" + name.encode().hex().ljust(64, "0")[:64]
    write_manifest(out, {"name": name, "digest": digest, "kind": "image-text-dataset",
                         "counts": {"input": len(rows), "by_decision": decisions}, "input_root": str(raw),
                         "outputs": {"kept": "kept/", "audit": "audit/"}})  # fmt: skip
    return raw, out


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    root = tmp_path_factory.mktemp("registry")
    return Registry(f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri())


@pytest.fixture(scope="module")
def version(registry, tmp_path_factory) -> str:
    _, out = _dataset(tmp_path_factory.mktemp("sheet"), "t-sheet", ROWS)
    return registry.register(out).ref


def _centre(img: Image.Image, box) -> tuple:
    return img.getpixel(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2))


def test_the_sheet_has_a_row_per_reason_and_the_first_examples_by_key(registry, version, tmp_path, monkeypatch):
    decoded_sizes = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded_sizes.append(self.size) or real_load(self))

    layout = write_contact_sheet(sheet_audit(registry, version, per_reason=4), tmp_path / "sheet.png")

    # kept first, then the reasons by count (ties by name); 5 rows of up to 4 tiles
    assert [(r.name, r.count, r.decision) for r in layout.rows] == [
        ("kept", 2, "kept"), ("low_clip_score", 2, "rejected"), ("watermark", 2, "rejected"),
        ("too_large", 1, "quarantined"), ("undecodable", 1, "quarantined")]  # fmt: skip
    assert [[t.key for t in r.tiles] for r in layout.rows] == [["a", "e"], ['c"<b>', "g"], ["b", 'c"<b>'], ["d"],
                                                               ["f"]]  # fmt: skip
    assert layout.size == sheet_size(5, 4) == (HEAD_W + 4 * (THUMBNAIL + GAP) + GAP, 36 + 70 + 5 * 22 + GAP + 5 * ROW_H)
    sheet = Image.open(tmp_path / "sheet.png").convert("RGB")
    assert sheet.size == layout.size
    for row in layout.rows:  # the grid: row i's tiles side by side, one row height apart
        assert [t.box[0] for t in row.tiles] == [HEAD_W + i * (THUMBNAIL + GAP) for i in range(len(row.tiles))]
        assert all(t.box[1] == row.top + GAP for t in row.tiles)
    assert [b.top - a.top for a, b in zip(layout.rows, layout.rows[1:], strict=False)] == [ROW_H] * 4
    tiles = {t.key: t for r in layout.rows for t in r.tiles}
    assert _centre(sheet, tiles["a"].box) == PURPLE  # the kept data's bytes, not the raw input's red
    assert _centre(sheet, tiles["b"].box) == GREEN and _centre(sheet, tiles['c"<b>'].box) == BLUE  # raw input
    assert tiles["g"].placeholder.startswith("row g.png not found")
    # Quarantined rows: placeholders naming the reason; the bomb never decoded (its file is not even read).
    assert tiles["d"].placeholder == "too_large: quarantined, not decoded"
    assert tiles["f"].placeholder == "undecodable: quarantined, not decoded"
    assert (4000, 4000) not in decoded_sizes
    assert _centre(sheet, tiles["d"].box) != (255, 255, 255)


def test_the_bar_chart_counts_are_the_audit_counts(registry, version, tmp_path):
    sheet = sheet_audit(registry, version, per_reason=1)
    layout = write_contact_sheet(sheet, tmp_path / "sheet.png")
    audit = dataset_audit(registry, version)
    assert layout.counts == {"kept": audit["by_decision"]["kept"], **audit["by_reason"]}
    fig = reason_chart(layout.counts, *layout.size)
    (ax,) = fig.axes
    assert [int(p.get_width()) for p in ax.patches] == list(layout.counts.values())
    assert [t.get_text() for t in ax.get_yticklabels()] == list(layout.counts)


def test_the_page_next_to_the_sheet_shows_it_and_the_counts_escaped(registry, version, tmp_path):
    write_contact_sheet(sheet_audit(registry, version, per_reason=2), tmp_path / "my sheet.png")
    html = (tmp_path / "my sheet.html").read_text()
    assert '<img src="my%20sheet.png"' in html and "<title>Audit contact sheet: t-sheet@1</title>" in html
    num = '<th class="num">'
    assert f"<th>group</th><th>decision</th>{num}rows</th>{num}shown</th><th>meaning</th>" in html
    assert '<td>watermark</td><td>rejected</td><td class="num">2</td><td class="num">2</td>' in html
    assert "c&quot;&lt;b&gt;" in html and 'c"<b>' not in html
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html)


def test_a_version_that_kept_nothing_shows_an_empty_kept_row(registry, tmp_path):
    _, out = _dataset(tmp_path, "t-sheet-empty", [("b", "rejected", ["watermark"], "b.png", (0.3, 4.0, 0.9))])
    ref = registry.register(out).ref
    layout = write_contact_sheet(sheet_audit(registry, ref), tmp_path / "empty.png")
    assert [(r.name, r.count, len(r.tiles)) for r in layout.rows] == [("kept", 0, 0), ("watermark", 1, 1)]
    assert layout.size == sheet_size(2, 6) == Image.open(tmp_path / "empty.png").size


def test_the_cli_writes_the_sheet_and_names_an_unknown_ref(registry, version, tmp_path, monkeypatch):
    import flows.cli_registry
    from flows.cli import app

    monkeypatch.setattr(flows.cli_registry, "_registry", lambda: registry)
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "dataset", version, "--sheet", str(tmp_path / "s.png"), "--per-reason", "1"])
    assert ok.exit_code == 0, ok.output
    assert "contact sheet:" in ok.output and "5 rows, 5 examples, 2 shown as placeholders" in ok.output
    assert Image.open(tmp_path / "s.png").size == sheet_size(5, 1) and (tmp_path / "s.html").is_file()
    missing = runner.invoke(app, ["audit", "dataset", "t-sheet@9", "--sheet", str(tmp_path / "m.png")])
    assert missing.exit_code == 2 and "t-sheet@9" in missing.output and not (tmp_path / "m.png").exists()
    jpeg = runner.invoke(app, ["audit", "dataset", version, "--sheet", str(tmp_path / "s.jpg")])
    assert jpeg.exit_code == 2 and "is a .png file" in jpeg.output
    as_json = runner.invoke(app, ["audit", "dataset", version, "--sheet", str(tmp_path / "j.png"), "--per-reason", "1",
                                  "--json"])  # fmt: skip
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.stdout)  # one document, the sheet in it
    assert doc["sheet"] == {"png": str(tmp_path / "j.png"), "html": str(tmp_path / "j.html"), "rows": 5,
                            "examples": 5, "placeholders": 2}  # fmt: skip


def test_a_video_clip_shows_its_first_sampled_frame_read_back_from_the_raw_video(tmp_path):
    from toyworld.videos import encode_mp4

    raw = tmp_path / "raw"
    raw.mkdir()
    frames = np.zeros((8, 64, 64, 3), np.uint8)
    for i in range(8):
        frames[i] = (30 * i, 255 - 30 * i, 128)
    (raw / "clip.mp4").write_bytes(encode_mp4(frames))
    row = {"id": "clip.mp4#000000~1", "parent_id": "clip.mp4#000000", "key": "clip~1", "source": ".",
           "decision": "rejected", "reasons": ["too_static"], "segment_start": 2, "frame_indices": [4, 5]}
    gone = dict(row, id="gone.mp4#000000", parent_id="gone.mp4#000000", key="gone")

    thumbs = video_thumbnails(raw, [row, gone])

    pixel = np.asarray(thumbs[row["id"]])[32, 32].astype(int)
    assert np.abs(pixel - frames[4, 32, 32]).max() < 12  # frame 4, not the segment's first or the input's first
    assert thumbs["gone.mp4#000000"].startswith("input row gone.mp4#000000 not found")
    kept = dict(row, id="k", decision="kept")
    sheet = {"groups": [{"name": "kept", "examples": [kept]}, {"name": "too_static", "examples": [row]}],
             "payloads": {"k": _png(Image.new("RGB", (64, 64), PURPLE))}, "input_root": str(raw), "kind": "video"}
    tiles = sheet_tiles(sheet)
    assert tiles["k"].getpixel((10, 10)) == PURPLE and not isinstance(tiles[row["id"]], str)


def test_the_eval_report_page_embeds_every_table_plot_and_the_samples_and_escapes_text(tmp_path):
    from contracts.report import metric_title, plot_files, report_html

    report = json.loads(_REPORT)
    report["checkpoint"]["name"] = "t<script>alert(1)</script>"
    for rel in plot_files(report):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(_png(Image.new("RGB", (50, 40), RED)))
    frames = [Image.new("RGB", (40, 20), c) for c in (RED, GREEN)]
    frames[0].save(tmp_path / "samples.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)

    html = report_html(report, tmp_path)

    for metric in report["metrics"]:
        header = '<th>method</th><th class="num">1</th><th class="num">4</th>'
        assert f"{metric_title(metric)}</h3>\n<table><thead><tr>{header}</tr>" in html
    assert '<td>lcm-lora</td><td class="num">2.000 [1.000, 3.000]</td>' in html
    assert '<td>floor: reference A vs B</td><td class="num">0.500</td>' in html
    sources = re.findall(r"""(?:src|href)=["']([^"']*)""", html)
    assert len(sources) == 3 and all(s.startswith(("data:image/png;base64,", "data:image/gif;base64,"))
                                     for s in sources)  # fmt: skip
    assert "http" not in " ".join(re.findall(r"""(?:src|href)=["'][^"']{0,40}""", html))
    assert "<script>" not in html and "t&lt;script&gt;alert(1)&lt;/script&gt;" in html
    (tmp_path / "samples.gif").unlink()
    assert "samples.gif: missing from" in report_html(report, tmp_path)


_REPORT = json.dumps({
    "checkpoint": {"name": "t", "stage": "image_consistency_distillation", "path": "/x", "digest": "sha256:0"},
    "setup": {"prompts": "toy", "num_prompts": 2, "videos_per_prompt": 1, "frames": None, "size": 64, "fd": "fid",
              "extractor": "toy", "reference": "teacher", "guidance_scale": 3.5, "reference_steps": 4},
    "metrics": ["fid", "clipsim", "unet_evals"], "speedup": {"4": 2.0}, "samples": "samples.gif",
    "samples_layout": "rows: prompts 'a <red> circle'; columns: lcm-lora@1",
    "results": {"lcm-lora": {"1": {"fid": 2.0, "clipsim": 20.0, "unet_evals": 1, "ci95": {"fid": [1.0, 3.0]}},
                             "4": {"fid": 1.0, "clipsim": 22.0, "unet_evals": 4}},
                "ddim": {"4": {"fid": 0.8, "clipsim": 23.0, "unet_evals": 8}}},
    "floor": {"fid": 0.5, "n": 2},
})  # fmt: skip
