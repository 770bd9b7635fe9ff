"""Jobs submitted through the Ray Jobs API to a cluster the test starts: a head that runs no work (``num-cpus 0``,
as in ``infra/kuberay``) and one worker node, with Ray's token authentication on (its default)."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(Jobs API URL, the worker node's id): a head node with the Jobs API on 127.0.0.1 and a worker node."""
    logs = tmp_path_factory.mktemp("ray-cluster")
    # The cluster's token, as a Kubernetes Secret gives it to the Ray pods and the flow pods (infra/): the nodes
    # started here, this process's client and the CLI below all read it from the environment.
    # Ray caches a process's token once loaded: if this session's local Ray already loaded the user's token file,
    # the cluster here uses that token too.
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = token_file.read_text().strip() if token_file.is_file() else secrets.token_hex(32)
    gcs, dash, client, agent = free_port(), free_port(), free_port(), free_port()
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
         f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}", "--num-cpus=0",
         "--include-dashboard=true", "--disable-usage-stats"],
        stdout=(logs / "head.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
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
        if head.poll() is not None or time.monotonic() > deadline:
            head.kill()
            pytest.fail(f"Ray head did not start:\n{(logs / 'head.log').read_text()[-3000:]}")
        time.sleep(1)
    worker = subprocess.Popen(
        [RAY, "start", "--block", f"--address=127.0.0.1:{gcs}", "--num-cpus=3", "--disable-usage-stats",
         f"--dashboard-agent-listen-port={free_port()}"],
        stdout=(logs / "worker.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(url)
    deadline = time.monotonic() + 120
    while len(_alive_nodes(url)) < 2:
        if worker.poll() is not None or time.monotonic() > deadline:
            _stop(head)
            pytest.fail(f"Ray worker did not join:\n{(logs / 'worker.log').read_text()[-3000:]}")
        time.sleep(1)
    yield url, jobs
    _stop(worker)
    _stop(head)
    os.environ.pop("RAY_AUTH_MODE", None)
    os.environ.pop("RAY_AUTH_TOKEN", None)


def _alive_nodes(url: str) -> list[dict]:
    from ray.util.state import list_nodes

    try:
        return [n for n in list_nodes(address=url) if n.state == "ALIVE"]
    except Exception:  # noqa: BLE001 - the state API is not up yet
        return []


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def test_a_submitted_job_streams_its_log_runs_on_a_worker_and_a_rerun_re_attaches(cluster, toy_images, tmp_path,
                                                                                caplog):  # fmt: skip
    from pipelines import runtime
    from pipelines.config import load_config

    url, jobs = cluster
    src, labels = toy_images
    out = tmp_path / "submitted"
    cfg = load_config("toy", ["curate_images.scorer_actors=1"])
    args = ["--input", str(src / "wds"), "--output", str(out)]
    seen = []
    with caplog.at_level(logging.INFO, logger="pipelines.runtime.job"):
        job = runtime.submit("curate_images", args, cfg, address=url,
                             on_submitted=lambda *a: seen.append(a))  # fmt: skip
    assert job.status == "SUCCEEDED" and not job.attached
    assert job.job_id == runtime.submission_id("curate_images", args, cfg)
    assert seen == [(job.job_id, url, False)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["input"] == len(labels)
    # The job ran with the config the caller resolved (carried in ALCM_CONFIG), not the profile on disk.
    assert manifest["config"]["curate_images"]["scorer_actors"] == 1
    # The driver's log came through logging line by line while the job ran, with the job's own final line.
    streamed = [r.getMessage() for r in caplog.records if r.name == "pipelines.runtime.job"]
    assert any("manifest:" in line and str(out) in line for line in streamed), streamed[-5:]
    assert all(line.startswith(f"[{job.job_id}] ") for line in streamed)
    # The head runs no work: the driver reserved a CPU, so it ran on the worker node.
    info = jobs.get_job_info(job.job_id)
    head = next(n for n in _alive_nodes(url) if n.is_head_node)
    assert info.driver_node_id and info.driver_node_id != head.node_id
    # The same submission again re-attaches to the finished job: no second job on the same output.
    again = runtime.submit("curate_images", args, cfg, address=url)
    assert again.attached and again.job_id == job.job_id and again.status == "SUCCEEDED"
    assert [j.submission_id for j in jobs.list_jobs() if j.submission_id.startswith(job.job_id)] == [job.job_id]


def test_a_job_past_its_stage_timeout_is_stopped(cluster, toy_images, tmp_path):
    from pipelines import runtime
    from pipelines.config import load_config

    url, jobs = cluster
    src, _ = toy_images
    cfg = load_config("toy", ["ray.job_timeout_s.curate_images=3"])
    args = ["--input", str(src / "wds"), "--output", str(tmp_path / "late")]
    with pytest.raises(runtime.JobTimedOut, match="ray.job_timeout_s"):
        runtime.submit("curate_images", args, cfg, address=url)
    job_id = runtime.submission_id("curate_images", args, cfg)
    _wait_for(lambda: str(jobs.get_job_status(job_id).value) == "STOPPED", 60, f"{job_id} to stop")
    assert not (tmp_path / "late").exists()


def test_terminating_the_submitting_process_stops_the_ray_job(cluster, toy_images, tmp_path):
    """What a cancel in the Prefect UI does to a flow run's process (the worker sends it SIGTERM)."""
    url, jobs = cluster
    src, _ = toy_images
    out = tmp_path / "cancelled"
    alcm = Path(sys.executable).parent / "alcm"
    env = {**os.environ, "RAY_ADDRESS": url}  # a configured cluster: the CLI submits without --submit
    proc = subprocess.Popen([str(alcm), "curate", "images", "--input", str(src / "wds"), "--output", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip

    def running() -> str | None:
        return next((j.submission_id for j in jobs.list_jobs() if str(out) in j.entrypoint
                     and str(j.status.value) == "RUNNING"), None)  # fmt: skip

    try:
        job_id = _wait_for(running, 120, "the CLI's job to run")
        assert job_id.startswith("alcm-curate-images-")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert f"stopped Ray job {job_id}" in output, output[-3000:]
    _wait_for(lambda: str(jobs.get_job_status(job_id).value) == "STOPPED", 60, f"{job_id} to stop")
    assert not out.exists()
