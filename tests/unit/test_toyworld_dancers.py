"""Stick-figure dancers: TikTok folder layout, pose JSON with named joints that match the drawn figure."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from toyworld.dancers import JOINTS, LIMBS, PATTERNS, generate_dancer_sequences, render_dancer, write_dancers
from toyworld.scenes import COLOUR_RGB


@pytest.fixture(scope="module")
def seqs() -> list[dict]:
    return generate_dancer_sequences(5, 4, frames=6)


def test_skeleton_has_at_least_13_named_joints_and_valid_limbs():
    assert len(JOINTS) >= 13 and len(set(JOINTS)) == len(JOINTS)
    for name in ("nose", "neck", "left_shoulder", "right_elbow", "left_wrist", "right_hip", "left_knee", "right_ankle"):
        assert name in JOINTS
    assert all(a in JOINTS and b in JOINTS for a, b in LIMBS)


def test_dancers_layout_has_images_and_pose_json_per_frame_and_no_captions(seqs, tmp_path):
    summary = write_dancers(tmp_path, seqs)
    assert summary["sequences"] == 4 and summary["frames"] == 24
    for seq in seqs:
        root = tmp_path / seq["seq"]
        assert sorted(p.name for p in root.iterdir()) == ["images", "pose"]
        assert sorted(p.name for p in (root / "images").iterdir()) == [f"{t:04d}.png" for t in range(1, 7)]
        assert sorted(p.name for p in (root / "pose").iterdir()) == [f"{t:04d}.json" for t in range(1, 7)]
        with Image.open(root / "images" / "0001.png") as img:
            assert img.size == (64, 64) and img.mode == "RGB"
            assert np.array_equal(np.asarray(img), seq["frames"][0])
    assert not list(tmp_path.rglob("*.txt"))
    labels = pq.read_table(tmp_path / "labels.parquet").to_pylist()
    assert [row["seq"] for row in labels] == [s["seq"] for s in seqs]
    assert {"seq", "pattern", "shirt", "pants", "background"} <= set(labels[0])


def test_pose_json_has_named_joints_with_keypoints_inside_the_frame(seqs, tmp_path):
    write_dancers(tmp_path, seqs)
    pose = json.loads((tmp_path / seqs[0]["seq"] / "pose" / "0003.json").read_text())
    assert pose["joints"] == list(JOINTS) and len(pose["joints"]) >= 13
    assert (pose["width"], pose["height"]) == (64, 64)
    assert len(pose["keypoints"]) == len(JOINTS)
    for x, y, visibility in pose["keypoints"]:
        assert visibility in (1, 2) and 0 <= x < 64 and 0 <= y < 64
    assert np.allclose(np.asarray(pose["keypoints"]), seqs[0]["keypoints"][2], atol=0.006)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_pattern_moves_and_keypoints_sit_on_the_garments(pattern):
    rng = np.random.default_rng(0)
    frames, keypoints = render_dancer(pattern, "red", "blue", "white", rng, speed=1.0, phase=0.3, frames=8, size=64)
    assert keypoints.shape == (8, len(JOINTS), 3)
    assert (keypoints[:, :, 2] > 0).all()  # the whole figure stays in frame
    assert np.abs(np.diff(keypoints[:, :, :2], axis=0)).max() > 1.0  # it dances
    for t in range(8):
        for joint, colour in (("right_knee", "blue"), ("left_ankle", "blue"), ("right_elbow", "red")):
            x, y = keypoints[t, JOINTS.index(joint), :2]
            patch = frames[t, int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2].reshape(-1, 3).astype(int)
            dist = np.abs(patch - np.asarray(COLOUR_RGB[colour])).sum(axis=1).min()
            assert dist < 60, (pattern, t, joint, patch)


def test_spin_hides_the_face_while_turned_away():
    rng = np.random.default_rng(1)
    _, keypoints = render_dancer("spin", "green", "purple", "gray", rng, speed=1.0, phase=0.0, frames=16, size=64)
    nose = keypoints[:, JOINTS.index("nose"), 2]
    assert set(nose.tolist()) == {1.0, 2.0}


def test_same_seed_gives_identical_dancers_and_shirts_differ_from_pants():
    a = generate_dancer_sequences(9, 3, frames=4)
    b = generate_dancer_sequences(9, 3, frames=4)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x["frames"], y["frames"]) and np.array_equal(x["keypoints"], y["keypoints"])
        assert x["shirt"] != x["pants"]
    assert not np.array_equal(generate_dancer_sequences(10, 1, frames=4)[0]["frames"], a[0]["frames"])
