"""A LAVIS worker that hangs or dies mid-request: killed, restarted, the batch sent once more; a second failure is a
clean error. Driven through the real client (process, pipes, framing) against a scripted stand-in worker, so the
faults are exact; the real LAVIS worker's own death is in tests/integration/test_lavis_backend.py."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import models.captioner_lavis as cl
from models.captioner_config import CaptionerConfig, LavisConfig

ZOO = Path(__file__).resolve().parents[2] / "toyworld" / "zoo" / "captioner"

# Speaks the worker protocol (models/lavis_worker.py). Each generate request takes the next behaviour from the plan
# file, which survives restarts: "ok" answers, "hang" never answers, "die" exits at once, "error" replies an error.
WORKER = r'''
import json, os, struct, sys, time
H = struct.Struct(">I")
out, inp = os.fdopen(os.dup(1), "wb", buffering=0), sys.stdin.buffer
def read(n):
    data = inp.read(n)
    if len(data) < n:
        sys.exit(0)
    return data
def receive():
    (n,) = H.unpack(read(H.size))
    header = json.loads(read(n))
    for b in header.get("blobs", []):
        size = 1
        for s in b["shape"]:
            size *= s
        read(size * int(b["dtype"][-1]))
    return header
def send(header):
    body = json.dumps({**header, "blobs": []}).encode()
    out.write(H.pack(len(body)) + body)
plan = sys.argv[1]
receive()
send({"ok": True, "op": "ready", "bos_token_id": 29, "sep_token_id": 3, "pad_token_id": 0, "pid": os.getpid()})
while True:
    header = receive()
    if header["op"] == "shutdown":
        send({"ok": True, "op": "shutdown"}); sys.exit(0)
    steps = json.load(open(plan))
    step, rest = steps[0], steps[1:]
    json.dump(rest, open(plan, "w"))
    if step == "hang":
        time.sleep(3600)
    if step == "die":
        os._exit(3)
    if step == "error":
        send({"ok": False, "error": "bad image", "error_type": "ValueError"}); continue
    n = len(header.get("blobs", []))
    send({"ok": True, "op": header["op"], "captions": [f"caption {os.getpid()}"] * n})
'''


@pytest.fixture
def worker(tmp_path, monkeypatch):
    """A captioner whose worker follows ``plan`` (a list of behaviours); returns (captioner factory, plan file)."""
    script, plan = tmp_path / "worker.py", tmp_path / "plan.json"
    script.write_text(WORKER)
    launcher = tmp_path / "python"  # the configured "LAVIS python": runs the stand-in with the plan file
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} {script} {plan}\n")
    launcher.chmod(0o755)
    monkeypatch.setattr(cl, "WORKER_SCRIPT", script)
    made = []

    def make(steps: list[str], timeout: float = 2.0) -> cl.LavisCaptioner:
        plan.write_text(json.dumps(steps))
        cfg = CaptionerConfig(backend="lavis", weights=str(ZOO), batch_size=4,
                              lavis=LavisConfig(python_path=str(launcher), checkpoint_path=str(ZOO / "config.json"),
                                                request_timeout_s=timeout))  # fmt: skip
        made.append(cl.LavisCaptioner(cfg))
        return made[-1]

    yield make
    for c in made:
        c.close()


def images(n: int) -> list[np.ndarray]:
    return [np.zeros((8, 8, 3), np.uint8)] * n


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["hang", "die"])
def test_a_hung_or_dead_worker_is_restarted_and_the_batch_retried_once(worker, fault):
    captioner = worker([fault, "ok", "ok"])
    first_pid = captioner._proc.pid
    t = time.monotonic()
    captions = captioner.generate(images(3))
    assert len(captions) == 3 and captioner.restarts == 1
    new_pid = captioner._proc.pid
    assert new_pid != first_pid and captions == [f"caption {new_pid}"] * 3  # answered by the new worker
    if fault == "hang":
        assert time.monotonic() - t >= 2.0  # it waited the configured timeout, no longer than needed to restart
    assert captioner.generate(images(1)) == [f"caption {new_pid}"]  # and it keeps serving


@pytest.mark.timeout(60)
def test_a_second_failure_is_a_clean_error_naming_the_timeout_key(worker):
    captioner = worker(["hang", "hang"], timeout=1.0)
    with pytest.raises(cl.LavisWorkerError, match=r"failed 'generate' twice.*captioner\.lavis\.request_timeout_s"):
        captioner.generate(images(2))
    assert captioner.restarts == 1 and captioner._proc.poll() is not None  # the hung worker was killed, not left


@pytest.mark.timeout(60)
def test_an_error_reply_is_not_retried(worker):
    captioner = worker(["error", "ok"])
    pid = captioner._proc.pid
    with pytest.raises(cl.LavisWorkerError, match="bad image"):
        captioner.generate(images(1))
    assert captioner.restarts == 0 and captioner._proc.pid == pid
    assert captioner.generate(images(1)) == [f"caption {pid}"]
