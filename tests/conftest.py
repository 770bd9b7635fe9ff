"""Shared test set-up: offline environment, one local Ray and one Prefect harness per session, a small toy world."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

import pytest

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}.items():
    os.environ.setdefault(_key, _value)
os.environ.pop("RAY_ADDRESS", None)
# Flows record their outputs in the registry: the test session gets its own embedded store, never the project's.
os.environ.pop("MLFLOW_TRACKING_URI", None)
_REGISTRY_DIR = os.environ["ALCM_REGISTRY_DIR"] = tempfile.mkdtemp(prefix="alcm-test-registry-")


def pytest_unconfigure(config) -> None:
    """The session's registry goes with the session."""
    shutil.rmtree(_REGISTRY_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A running ``mlflow server`` over HTTP (SQLite backend, artifacts served by the server, ``--allowed-hosts``
    as ``infra/services/mlflow.yaml`` starts it): its tracking URI. Each test module that uses it registers under
    its own names."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    root = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = Path(sys.executable).parent / "mlflow"
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
         str(root / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
