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


# ------------------------------------------------------------------------------------------------ the gate


def _gated_checkpoint(root: Path, name: str, index: int, fvd: float) -> Path:
    """A checkpoint output and its eval report (``fvd@4``), as the gate reads them."""
    import json

    ckpt, ev = root / f"ckpt-{index}", root / f"eval-{index}"
    ckpt.mkdir(parents=True)
    ev.mkdir()
    digest = "sha256:" + f"{index:04d}".ljust(64, "c")
    write_manifest(ckpt, {"name": name, "digest": digest, "kind": "checkpoint", "metrics": {"loss": 0.1, "step": 1}})
    (ev / "report.json").write_text(json.dumps({"checkpoint": {"name": name, "digest": digest},
                                                "headline": {"fvd@4": fvd}}))  # fmt: skip
    write_manifest(ev, {"name": name + "-eval", "digest": "sha256:" + f"{index:04d}".ljust(64, "e"),
                        "kind": "eval-report"})  # fmt: skip
    return ckpt, ev


def _promote(uri: str, artifacts: str, ref: str, slow: bool, barrier, results) -> None:
    """One promotion. ``slow``: the comparison with production takes 3 s (it reads production's report slowly), so
    the other promotion runs while this one is deciding; the other starts 0.5 s after this one."""
    import time

    from contracts.gate import GateRule
    from registry.gate import promote

    try:
        if slow:
            real = Registry.eval_report

            def eval_report(self, entry):
                if (entry if isinstance(entry, str) else entry.ref) != ref:
                    time.sleep(3.0)
                return real(self, entry)

            Registry.eval_report = eval_report
        registry = Registry(uri, artifacts)
        barrier.wait(TIMEOUT_S)
        if not slow:
            time.sleep(0.5)
        results.put((ref, "ok", promote(registry, ref, [GateRule("fvd@4", "lower", 0.05)])))
    except BaseException:  # noqa: BLE001 - the parent asserts on it, with the worker's traceback
        results.put((ref, "error", traceback.format_exc()))


def test_two_concurrent_promotions_end_with_the_better_in_production_and_both_decisions_recorded(store):
    import json

    from contracts.gate import GateRule
    from registry.gate import promote

    uri, artifacts = f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()
    registry = Registry(uri, artifacts)
    refs = {}
    for index, fvd in ((0, 1.0), (1, 0.8), (2, 0.5)):  # production, a good candidate, a better one
        ckpt, ev = _gated_checkpoint(store / "outputs", "t-gated", index, fvd)
        refs[fvd] = registry.attach_eval(registry.register(ckpt).ref, ev).ref
    assert promote(registry, refs[1.0], [GateRule("fvd@4", "lower", 0.05)])["promoted"]

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    # The worse candidate decides slowly; without compare-and-set it would move production after the better one did.
    procs = [ctx.Process(target=_promote, args=(uri, artifacts, refs[0.8], True, barrier, results)),
             ctx.Process(target=_promote, args=(uri, artifacts, refs[0.5], False, barrier, results))]  # fmt: skip
    for p in procs:
        p.start()
    outcomes = {ref: (status, detail) for ref, status, detail in (results.get(timeout=TIMEOUT_S) for _ in procs)}
    for p in procs:
        p.join(TIMEOUT_S)
    assert all(status == "ok" for status, _ in outcomes.values()), outcomes
    assert registry.get("t-gated@production").ref == refs[0.5]
    for ref in (refs[0.8], refs[0.5]):  # both decisions recorded with their candidates
        assert json.loads(registry.get(ref).tags["alcm.promotion"]) == outcomes[ref][1]
    better = outcomes[refs[0.5]][1]
    assert better["promoted"] and better["production_before"] in (refs[1.0], refs[0.8])


def test_the_decision_is_recorded_before_the_alias_moves_and_a_failed_record_moves_nothing(store, monkeypatch):
    from contracts.gate import GateRule
    from registry.gate import promote

    registry = Registry(f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri())
    refs = {}
    for index, fvd in ((0, 1.0), (1, 0.5)):
        ckpt, ev = _gated_checkpoint(store / "outputs", "t-order", index, fvd)
        refs[fvd] = registry.attach_eval(registry.register(ckpt).ref, ev).ref
    rules = [GateRule("fvd@4", "lower", 0.05)]
    assert promote(registry, refs[1.0], rules)["promoted"]
    calls = []
    real_record, real_alias = Registry.record_decision, Registry.set_alias

    def record(self, entry, decision):  # noqa: ARG001
        calls.append("record")
        raise ConnectionError("MLflow server went away")

    monkeypatch.setattr(Registry, "record_decision", record)
    monkeypatch.setattr(Registry, "set_alias", lambda self, ref, alias: calls.append("alias"))
    with pytest.raises(ConnectionError):
        promote(registry, refs[0.5], rules)
    assert calls == ["record"] and registry.get("t-order@production").ref == refs[1.0]  # aliases unchanged
    monkeypatch.setattr(Registry, "record_decision",
                        lambda self, e, d: (calls.append("record"), real_record(self, e, d)))  # fmt: skip
    monkeypatch.setattr(Registry, "set_alias", lambda self, r, a: (calls.append("alias"), real_alias(self, r, a))[1])
    assert promote(registry, refs[0.5], rules)["promoted"]
    assert calls[1:] == ["record", "alias"] and registry.get("t-order@production").ref == refs[0.5]
