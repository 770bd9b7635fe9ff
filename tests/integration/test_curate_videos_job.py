"""Video curation of the toy world's labelled clips on Ray: decisions against ground truth, splits, accounting."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from models.video_io import decode_png
from pipelines.config import load_config


@pytest.fixture(scope="module")
def audit_by_kind(curated_videos, toy_video_world):
    labels = {r["key"]: r for r in pq.read_table(toy_video_world / "videos" / "labels.parquet").to_pylist()}
    rows = pq.read_table(curated_videos.output / "audit").to_pylist()
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        by_kind.setdefault(labels[r["key"].split("~")[0]]["kind"], []).append(r)
    return labels, by_kind


def test_every_input_is_accounted_for_and_scene_cuts_add_one_clip_each(curated_videos, audit_by_kind):
    labels, by_kind = audit_by_kind
    m = curated_videos.manifest
    cuts = sum(1 for label in labels.values() if label["kind"] == "scene_cut")
    assert m["counts"]["input"] == len(labels)
    assert m["counts"]["clips"] == len(labels) + cuts == sum(m["counts"]["by_decision"].values())
    kept = pq.read_table(curated_videos.output / "kept", columns=["key"]).column("key").to_pylist()
    assert len(kept) == m["counts"]["by_decision"]["kept"] == len(set(kept))


def test_degraded_clips_are_refused_with_their_ground_truth_reason(audit_by_kind):
    _, by_kind = audit_by_kind
    expected = {"static": "too_static", "jumpy": "too_jumpy", "watermark": "watermark"}
    for kind, reason in expected.items():
        for r in by_kind.get(kind, []):
            assert r["decision"] == "rejected" and reason in r["reasons"], (kind, r["key"], r["reasons"])
    for r in by_kind.get("truncated", []):
        assert (r["decision"], r["reasons"]) == ("quarantined", ["undecodable"]) and r["error"]
    assert {"static", "jumpy", "watermark", "truncated"} <= set(by_kind), "the fixture world lacks a kind"


def test_clean_clips_are_kept(audit_by_kind):
    _, by_kind = audit_by_kind
    clean = by_kind["clean"]
    assert sum(r["decision"] == "kept" for r in clean) / len(clean) >= 0.9


def test_clips_spanning_a_scene_cut_are_split_into_two_cut_free_clips(audit_by_kind):
    labels, by_kind = audit_by_kind
    parts = by_kind["scene_cut"]
    assert parts, "the fixture world has no scene cut"
    for r in parts:
        parent = r["key"].split("~")[0]
        assert r["key"] in (f"{parent}~0", f"{parent}~1") and r["parent_id"] != r["id"]
        cut = labels[parent]["cut_frame"]
        assert (r["segment_start"], r["segment_end"]) == ((0, cut) if r["key"].endswith("~0") else (cut, 16))
        assert r["scene_cuts"] == 0 and "scene_cut" not in r["reasons"]


def test_kept_clips_hold_the_sampled_frames_and_the_audit_none(curated_videos):
    kept = pq.read_table(curated_videos.output / "kept").to_pylist()
    for r in kept[:5]:
        assert len(r["frames"]) == len(r["frame_indices"]) == 8
        assert decode_png(r["frames"][0]).shape == (64, 64, 3)
        assert r["watermark_prob"] is not None and r["clip_score"] is not None
    audit = pq.read_table(curated_videos.output / "audit")
    assert "frames" not in audit.column_names
    assert set(curated_videos.manifest["filters"]) >= {"too_static", "too_jumpy", "scene_cut", "watermark"}


def test_reject_policy_refuses_clips_spanning_a_cut(toy_video_world, ray_local, tmp_path):
    from pipelines.runtime import run_job

    labels = pq.read_table(toy_video_world / "videos" / "labels.parquet").to_pylist()
    src = tmp_path / "in"
    src.mkdir()
    picked = [r["key"] for r in labels if r["kind"] == "scene_cut"][:1] + [
        r["key"] for r in labels if r["kind"] == "clean"
    ][:1]
    for key in picked:
        for ext in (".mp4", ".txt"):
            shutil.copy(toy_video_world / "videos" / "mp4" / f"{key}{ext}", src / f"{key}{ext}")
    cfg = load_config("toy", ["curate_videos.filters.scene_cut=reject"])
    out = run_job("curate_videos", cfg, src, tmp_path / "out").output
    rows = {r["key"]: r for r in pq.read_table(out / "audit").to_pylist()}
    assert set(rows) == set(picked)
    assert rows[picked[0]]["decision"] == "rejected" and "scene_cut" in rows[picked[0]]["reasons"]
    assert rows[picked[0]]["scene_cuts"] == 1 and "scene_cut" not in rows[picked[1]]["reasons"]


def test_a_key_read_twice_is_quarantined_the_second_time(toy_video_world, ray_local, tmp_path):
    from pipelines.runtime import run_job

    labels = pq.read_table(toy_video_world / "videos" / "labels.parquet").to_pylist()
    key = next(r["key"] for r in labels if r["kind"] == "clean")
    for sub in ("a", "b"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        for ext in (".mp4", ".txt"):
            shutil.copy(toy_video_world / "videos" / "mp4" / f"{key}{ext}", tmp_path / "in" / sub / f"{key}{ext}")
    result = run_job("curate_videos", load_config("toy"), tmp_path / "in", tmp_path / "out")
    rows = sorted(pq.read_table(result.output / "audit").to_pylist(), key=lambda r: r["id"])
    assert [r["decision"] for r in rows] == ["kept", "quarantined"]
    assert rows[1]["reasons"] == ["duplicate_key"] and rows[0]["id"] in rows[1]["error"]
