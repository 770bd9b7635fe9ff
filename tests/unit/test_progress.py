"""Progress of long work (pipelines/progress.py): lines a log and a flow read back, a bar on a terminal, events for
listeners, counts that never go backwards nor count a restarted worker twice."""

from __future__ import annotations

import logging

import pytest

from pipelines import progress
from pipelines.progress import Event, Progress, Reporter


def test_log_lines_state_count_total_rate_and_eta_and_parse_back(caplog, monkeypatch):
    clock = iter(float(t) for t in range(0, 1000, 5))
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    caplog.set_level(logging.INFO, logger="pipelines.progress")
    heard: list[Event] = []
    with progress.listen(heard.append), Progress("curate images", 400, "rows", every_s=10, mode="log") as p:
        for _ in range(4):
            p.update(100)
    lines = [r.getMessage() for r in caplog.records]
    assert lines and all(line.startswith("progress curate images: ") for line in lines)
    assert "400/400 rows (100%)" in lines[-1]
    first = progress.parse("2026-12-07 INFO [raysubmit_1] " + lines[0])
    assert first is not None and (first.what, first.total, first.unit) == ("curate images", 400, "rows")
    assert 0 < first.n < 400 and "ETA" in lines[0]
    assert heard[-1] == Event("curate images", 400, 400, "rows", heard[-1].eta_s) and heard[-1].percent == 100.0
    assert [e.n for e in heard] == sorted(e.n for e in heard)


def test_counts_only_grow_and_a_resume_rebases_the_count():
    with Progress("train probe", 10, "steps", mode="off") as p:
        p.advance_to(4)
        p.advance_to(3)  # a late, lower report
        assert p.n == 4
        p.rebase(6)  # resumed from a checkpoint at step 6
        assert (p.n, p.start) == (6, 6) and p.event().percent == 60.0
        p.update(4)
        assert p.n == 10 and p.eta_s() == 0.0


def test_a_terminal_gets_a_bar(capsys):
    with Progress("recaption", 8, "clips", mode="bar") as p:
        p.update(8)
    err = capsys.readouterr().err
    assert "recaption" in err and "8/8" in err


def test_unknown_totals_and_foreign_lines():
    line = Progress("ingest", None, "files", mode="off")
    line.update(3)
    assert line.line().startswith("progress ingest: 3/? files") and line.event().percent is None
    assert progress.parse("progress ingest: 3/? files, 1 files/s") == Event("ingest", 3, None, "files")
    assert progress.parse("step 3/10 loss 0.1") is None and progress.parse("") is None


def test_a_failing_listener_never_breaks_the_work():
    def broken(event):
        raise RuntimeError("listener down")

    heard = []
    with progress.listen(broken), progress.listen(heard.append), Progress("x", 2, "items", mode="off") as p:
        p.update(2)
    assert heard[-1].n == 2


def test_a_reporter_without_a_queue_and_with_a_broken_one_is_silent():
    Reporter(None, "0").at(3)

    class Full:
        def put_nowait(self, item):
            raise RuntimeError("queue full")

    Reporter(Full(), "0").at(3)


@pytest.mark.parametrize("mode", ["log", "off", "bogus"])
def test_the_mode_comes_from_the_environment(monkeypatch, mode):
    monkeypatch.setenv(progress.MODE_ENV, mode)
    assert Progress("x", 1, mode=None).mode == ("log" if mode == "bogus" else mode)
