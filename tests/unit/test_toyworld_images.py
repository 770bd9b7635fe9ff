"""The labelled raw image dataset: labels match records, every defect is what its label says, layouts agree."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFile

from toyworld import degrade
from toyworld.images import (
    CAPTION_TOO_LONG_MIN,
    GREY_MODES,
    LABEL_COLUMNS,
    LABEL_EXPECTATIONS,
    LABELS,
    generate_image_records,
    solid_png,
    write_image_dataset,
)
from toyworld.scenes import caption_for, parse_caption, scene_from_dict

SEED = 11
N = 150  # 60 degraded rows: every label appears at least 3 times


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return generate_image_records(SEED, N)


def by_label(records: list[dict], label: str) -> list[dict]:
    rows = [r for r in records if r["label"] == label]
    assert rows, f"no {label} rows"
    return rows


def open_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_every_label_appears_and_about_the_degraded_fraction_is_degraded(records):
    counts = Counter(r["label"] for r in records)
    assert set(counts) == set(LABELS)
    assert counts["clean"] == N - round(0.4 * N)
    assert records[0]["label"] == "clean"
    assert len({r["key"] for r in records}) == N
    assert generate_image_records(SEED, 30, degraded_fraction=0.0) == generate_image_records(
        SEED, 30, degraded_fraction=0
    )
    assert {r["label"] for r in generate_image_records(SEED, 30, degraded_fraction=0.0)} == {"clean"}


def test_expected_decisions_follow_the_label_table(records):
    for r in records:
        decision, reason = LABEL_EXPECTATIONS[r["label"]]
        if r["label"] == "odd_mode" and r["mode"] in GREY_MODES:
            decision = "any"
        assert (r["expected_decision"], r["expected_reason"]) == (decision, reason), r["key"]
        assert r["url"] == f"toy://images/{r['key']}"
        assert r["format"] in ("jpg", "png")


def test_decodable_rows_have_the_stated_size_and_mode(records):
    for r in records:
        if r["label"] == "corrupt":
            assert r["mode"] is None
            continue
        with Image.open(io.BytesIO(r["image"])) as img:  # header only: oversized rows stay cheap
            assert img.size == (r["width"], r["height"]), r["key"]
            assert img.mode == r["mode"], r["key"]
            assert img.format == {"jpg": "JPEG", "png": "PNG"}[r["format"]]


def test_odd_modes_have_the_stated_pil_mode(records):
    modes = set()
    for r in by_label(records, "odd_mode"):
        img = open_image(r["image"])
        assert img.mode == r["mode"] and r["mode"] in ("RGBA", "CMYK", "L", "I;16")
        modes.add(r["mode"])
        assert r["expected_decision"] == ("any" if r["mode"] in GREY_MODES else "kept")
    assert modes == {"RGBA", "CMYK", "L", "I;16"}


def test_captions_parse_back_to_the_scene_on_clean_and_image_defect_rows(records):
    for r in records:
        if r["label"] in ("clean", "watermark", "blur", "noise", "low_resolution", "bad_aspect", "odd_mode"):
            objects, background = parse_caption(r["caption"])
            scene = scene_from_dict(json.loads(r["scene"]))
            assert (objects, background) == (scene.objects, scene.background)
            assert r["caption"] == caption_for(scene)


def test_caption_defects_break_only_their_own_rule(records):
    for r in by_label(records, "caption_mismatch"):
        true_caption = caption_for(scene_from_dict(json.loads(r["scene"])))
        assert r["caption"] != true_caption and parse_caption(r["caption"])
    for r in by_label(records, "caption_empty"):
        assert r["caption"].strip() == ""
    for r in by_label(records, "caption_too_short"):
        assert len(r["caption"].split()) == 1
    for r in by_label(records, "caption_too_long"):
        assert len(r["caption"]) >= CAPTION_TOO_LONG_MIN
        assert r["caption"].isprintable()
    for r in by_label(records, "caption_control_chars"):
        assert any(c in r["caption"] for c in "\x00\x07\x1b") and len(r["caption"]) <= 300
    ordinary = [r for r in records if not r["label"].startswith("caption_")]
    for r in ordinary:
        assert r["caption"].isprintable() and 3 <= len(r["caption"].split()) and len(r["caption"]) <= 300


def test_image_defects_break_only_their_own_rule(records):
    for r in by_label(records, "low_resolution"):
        assert 16 <= min(r["width"], r["height"]) <= 28 and r["width"] == r["height"]
    for r in by_label(records, "bad_aspect"):
        short, long = sorted((r["width"], r["height"]))
        assert short == 64 and long / short >= 4
    for r in records:
        if r["label"] not in ("low_resolution", "bad_aspect", "oversized", "corrupt"):
            assert (r["width"], r["height"]) == (64, 64)


def test_duplicates_point_to_earlier_clean_keys(records):
    keys = {r["key"]: i for i, r in enumerate(records)}
    for r in records:
        if r["label"] in ("exact_duplicate", "near_duplicate"):
            original = records[keys[r["duplicate_of"]]]
            assert original["label"] == "clean" and original["key"] < r["key"]
            assert r["caption"] == original["caption"] and r["scene"] == original["scene"]
            if r["label"] == "exact_duplicate":
                assert r["image"] == original["image"]
            else:
                assert r["image"] != original["image"]
                a, b = open_image(original["image"]).convert("RGB"), open_image(r["image"]).convert("RGB")
                assert degrade.is_near(a, b)
        else:
            assert r["duplicate_of"] is None


def test_corrupt_rows_fail_to_decode_with_pil(records, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    corrupt = by_label(records, "corrupt")
    for r in corrupt:
        with pytest.raises((OSError, SyntaxError, ValueError)):
            open_image(r["image"])
    truncated = [r for r in corrupt if r["image"][:2] == b"\xff\xd8"]
    assert 0 < len(truncated) < len(corrupt)  # both kinds: cut JPEGs and random bytes


def test_oversized_rows_are_valid_pngs_over_20_megapixels_and_small_files(records):
    for r in by_label(records, "oversized"):
        assert r["width"] * r["height"] > 20_000_000
        assert len(r["image"]) < 1_000_000
        assert r["format"] == "png"


def test_solid_png_decodes_to_one_colour_exactly():
    for width, height in ((1, 1), (37, 300), (700, 513)):  # 512 + 1 rows: two whole blocks and a remainder
        img = open_image(solid_png(width, height, (12, 200, 99)))
        assert img.size == (width, height) and img.mode == "RGB"
        assert img.getextrema() == ((12, 12), (200, 200), (99, 99))


def test_same_seed_gives_identical_records_and_other_seeds_differ(records):
    again = generate_image_records(SEED, N)
    assert [r["image"] for r in again] == [r["image"] for r in records]
    assert [r["caption"] for r in again] == [r["caption"] for r in records]
    other = generate_image_records(SEED + 1, N)
    assert [r["image"] for r in other] != [r["image"] for r in records]


def test_same_seed_gives_identical_bytes(records, tmp_path):
    write_image_dataset(tmp_path / "a", records, rows_per_shard=60)
    write_image_dataset(tmp_path / "b", generate_image_records(SEED, N), rows_per_shard=60)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert [f.as_posix() for f in files] == [
        "labels.parquet",
        "parquet/part-00000.parquet",
        "parquet/part-00001.parquet",
        "parquet/part-00002.parquet",
        "wds/shard-00000.tar",
        "wds/shard-00001.tar",
        "wds/shard-00002.tar",
    ]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_parquet_and_webdataset_shards_hold_the_same_rows(records, tmp_path):
    summary = write_image_dataset(tmp_path, records, rows_per_shard=60)
    assert summary["rows"] == N and summary["label_counts"] == dict(
        sorted(Counter(r["label"] for r in records).items())
    )
    by_key = {r["key"]: r for r in records}
    seen = []
    for part, shard in zip(summary["parquet"], summary["wds"], strict=True):
        table = pq.read_table(tmp_path / part)
        assert table.column_names == ["key", "caption", "jpg", "png", "url", "width", "height"]
        with tarfile.open(tmp_path / shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for row in table.to_pylist():
            r = by_key[row["key"]]
            seen.append(row["key"])
            assert row["caption"] == r["caption"] and row["url"] == r["url"]
            assert (row["width"], row["height"]) == (r["width"], r["height"])
            assert row[r["format"]] == r["image"]
            assert row["png" if r["format"] == "jpg" else "jpg"] is None
            assert members[f"{r['key']}.{r['format']}"] == r["image"]
            assert members[f"{r['key']}.txt"].decode("utf-8") == r["caption"]
            meta = json.loads(members[f"{r['key']}.json"])
            assert meta == {"key": r["key"], "url": r["url"], "width": r["width"], "height": r["height"]}
        assert len(members) == 3 * table.num_rows
    assert seen == [r["key"] for r in records]


def test_labels_parquet_matches_records(records, tmp_path):
    write_image_dataset(tmp_path, records)
    labels = pq.read_table(tmp_path / "labels.parquet")
    assert labels.column_names == list(LABEL_COLUMNS)
    assert labels.to_pylist() == [{name: r[name] for name in LABEL_COLUMNS} for r in records]


def test_bad_arguments_raise_before_any_work():
    with pytest.raises(ValueError, match="degraded_fraction"):
        generate_image_records(0, 10, degraded_fraction=1.5)
    with pytest.raises(ValueError, match="n=-1"):
        generate_image_records(0, -1)
    assert generate_image_records(0, 0) == []


def test_near_duplicate_and_clean_hashes_separate_in_a_small_world(records):
    """No two distinct clean rows are near in pHash, so a dedup filter keeps every clean row."""
    clean = [open_image(r["image"]).convert("RGB") for r in by_label(records, "clean")]
    hashes = np.array([degrade.phash(img) for img in clean], dtype=np.uint64)
    xor = hashes[:, None] ^ hashes[None, :]
    bits = np.unpackbits(xor.view(np.uint8), axis=-1).reshape(len(clean), len(clean), -1).sum(-1)
    np.fill_diagonal(bits, 64)
    assert bits.min() > 6
