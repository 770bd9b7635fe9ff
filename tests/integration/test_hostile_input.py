"""The curation and recaptioning jobs on a hostile-input corpus (:mod:`toyworld.hostile`), on real Ray: every row
ends kept, rejected or quarantined with the reason its case determines, the accounting invariant holds, the job
never fails on data, and nothing is written outside the output directory."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from contracts.reasons import ALL_REASONS, QUARANTINE_REASONS
from pipelines.config import load_config
from toyworld.hostile import DECODED, write_hostile_images, write_hostile_videos


def tree(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every file and link under ``root`` except ``skip``'s subtree: path → (size, mtime_ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d != skip]
        for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            st = (here / name).lstat()
            out[str((here / name).relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def check_rows(audit: list[dict], expects, key_of) -> None:
    """Each expectation matches exactly one audit row (in order of appearance for repeated keys)."""
    by_key: dict[str, list[dict]] = {}
    for row in audit:
        by_key.setdefault(key_of(row), []).append(row)
    for e in expects:
        assert by_key.get(e.key), f"{e.case}: no audit row for key {e.key!r}"
        row = by_key[e.key].pop(0)
        reasons = list(row["reasons"])
        assert all(r in ALL_REASONS for r in reasons), (e.case, reasons)
        if e.decision == DECODED:
            assert row["decision"] in ("kept", "rejected"), (e.case, row["decision"], reasons, row["error"])
            assert not set(reasons) & set(QUARANTINE_REASONS), (e.case, reasons)
        else:
            assert row["decision"] == e.decision, (e.case, row["decision"], reasons, row["error"])
            assert e.reason in reasons, (e.case, e.reason, reasons)
        if row["decision"] == "quarantined":
            assert len(reasons) == 1 and row["error"], (e.case, reasons, row["error"])
    assert not [r for rows in by_key.values() for r in rows], "audit rows the corpus did not write"


@pytest.fixture
def outside(tmp_path):
    """A unique tag for the corpus's escaping names, and a check that none of them was created anywhere."""
    tag = f"hostile{uuid.uuid4().hex[:8]}"
    yield tag
    for where in (tmp_path, tmp_path.parent, Path("/tmp"), Path.cwd()):
        assert not list(where.glob(f"{tag}-*")), f"a file named by the corpus appeared in {where}"


def test_hostile_images_are_each_accounted_for_with_their_reason_and_nothing_leaves_the_output(
    ray_local, tmp_path, outside
):
    from pipelines.runtime import run_job

    src, out = tmp_path / "raw", tmp_path / "out"
    expects = write_hostile_images(src, tag=outside)
    before = tree(tmp_path, out)
    result = run_job("curate_images", load_config("toy"), src, out)
    assert tree(tmp_path, out) == before, "the job wrote or changed files outside its output directory"
    assert sorted(p.name for p in out.iterdir()) == ["audit", "kept", "manifest.json"]

    audit = pq.read_table(out / "audit").to_pylist()
    assert len(audit) == len(expects) == result.manifest["counts"]["input"]
    assert len({r["id"] for r in audit}) == len(audit)
    check_rows(audit, expects, key_of=lambda r: r["key"])
    counts = result.manifest["counts"]["by_decision"]
    assert sum(counts.values()) == len(expects)
    kept = pq.read_table(out / "kept").to_pylist()
    assert len(kept) == counts["kept"] > 0 and len({r["key"] for r in kept}) == len(kept)

    by_case = {e.case: e.key for e in expects}
    rotated = next(r for r in audit if r["key"] == by_case["exif_rotated"])
    assert (rotated["width"], rotated["height"]) == (64, 40), "EXIF orientation was not applied"
    strip = next(r for r in audit if r["key"] == by_case["strip_1x100000"])
    assert (strip["width"], strip["height"]) == (1, 100_000)
    assert result.manifest["ignored_files"] == ["z-stray-\\xff.png"]  # a name that is not UTF-8, escaped


@pytest.mark.parametrize("job", ["curate_videos", "recaption"])
def test_hostile_videos_are_each_accounted_for_with_their_reason_and_nothing_leaves_the_output(
    ray_local, tmp_path, outside, job
):
    from pipelines.runtime import run_job

    src, out = tmp_path / "raw", tmp_path / "out"
    expects = write_hostile_videos(src, tag=outside)
    before = tree(tmp_path, out)
    result = run_job(job, load_config("toy"), src, out)
    assert tree(tmp_path, out) == before, "the job wrote or changed files outside its output directory"

    m = result.manifest
    audit = pq.read_table(out / "audit").to_pylist()
    assert m["counts"]["input"] == len(expects) == len({r["parent_id"] for r in audit})
    assert sum(m["counts"]["by_decision"].values()) == len(audit) == m["counts"]["clips"]
    check_rows(audit, expects, key_of=lambda r: r["key"].split("~")[0])
    assert sorted(m["ignored_files"]) == ["dancers/labels.parquet", "loose/notes.md"]
