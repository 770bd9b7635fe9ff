"""Two processes registering at once against one embedded SQLite registry: nothing collides, nothing is lost, and the
same output registered twice at once is one version. Real processes (spawn), released together by a barrier."""

from __future__ import annotations

import multiprocessing as mp
import traceback
from pathlib import Path

import pytest

from contracts.manifest import write_manifest
from registry.store import Registry

K = 6
TIMEOUT_S = 120


def output(root: Path, name: str, index: int) -> Path:
    """A dataset job output with its own digest."""
    out = root / f"{name}-{index}"
    out.mkdir(parents=True)
    digest = "sha256:" + f"{index:04d}".ljust(64, "0")
    write_manifest(out, {"name": name, "digest": digest, "kind": "image-text-dataset",
                         "counts": {"input": index, "by_decision": {"kept": index}}})  # fmt: skip
    return out


def _register_all(worker: int, uri: str, artifacts: str, dirs: list[str], barrier, results) -> None:
    """One worker: open the registry after the barrier (so store and experiment creation race too), register."""
    try:
        barrier.wait(TIMEOUT_S)
        registry = Registry(uri, artifacts)
        results.put((worker, "ok", [(d, registry.register(d).ref) for d in dirs]))
    except BaseException:  # noqa: BLE001 - the parent asserts on it, with the worker's traceback
        results.put((worker, "error", traceback.format_exc()))


def race(root: Path, work: list[list[Path]]) -> list[list[tuple[str, str]]]:
    """Run one worker per list of outputs, all released at once; each worker's (dir, ref) pairs, in order."""
    uri, artifacts = f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(work)), ctx.Queue()
    procs = [ctx.Process(target=_register_all, args=(i, uri, artifacts, [str(d) for d in dirs], barrier, results))
             for i, dirs in enumerate(work)]  # fmt: skip
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=TIMEOUT_S) for _ in procs)  # in worker order, not finishing order
    for p in procs:
        p.join(TIMEOUT_S)
    errors = [detail for _, status, detail in outcomes if status == "error"]
    assert not errors, "\n".join(errors)
    return [detail for _, _, detail in outcomes]


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "registry"


def test_two_processes_registering_versions_of_one_new_name_lose_nothing(store, tmp_path):
    outputs = [output(tmp_path / "out", "race-data", i) for i in range(2 * K)]
    refs = [ref for worker in race(store, [outputs[:K], outputs[K:]]) for _, ref in worker]
    assert len(set(refs)) == 2 * K
    entries = [e for e in Registry(f"sqlite:///{store / 'mlflow.db'}").list() if e.name == "race-data"]
    assert [e.version for e in entries] == list(range(1, 2 * K + 1))
    assert sorted(e.digest for e in entries) == sorted("sha256:" + f"{i:04d}".ljust(64, "0") for i in range(2 * K))
    assert sorted(e.ref for e in entries) == sorted(refs)


def test_two_processes_registering_the_same_output_get_one_version(store, tmp_path):
    same = output(tmp_path / "out", "race-same", 7)
    first, second = race(store, [[same], [same]])
    assert first == second == [(str(same), "race-same@1")]
    entries = [e for e in Registry(f"sqlite:///{store / 'mlflow.db'}").list() if e.name == "race-same"]
    assert [(e.version, e.location) for e in entries] == [(1, str(same))]


def test_two_processes_creating_distinct_names_at_once_both_succeed(store, tmp_path):
    a = [output(tmp_path / "out", f"race-a{i}", i) for i in range(3)]
    b = [output(tmp_path / "out", f"race-b{i}", i) for i in range(3)]
    first, second = race(store, [a, b])
    assert [ref for _, ref in first] == ["race-a0@1", "race-a1@1", "race-a2@1"]
    assert [ref for _, ref in second] == ["race-b0@1", "race-b1@1", "race-b2@1"]
    names = sorted(e.ref for e in Registry(f"sqlite:///{store / 'mlflow.db'}").list())
    assert names == sorted([ref for _, ref in first + second])


def test_a_duplicate_from_a_lost_race_is_dropped_for_the_older_version(store, tmp_path, monkeypatch):
    """The re-check every backend relies on, made deterministic: the late process's lookups ran before the early
    one's version existed (as on a server, where no file lock orders them), so it creates a second version."""
    same = output(tmp_path / "out", "race-late", 3)
    early, late = Registry(f"sqlite:///{store / 'mlflow.db'}"), Registry(f"sqlite:///{store / 'mlflow.db'}")
    won = early.register(same)
    monkeypatch.setattr(late, "find", lambda name, digest: None)
    assert late.register(same).ref == won.ref == "race-late@1"
    assert [e.ref for e in early.list()] == ["race-late@1"]
    duplicate_runs = late._client.search_runs([late._experiment], filter_string="tags.`alcm.digest` != ''")
    assert [r.info.run_id for r in duplicate_runs] == [won.run_id]  # the loser's run is deleted too
