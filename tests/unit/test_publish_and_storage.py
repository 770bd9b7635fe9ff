"""Publishing outputs safely (stale staging of killed jobs, unwritable destinations, a full disk) and the training
storage preflight."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from contracts.publish import prepare_output, publish, remove_stale_staging, staged_output
from pipelines.storage import StorageError, check_storage


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def stale(tmp_path, name, *, host=None, pid=None):
    staging = tmp_path / f".out.staging-{name}"
    (staging / "kept").mkdir(parents=True)
    (staging / "kept" / "part-0.parquet").write_bytes(b"half written")
    owner = {"host": host or socket.gethostname(), "pid": dead_pid() if pid is None else pid}
    (tmp_path / f".out.staging-{name}.owner").write_text(json.dumps(owner))
    return staging


def test_a_killed_jobs_staging_is_removed_and_live_or_foreign_ones_are_kept(tmp_path):
    dead = stale(tmp_path, "dead0001")
    live = stale(tmp_path, "live0001", pid=os.getpid())
    foreign = stale(tmp_path, "away0001", host="another-host")
    unowned = tmp_path / ".out.staging-none0001"
    unowned.mkdir()
    assert remove_stale_staging(tmp_path / "out") == [dead]
    assert not dead.exists() and not (tmp_path / ".out.staging-dead0001.owner").exists()
    assert live.is_dir() and foreign.is_dir() and unowned.is_dir()


def test_preparing_an_output_cleans_its_stale_staging_and_publishing_leaves_no_owner_file(tmp_path):
    dead = stale(tmp_path, "dead0002")
    staging = prepare_output(tmp_path / "out")
    assert not dead.exists()
    owner = json.loads((tmp_path / f"{staging.name}.owner").read_text())
    assert owner == {"host": socket.gethostname(), "pid": os.getpid()}
    (staging / "manifest.json").write_text("{}")
    publish(staging, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json"]


def test_a_destination_that_cannot_be_written_fails_before_any_work_naming_it(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OSError, match=r"output .*a-file/out: cannot write in .*nothing was started"):
        prepare_output(tmp_path / "a-file" / "out")


def test_a_full_disk_while_writing_is_named_and_leaves_nothing(tmp_path):
    with pytest.raises(OSError, match=r"no space left on the device while writing") as err:
        with staged_output(tmp_path / "out") as out:
            (out.dir / "part").write_bytes(b"x")
            raise RuntimeError("worker died") from OSError(errno.ENOSPC, "No space left on device")
    assert err.value.errno == errno.ENOSPC and "out" in str(err.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="other"), staged_output(tmp_path / "out"):
        raise RuntimeError("other")
    assert list(tmp_path.iterdir()) == []


def test_a_committed_output_appears_whole_with_its_manifest_written_last(tmp_path):
    with staged_output(tmp_path / "out") as out:
        (out.dir / "kept").mkdir()
        (out.dir / "kept" / "part-0.parquet").write_bytes(b"rows")
        assert not (tmp_path / "out").exists()
        where = out.commit({"name": "n", "digest": "sha256:0"})
    assert where == (tmp_path / "out").resolve()
    assert sorted(p.name for p in where.iterdir()) == ["kept", "manifest.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging directory or owner file left


def test_a_block_that_never_commits_publishes_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="without committing"), staged_output(tmp_path / "out") as out:
        (out.dir / "part").write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []


def test_a_destination_of_an_unsupported_scheme_is_refused_before_any_work_naming_it(tmp_path):
    with pytest.raises(OSError, match=r"ftp://host/out: unsupported location; use a local path or one of s3://"), \
            staged_output("ftp://host/out"):  # fmt: skip
        pass


def test_uris_never_pass_through_path_and_paths_are_made_absolute(tmp_path, monkeypatch):
    from contracts import storage

    monkeypatch.chdir(tmp_path)
    assert storage.join("s3://bucket/out/", "kept", "part-0.parquet") == "s3://bucket/out/kept/part-0.parquet"
    assert storage.normalize("s3://bucket/out/") == "s3://bucket/out"
    assert storage.normalize("rel/out") == str(tmp_path / "rel" / "out")
    assert storage.join("rel", "kept") == "rel/kept"
    assert storage.is_uri("gs://b/x") and not storage.is_uri("/data/s3:/b")


def test_storage_preflight_accepts_a_writable_root_and_leaves_no_probe(tmp_path):
    assert check_storage(str(tmp_path / "runs"), "distill_image.train.storage_path") == str(tmp_path / "runs")
    assert check_storage((tmp_path / "runs2").as_uri(), "k") == (tmp_path / "runs2").as_uri()
    assert list((tmp_path / "runs").iterdir()) == [] and list((tmp_path / "runs2").iterdir()) == []


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("nosuch://bucket/runs", "not a usable storage URI"),
        ("file:///proc/alcm-missing/runs", "cannot create or write checkpoints"),
        ("/proc/alcm-missing/runs", "cannot create or write checkpoints"),
    ],
)
def test_storage_preflight_names_the_key_and_uri_of_a_bad_location(uri, words):
    with pytest.raises(StorageError, match="distill_video.train.storage_path") as err:
        check_storage(uri, "distill_video.train.storage_path")
    assert uri in str(err.value) and words in str(err.value)


def test_a_file_where_the_storage_root_should_be_is_refused(tmp_path):
    (tmp_path / "runs").write_text("x")
    with pytest.raises(StorageError, match="is a file, not a directory"):
        check_storage(str(tmp_path / "runs"), "adapt.train.storage_path")


# ------------------------------------------------------------------------------------------------ races, crashes


def tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_writers_without_overwrite_the_second_fails_and_the_first_stays_byte_for_byte(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(FileExistsError, match=r"published by another job while this one ran"):
        with staged_output(dest) as second:  # prepared before the first writer's output exists
            (second.dir / "part-0").write_bytes(b"second writer")
            with staged_output(dest) as first:
                (first.dir / "part-0").write_bytes(b"first writer")
                first.commit({"name": "first"})
            published = tree(dest)
            second.commit({"name": "second"})
    assert tree(dest) == published and published["part-0"] == b"first writer"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the second writer's staging is gone too


def test_a_writer_with_overwrite_replaces_a_concurrent_one(tmp_path):
    dest = tmp_path / "out"
    with staged_output(dest) as first, staged_output(dest, overwrite=True) as second:
        (first.dir / "part-0").write_bytes(b"first")
        (second.dir / "part-0").write_bytes(b"second")
        first.commit({"name": "first"})
        second.commit({"name": "second"})
    assert tree(dest)["part-0"] == b"second" and [p.name for p in tmp_path.iterdir()] == ["out"]


CRASH = """
import os, shutil, sys
from pathlib import Path
from contracts.publish import staged_output
dest, after = Path(sys.argv[1]), int(sys.argv[2])
real, calls = os.rename, []
def rename(a, b):
    calls.append(a)
    if len(calls) > after:
        os._exit(9)  # killed: no cleanup of any kind runs
    real(a, b)
