"""The same entry point submitted as a Ray job (JobSubmissionClient) to a head node started by the test."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def head_node(tmp_path, monkeypatch):
    """A Ray head node with the Jobs API on 127.0.0.1, token authentication on (Ray's default)."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    ray_bin = Path(sys.executable).parent / "ray"
    gcs, dash, client, agent = free_port(), free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1",
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--disable-usage-stats",
        ],
        stdout=(tmp_path / "head.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                break
        except urllib.error.HTTPError:
            break  # the dashboard answers (401 when Ray's token authentication is on): it is up
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"Ray head did not start:\n{(tmp_path / 'head.log').read_text()[-3000:]}")
        time.sleep(1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_curation_entry_point_runs_as_a_submitted_ray_job(head_node, toy_images, tmp_path):
    from pipelines import runtime
    from pipelines.config import load_config

    src, labels = toy_images
    out = tmp_path / "submitted"
    cfg = load_config("toy", ["curate_images.scorer_actors=1"])
    job = runtime.submit(
        "curate_images", ["--input", str(src / "wds"), "--output", str(out)], cfg, address=head_node, timeout_s=600
    )
    assert job.status == "SUCCEEDED"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["input"] == len(labels)
    # The job ran with the config the caller resolved (carried in ALCM_CONFIG), not the profile on disk.
    assert manifest["config"]["curate_images"]["scorer_actors"] == 1
