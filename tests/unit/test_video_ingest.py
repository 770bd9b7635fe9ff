"""Clip ingest on tiny synthetic inputs: sampling, control frames, scene-cut splitting, and bad records."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
from PIL import Image

from models.pose import PoseConfig
from models.video_io import decode_png
from pipelines.config import load_config
from pipelines.video_ingest import CLIP_SCHEMA, CutPolicy, ingest_row, to_table
from pipelines.video_sources import discover_videos, read_video_source
from toyworld.dancers import generate_dancer_sequences, write_dancers
from toyworld.videos import encode_mp4, render_clip

KEYPOINTS = PoseConfig(source="keypoints")


@pytest.fixture(scope="module")
def clip_cfg():
    return load_config("toy").video  # 8 frames, stride 1, 64×64 square


def _raw_rows(root):
    sources, _ = discover_videos(root, chunk=8)
    return [row for s in sources for row in read_video_source(root, s, max_bytes=1 << 26)]


def _dancers(tmp_path, frames=12, n=1):
    write_dancers(tmp_path, generate_dancer_sequences(3, n, frames=frames, size=64))
    return _raw_rows(tmp_path)


def test_a_dancer_becomes_one_clip_with_centred_frames_and_pose_maps(tmp_path, clip_cfg):
    (raw,) = _dancers(tmp_path)
    (row,) = ingest_row(tmp_path, raw, clip_cfg, CutPolicy(), KEYPOINTS)
    assert row["quarantine"] is None and row["reasons"] == []
    assert row["frame_indices"] == list(range(2, 10)) and row["n_frames"] == 12
    assert len(row["frames"]) == len(row["control"]) == 8 and row["control_kind"] == "openpose"
    frame, pose = decode_png(row["frames"][0]), decode_png(row["control"][0])
    assert frame.shape == pose.shape == (64, 64, 3)
    assert (pose.sum(axis=2) > 0).mean() > 0.02 and (pose.sum(axis=2) == 0).mean() > 0.5
    assert row["fps"] == clip_cfg.frame_folder_fps and row["motion_score"] > 0
    to_table([row])  # the row fits the schema


def test_no_control_frames_when_the_profile_says_none(tmp_path, clip_cfg):
    (raw,) = _dancers(tmp_path)
    (row,) = ingest_row(tmp_path, raw, clip_cfg, CutPolicy(), PoseConfig(source="none"))
    assert row["control"] is None and row["control_kind"] is None and len(row["frames"]) == 8


def test_a_sequence_shorter_than_a_clip_is_rejected_as_too_short(tmp_path, clip_cfg):
    (raw,) = _dancers(tmp_path, frames=5)
    (row,) = ingest_row(tmp_path, raw, clip_cfg, CutPolicy(), KEYPOINTS)
    assert row["reasons"] == ["too_short"] and row["frames"] is None and "needs 8" in row["error"]


def test_frames_of_different_sizes_quarantine_the_sequence(tmp_path, clip_cfg):
    (raw,) = _dancers(tmp_path)
    Image.new("RGB", (48, 64)).save(tmp_path / raw["frame_files"][3])
    (row,) = ingest_row(tmp_path, raw, clip_cfg, CutPolicy(), KEYPOINTS)
    assert row["quarantine"] == "bad_schema" and "frame 3 is 48x64" in row["error"]


@pytest.mark.parametrize(
    "content, match",
    [
        (json.dumps({"keypoints": [[1, 2, 2]]}).encode(), "18 names for 1 keypoints"),
        # hostile: nesting deeper than Python's stack, joint names of mixed types, bytes that are not UTF-8
        (b"[" * 100_000 + b"]" * 100_000, "RecursionError"),
        (json.dumps({"keypoints": [[1, 2, 2]] * 18, "joints": [7] + ["x"] * 17}).encode(), "must be a string"),
        (b"\xff\xfe{}", "utf-8"),
    ],
)
def test_a_broken_pose_file_quarantines_the_clip_naming_it(tmp_path, clip_cfg, content, match):
    (raw,) = _dancers(tmp_path)
    (tmp_path / raw["pose_files"][5]).write_bytes(content)
    (row,) = ingest_row(tmp_path, raw, clip_cfg, CutPolicy(), KEYPOINTS)
    assert row["quarantine"] == "bad_schema" and raw["key"] in row["error"], row["error"]
    assert raw["pose_files"][5] in row["error"] and re.search(match, row["error"]), row["error"]


def test_a_quarantined_raw_row_passes_through_unchanged(tmp_path, clip_cfg):
    raw = {"id": "x#0", "key": "x", "source": "x", "kind": "video", "caption": None, "video": None,
           "quarantine": "unsafe_path", "error": "leaves the root"}  # fmt: skip
    (row,) = ingest_row(tmp_path, raw, clip_cfg, CutPolicy(), KEYPOINTS)
    assert (row["quarantine"], row["error"], row["parent_id"]) == ("unsafe_path", "leaves the root", "x#0")


def _cut_video(tmp_path):
    rng = np.random.default_rng(0)
    a = render_clip("circle", "red", "right", "black", rng, frames=10, size=64)
    b = render_clip("square", "yellow", "left", "white", rng, frames=10, size=64)
    (tmp_path / "cut.mp4").write_bytes(encode_mp4(np.concatenate([a, b])))
    (tmp_path / "cut.txt").write_text("a red circle moving right on a black background")
    (raw,) = _raw_rows(tmp_path)
    return raw


def test_split_policy_turns_each_cut_free_segment_into_a_clip(tmp_path, clip_cfg):
    raw = _cut_video(tmp_path)
    rows = ingest_row(tmp_path, raw, clip_cfg, CutPolicy(split=True, threshold=0.35), KEYPOINTS)
    assert [r["key"] for r in rows] == ["cut~0", "cut~1"]
    assert [(r["segment_start"], r["segment_end"]) for r in rows] == [(0, 10), (10, 20)]
    assert [r["frame_indices"] for r in rows] == [list(range(1, 9)), list(range(11, 19))]
    assert all(r["parent_id"] == raw["id"] and r["scene_cuts"] == 0 for r in rows)


def test_without_splitting_a_clip_counts_the_cuts_inside_its_window(tmp_path, clip_cfg):
    raw = _cut_video(tmp_path)
    (row,) = ingest_row(tmp_path, raw, clip_cfg, CutPolicy(split=False, threshold=0.35), KEYPOINTS)
    assert row["frame_indices"] == list(range(6, 14)) and row["scene_cuts"] == 1
    (row,) = ingest_row(tmp_path, raw, clip_cfg, CutPolicy(split=False, threshold=None), KEYPOINTS)
    assert row["scene_cuts"] == 0


def test_a_video_longer_than_the_decode_limit_is_rejected_as_too_long(tmp_path, clip_cfg):
    raw = _cut_video(tmp_path)
    (row,) = ingest_row(tmp_path, raw, dataclasses.replace(clip_cfg, max_decode_frames=12), CutPolicy(), KEYPOINTS)
    assert row["reasons"] == ["too_long"] and row["quarantine"] is None and row["frames"] is None


def test_clip_rows_have_exactly_the_schema_columns(tmp_path, clip_cfg):
    raw = _cut_video(tmp_path)
    rows = ingest_row(tmp_path, raw, clip_cfg, CutPolicy(split=True, threshold=0.35), KEYPOINTS)
    assert all(set(r) == set(CLIP_SCHEMA.names) for r in rows)
