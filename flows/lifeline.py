"""A CLI process that is killed outright takes its temporary Prefect server with it.

Without ``PREFECT_API_URL``, Prefect runs flows against a temporary server that it starts as a child process
(``uvicorn … prefect.server.api.server:create_app``) and stops at exit. A CLI process killed outright (SIGKILL, the
OOM killer, a SIGTERM that skips ``atexit``) never stops it: one was measured still serving 12 minutes after its flow
process was killed, holding 230 MB and a port. Ray's processes follow their raylet within about 90 s by themselves.

:func:`watch` starts a watcher process joined to this one by a pipe. Every half second it notes this process's
children that are a Prefect server; once the pipe reads end-of-file (this process ended, however it ended) it stops
those still running: SIGTERM, then SIGKILL after 5 s. It ignores SIGINT, SIGTERM and SIGHUP, so a Ctrl-C or a signal
to the whole process group leaves it to do its job. A server started less than half a second before the kill is
missed. Linux only (``/proc``); elsewhere :func:`watch` does nothing.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

#: What a Prefect server's command line holds (the temporary one, and ``prefect server start``'s).
SERVER_MARK = "prefect.server.api.server:create_app"
POLL_S = 0.5
GRACE_S = 5.0

_watcher: subprocess.Popen | None = None  # referenced for the life of the process: its pipe is the lifeline


def watch() -> subprocess.Popen | None:
    """Start the watcher for this process (once); None where there is no ``/proc``."""
    global _watcher
    if _watcher is None and Path("/proc/self/stat").is_file():
        _watcher = subprocess.Popen([sys.executable, "-m", "flows.lifeline", str(os.getpid())],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)  # fmt: skip
    return _watcher


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state is [0], ppid [1], start time [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _servers(parent: int) -> dict[int, str]:
    """pid → start time of ``parent``'s live children whose command line marks a Prefect server."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if not fields or fields[0] == "Z" or int(fields[1]) != parent:
            continue
        with contextlib.suppress(OSError):
            if SERVER_MARK in (entry / "cmdline").read_bytes().decode(errors="replace"):
                out[int(entry.name)] = fields[19]
    return out


def _same(pid: int, started: str) -> bool:
    """``pid`` is still the process first seen with start time ``started`` (not a reused pid) and not a zombie."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z" and fields[19] == started


def _stop(servers: dict[int, str]) -> list[int]:
    """SIGTERM every server still running, SIGKILL those alive after :data:`GRACE_S`; return the pids signalled."""
    alive = [pid for pid, started in servers.items() if _same(pid, started)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(_same(p, servers[p]) for p in alive):
        time.sleep(0.1)
    for pid in alive:
        if _same(pid, servers[pid]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return alive


def _main(parent: int) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    seen: dict[int, str] = {}
    while True:
        seen.update(_servers(parent))
        readable, _, _ = select.select([sys.stdin.fileno()], [], [], POLL_S)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            break
    stopped = _stop(seen)
    if stopped:
        print(f"lifeline: process {parent} ended; stopped its Prefect server(s) {stopped}", file=sys.stderr)


if __name__ == "__main__":
    _main(int(sys.argv[1]))