def rmtree(path, **kw):
    if ".old-" in str(path):
        os._exit(9)  # killed after both renames, before the old output is removed
os.rename, shutil.rmtree = rename, rmtree
with staged_output(dest, overwrite=True) as out:
    (out.dir / "part-0").write_bytes(b"new")
    out.commit({"name": "new"})
"""


@pytest.mark.parametrize(("renames_done", "expected"), [(1, b"old"), (2, b"new")], ids=["between", "after-both"])
def test_an_overwrite_killed_around_its_renames_is_restored_or_finished_by_the_next_job(tmp_path, renames_done,
                                                                                        expected):  # fmt: skip
    dest = tmp_path / "out"
    with staged_output(dest) as out:
        (out.dir / "part-0").write_bytes(b"old")
        out.commit({"name": "old"})
    proc = subprocess.run([sys.executable, "-c", CRASH, str(dest), str(renames_done)], capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()
    leftovers = [p.name for p in tmp_path.iterdir() if ".old-" in p.name]
    assert len(leftovers) == 1 and dest.exists() == (renames_done == 2)  # the crash left what it says
    with pytest.raises(FileExistsError, match="is not empty"):  # the next job, without overwrite
        prepare_output(dest)
    assert tree(dest)["part-0"] == expected
    assert not [p for p in tmp_path.iterdir() if ".old-" in p.name]


def test_a_failed_second_rename_puts_the_old_output_back_at_once(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    with staged_output(dest) as out:
        (out.dir / "part-0").write_bytes(b"old")
        out.commit({"name": "old"})
    real = os.rename

    def rename(a, b):
        if ".staging-" in str(a):
            raise OSError(errno.EIO, "I/O error")
        real(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="I/O error"), staged_output(dest, overwrite=True) as out:
        (out.dir / "part-0").write_bytes(b"new")
        out.commit({"name": "new"})
    assert tree(dest)["part-0"] == b"old" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_every_staged_file_is_flushed_before_the_rename_publishes_it(tmp_path, monkeypatch):
    events = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])  # fmt: skip
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("rename", str(a))), real_rename(a, b))[1])
    with staged_output(tmp_path / "out") as out:
        (out.dir / "kept").mkdir()
        (out.dir / "kept" / "part-0.parquet").write_bytes(b"rows")
        staging = str(out.dir)
        out.commit({"name": "n"})
    rename_at = events.index(("rename", staging))
    synced = {path for kind, path in events[:rename_at] if kind == "fsync"}
    for rel in ("kept/part-0.parquet", "manifest.json", "kept", ""):
        assert os.path.join(staging, rel).rstrip("/") in synced, rel
    assert ("fsync", str(tmp_path)) in events[rename_at:]  # the rename itself, made durable
