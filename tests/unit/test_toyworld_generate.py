"""The whole toy world from one seed: layout, manifest with digests, byte-identical regeneration."""

from __future__ import annotations

import hashlib
import json

import pytest

from toyworld.generate import GENERATOR_VERSION, generate_world
from toyworld.videos import KINDS

COUNTS = {"images": 40, "videos": 3, "dancers": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "w"
    return out, generate_world(out, seed=3, **COUNTS)


def test_generate_world_writes_all_parts_and_a_manifest_with_file_digests(world):
    out, summary = world
    assert sorted(p.name for p in out.iterdir()) == ["dancers", "images", "videos", "world.json"]
    assert json.loads((out / "world.json").read_text()) == summary
    assert summary["seed"] == 3 and summary["counts"] == COUNTS
    assert summary["generator_version"] == GENERATOR_VERSION
    assert sum(summary["image_label_counts"].values()) == 40
    assert sum(summary["video_kind_counts"].values()) == 3
    assert set(summary["video_kind_counts"]) <= set(KINDS)
    static = summary["video_kind_counts"].get("static", 0)
    assert sum(summary["video_direction_counts"].values()) == 3 - static  # static clips have no direction
    assert sum(summary["dancer_pattern_counts"].values()) == 2
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "world.json")
    assert sorted(summary["files"]) == files
    for name, digest in summary["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert "images/parquet/part-00000.parquet" in files and "videos/labels.parquet" in files
    assert "dancers/labels.parquet" in files
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # the temporary folder is gone


def test_same_seed_gives_an_identical_world_and_another_seed_differs(world, tmp_path):
    out, summary = world
    again = generate_world(tmp_path / "again", seed=3, **COUNTS)
    assert (tmp_path / "again" / "world.json").read_bytes() == (out / "world.json").read_bytes()
    assert again == summary
    other = generate_world(tmp_path / "other", seed=4, **COUNTS)
    assert other["files"]["images/parquet/part-00000.parquet"] != summary["files"]["images/parquet/part-00000.parquet"]
    assert other["files"]["videos/wds/shard-00000.tar"] != summary["files"]["videos/wds/shard-00000.tar"]


def test_generate_world_refuses_a_non_empty_output(world, tmp_path):
    out, _ = world
    with pytest.raises(FileExistsError, match="not an empty folder"):
        generate_world(out, seed=3, **COUNTS)
    empty = tmp_path / "empty"
    empty.mkdir()
    summary = generate_world(empty, seed=1, images=2, videos=0, dancers=0)
    assert summary["counts"] == {"images": 2, "videos": 0, "dancers": 0}
    with pytest.raises(ValueError, match="images=-1"):
        generate_world(tmp_path / "bad", seed=1, images=-1, videos=0, dancers=0)
