"""flows.lifeline: a killed process's Prefect server is stopped by its watcher; nothing else is touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.lifeline import SERVER_MARK

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc (Linux)")

#: A process that starts its watcher, then two sleeping children (one looks like a Prefect server), prints
#: "watcher server other" pids, and waits; "exit" on its stdin makes it end normally after its server.
PARENT = f"""
import subprocess, sys, time
from flows.lifeline import watch
w = watch()
sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
server = subprocess.Popen([*sleeper, "--factory", "{SERVER_MARK}"], **quiet)
other = subprocess.Popen(sleeper, **quiet)
print(w.pid, server.pid, other.pid, flush=True)
if sys.stdin.readline().strip() == "exit":
    server.terminate(); server.wait(); other.terminate(); other.wait()
    sys.exit(0)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _start_parent() -> tuple[subprocess.Popen, list[int]]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    pids = [int(x) for x in parent.stdout.readline().split()]
    assert len(pids) == 3, parent.stderr.read()
    time.sleep(1.5)  # the watcher has polled the children at least once
    return parent, pids


def test_a_killed_process_takes_its_server_and_only_its_server():
    parent, (watcher, server, other) = _start_parent()
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a Ctrl-C or a signal to the group: ignored
            os.kill(watcher, sig)
        parent.kill()
        parent.wait()
        assert _wait_gone(server, 10), "the server outlived its killed parent"
        assert _wait_gone(watcher, 5), "the watcher did not exit after stopping the server"
        assert _alive(other), "a child that is not a Prefect server was stopped"
        assert f"process {parent.pid} ended; stopped its Prefect server(s) [{server}]" in parent.stderr.read()
    finally:
        for pid in (server, other):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_process_that_ends_normally_leaves_its_watcher_nothing_to_do():
    parent, (watcher, server, other) = _start_parent()
    out, err = parent.communicate("exit\n", timeout=30)
    assert parent.returncode == 0, err
    assert _wait_gone(watcher, 5) and not _alive(server) and not _alive(other)
    assert "stopped its Prefect server" not in err
