"""Progress of long work, shown three ways from one source.

- On a terminal: a tqdm bar with rate and ETA on stderr.
- Elsewhere (a log file, a submitted Ray job's log, a Prefect worker): a line every ``every_s`` seconds and at the
  end, ``progress WHAT: N/TOTAL UNIT (P%), R UNIT/s, ETA 1m05s``, which :func:`parse` reads back.
- To listeners (:func:`listen`): an :class:`Event` per change, at most one a second. A flow run turns them into
  its Prefect progress artifact (:func:`flows.common.progress_artifact`); a flow following a submitted job's log
  feeds the parsed lines to the same listeners (:func:`emit`).

Work that runs in Ray workers (training steps on rank 0, evaluation shards) reports through a
:class:`RemoteProgress`: the driver owns the bar and a small queue actor; each worker's :class:`Reporter` puts its
own absolute count under its own name, so a restarted worker that counts again from its checkpoint never counts
twice. Reporting is best effort: a lost queue never fails the work. ``ALCM_PROGRESS=log`` forces lines on a
terminal, ``ALCM_PROGRESS=off`` silences both (listeners still hear).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

MODE_ENV = "ALCM_PROGRESS"
_RESUMED = "\0resumed"
_LINE = re.compile(r"progress (?P<what>[^:\n]+): (?P<n>\d+)/(?P<total>\d+|\?) (?P<unit>[^\s,(]+)")


@dataclass(frozen=True)
class Event:
    """Where one piece of work stands."""

    what: str
    n: int
    total: int | None
    unit: str
    eta_s: float | None = None

    @property
    def percent(self) -> float | None:
        """Done, in percent (None without a total)."""
        return None if not self.total else min(100.0, 100.0 * self.n / self.total)


_listeners: list[Callable[[Event], None]] = []
_lock = threading.Lock()


@contextlib.contextmanager
def listen(fn: Callable[[Event], None]) -> Iterator[None]:
    """Call ``fn`` with every progress event of this process while the block runs."""
    with _lock:
        _listeners.append(fn)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(fn)


def emit(event: Event) -> None:
    """Tell the listeners; a listener that fails is logged, never raised (progress must not break work)."""
    with _lock:
        listeners = list(_listeners)
    for fn in listeners:
        try:
            fn(event)
        except Exception as exc:  # noqa: BLE001 - best effort by contract
            log.debug("progress listener %r failed: %s", fn, exc)


def parse(line: str) -> Event | None:
    """The event a progress line states (from a job's log), or None."""
    m = _LINE.search(line)
    if m is None:
        return None
    total = None if m["total"] == "?" else int(m["total"])
    return Event(m["what"].strip(), int(m["n"]), total, m["unit"])


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """One piece of work: ``update(n)`` adds, ``advance_to(n)`` sets a count that only grows. A context manager
    (the final line and event on exit)."""

    def __init__(self, what: str, total: int | None, unit: str = "items", *, every_s: float = 10.0,
                 initial: int = 0, mode: str | None = None) -> None:  # fmt: skip
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.n = self.start = initial
        self.t0 = self._logged = self._told = time.monotonic()
        mode = mode or os.environ.get(MODE_ENV) or ("bar" if sys.stderr.isatty() else "log")
        self.mode = mode if mode in ("bar", "log", "off") else "log"
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=what, unit=f" {unit}", file=sys.stderr,
                             dynamic_ncols=True, leave=True)  # fmt: skip
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.advance_to(self.n + n)

    def advance_to(self, n: int) -> None:
        if n <= self.n:
            return
        if self._bar is not None:
            self._bar.update(n - self.n)
        self.n = n
        now = time.monotonic()
        if self.mode == "log" and now - self._logged >= self.every_s:
            self._logged = now
            log.info("%s", self.line())
        if now - self._told >= 1.0:
            self._told = now
            emit(self.event())

    def rebase(self, n: int) -> None:
        """The work resumes at ``n`` (a restored checkpoint): the count and the rate start there."""
        if self._bar is not None:
            self._bar.n = n
            self._bar.refresh()
        self.n = self.start = n
        self.t0 = time.monotonic()

    def rate(self) -> float:
        return (self.n - self.start) / max(1e-9, time.monotonic() - self.t0)

    def eta_s(self) -> float | None:
        rate = self.rate()
        return None if not self.total or rate <= 0 else max(0.0, (self.total - self.n) / rate)

    def event(self) -> Event:
        return Event(self.what, self.n, self.total, self.unit, self.eta_s())

    def line(self) -> str:
        """``progress WHAT: N/TOTAL UNIT (P%), R UNIT/s, ETA …`` (what :func:`parse` reads)."""
        e = self.event()
        done = f" ({e.percent:.0f}%)" if e.percent is not None else ""
        eta = f", ETA {_clock(e.eta_s)}" if e.eta_s is not None else ""
        return (f"progress {self.what}: {self.n}/{self.total if self.total else '?'} {self.unit}{done}, "
                f"{self.rate():.3g} {self.unit}/s{eta}")  # fmt: skip

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log":
            log.info("%s (%s)", self.line(), _clock(time.monotonic() - self.t0))
        emit(self.event())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Reporter:
    """What a Ray worker holds: ``at(n)`` reports its own absolute count (picklable; best effort)."""

    def __init__(self, queue, name: str) -> None:
        self.queue, self.name = queue, name
        self._last = -1

    def named(self, name: str) -> Reporter:
        return Reporter(self.queue, name)

    def resumed_at(self, n: int) -> None:
        """This worker starts at ``n`` (restored), not at 0 (the display's rate starts there)."""
        self._put((_RESUMED, n))

    def at(self, n: int) -> None:
        if n == self._last or self.queue is None:
            return
        self._last = n
        self._put((self.name, n))

    def _put(self, item: tuple[str, int]) -> None:
        if self.queue is None:
            return
        try:
            self.queue.put_nowait(item)
        except Exception as exc:  # noqa: BLE001 - a full or lost queue only costs the display
            log.debug("progress not reported (%s)", exc)


