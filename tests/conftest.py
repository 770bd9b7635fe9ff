"""Shared test set-up: offline environment, one local Ray and one Prefect harness per session, a small toy world."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading

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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_or_fail(url: str, proc, name: str, log_file, timeout: float) -> None:
    """Wait until ``url`` answers (:func:`flows.serve.wait_healthy`); fail the fixture with the server's log if not."""
    from flows.serve import wait_healthy

    try:
        wait_healthy(url, proc, name, timeout)
    except (RuntimeError, TimeoutError) as exc:
        proc.kill()
        pytest.fail(f"{name} did not start ({exc}):\n{log_file.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A running ``mlflow server`` over HTTP (SQLite backend, artifacts served by the server, ``--allowed-hosts``
    as ``infra/services/mlflow.yaml`` starts it) for one test module: its tracking URI. Tests of a module that
    uses it register under their own names."""
    import subprocess
    import sys
    from pathlib import Path

    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
         str(root / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _wait_or_fail(f"{url}/health", proc, "mlflow server", root / "server.log", 120)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """An S3-compatible object store over HTTP (moto's server mode), with the standard environment set for this
    process and its children (``AWS_ENDPOINT_URL``, dummy keys, a region): a boto3 S3 client to make buckets."""
    import subprocess
    import sys
    from pathlib import Path

    root = tmp_path_factory.mktemp("s3-server")
    port = _free_port()
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=(root / "s3.log").open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _wait_or_fail(url, proc, "moto_server", root / "s3.log", 60)
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "alcm-test-key", "AWS_SECRET_ACCESS_KEY": "alcm-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    yield boto3.client("s3")
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def _within(seconds: float, fn):
    """``fn()`` in a daemon thread: its result, or a test failure (not a hung suite) if it blocks past ``seconds``."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture
def within():
    """``within(seconds, fn)``: run ``fn`` and fail if it blocks (readers fed FIFOs and other hostile input)."""
    return _within
