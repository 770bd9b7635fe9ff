"""An MLflow server that is down when a flow records its output: the record task fails on the connection, is
retried as infrastructure, and its next attempt (a new client, no dead connection reused) registers the output once
the server is back; registering it again returns the same version. A real ``mlflow server`` over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from contracts.manifest import write_manifest

pytestmark = pytest.mark.timeout(300)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_recording_while_the_mlflow_server_is_down_is_retried_until_it_is_back(prefect_harness, tmp_path,
                                                                                monkeypatch):  # fmt: skip
    from prefect import flow

    from flows.record import record_output
    from registry.store import Registry

    out = tmp_path / "dataset"
    out.mkdir()
    write_manifest(out, {"name": "t-outage", "digest": "sha256:" + "9" * 64, "kind": "image-text-dataset",
                         "counts": {"input": 1, "by_decision": {"kept": 1}}})  # fmt: skip
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries would hide the outage
    mlflow = Path(sys.executable).parent / "mlflow"
    server: list[subprocess.Popen] = []

    def start_later():  # the server comes back a few seconds after the first attempt failed
        time.sleep(3)
        server.append(subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
             "--artifacts-destination", str(tmp_path / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", "--allowed-hosts", f"127.0.0.1:{port}"],
            stdout=(tmp_path / "server.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip

    @flow
    def record(path: str) -> str:
        return record_output.with_options(retries=20, retry_delay_seconds=2)(path)

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        state = record(str(out), return_state=True)
        starter.join()
        ref = state.result()
        assert ref == "t-outage@1"
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
                any_=[state.state_details.flow_run_id])))  # fmt: skip
        (task_run,) = runs
        assert task_run.run_count >= 2  # it failed on the connection and was retried
        assert Registry(url).register(out).ref == ref  # idempotent
    finally:
        starter.join()
        for proc in server:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