class RemoteProgress:
    """A :class:`Progress` on the driver fed by :class:`Reporter`s in Ray workers (the sum of each reporter's
    latest count). A context manager: the queue actor lives while the block runs."""

    def __init__(self, what: str, total: int | None, unit: str, *, poll_s: float = 0.5) -> None:
        self.progress = Progress(what, total, unit)
        self.poll_s, self.counts = poll_s, {}
        self.queue = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True, name=f"progress-{what}")

    def reporter(self, name: str = "0") -> Reporter:
        return Reporter(self.queue, name)

    def __enter__(self) -> RemoteProgress:
        try:
            from ray.util.queue import Queue

            self.queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
        except Exception as exc:  # noqa: BLE001 - no queue: the work runs without a bar
            log.warning("no progress display for %s (%s)", self.progress.what, exc)
        else:
            self._thread.start()
        return self

    def _take(self) -> bool:
        from ray.util.queue import Empty

        try:
            items = self.queue.get_nowait_batch(self.queue.qsize()) if self.queue.qsize() else []
        except Empty:
            items = []
        for name, n in items:
            if name == _RESUMED:
                self.counts.clear()
                self.progress.rebase(n)
            else:
                self.counts[name] = max(n, self.counts.get(name, 0))
        if self.counts:
            self.progress.advance_to(sum(self.counts.values()))
        return bool(items)

    def _drain(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._take()
            except Exception as exc:  # noqa: BLE001 - the queue actor is gone (cluster lost): stop displaying
                log.debug("progress queue lost: %s", exc)
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        with contextlib.suppress(Exception):
            self._take()
        self.progress.close()
        if self.queue is not None:
            with contextlib.suppress(Exception):
                self.queue.shutdown()
