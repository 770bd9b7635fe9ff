"""How flows decide to submit, what a submitted job's environment holds, and how a re-run finds an earlier job.

The end-to-end behaviour (live log, re-attach, cancel, timeout, the driver on a worker) is tested against a real
cluster in ``tests/integration/test_ray_job_submission.py``; these are the decisions on their own.
"""

from __future__ import annotations

import json

import pytest

from flows.common import submits
from pipelines import runtime
from pipelines.config import ConfigError, load_config


def test_flows_submit_by_default_exactly_when_a_jobs_api_address_is_configured(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    toy = load_config("toy")
    assert not submits(None, toy)
    assert submits(True, toy)
    assert submits(None, load_config("toy", ["ray.dashboard_address=http://head:8265"]))
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert submits(None, toy) and toy.ray.jobs_address() == "http://head:8265"
    assert not submits(False, toy)
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")  # a GCS address: the job's driver connects, nothing to submit to
    assert not submits(None, toy)


def test_the_submission_id_is_deterministic_and_differs_by_output_and_config():
    toy = load_config("toy")
    args = ["--input", "/data/raw", "--output", "/work/runs/curate_images/abc"]
    first = runtime.submission_id("curate_images", args, toy)
    assert first == runtime.submission_id("curate_images", list(args), load_config("toy"))
    assert first.startswith("alcm-curate-images-")
    assert first != runtime.submission_id("curate_images", [*args[:3], "/work/runs/curate_images/abd"], toy)
    assert first != runtime.submission_id("curate_images", args, load_config("toy", ["curate_images.scorer_actors=1"]))


class FakeJobs:
    """The Jobs API's answers for a set of existing jobs (id → status); records what is submitted."""

    def __init__(self, jobs: dict[str, str]):
        self.jobs, self.submitted = dict(jobs), []

    def get_job_info(self, job_id):
        if job_id not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")
        return type("Info", (), {"status": type("S", (), {"value": self.jobs[job_id]})()})()

    def submit_job(self, **kwargs):
        self.submitted.append(kwargs)
        self.jobs[kwargs["submission_id"]] = "PENDING"
        return kwargs["submission_id"]


@pytest.mark.parametrize(
    ("existing", "fresh", "expected"),
    [
        ({}, False, ("j", False)),
        ({"j": "RUNNING"}, False, ("j", True)),
        ({"j": "PENDING"}, True, ("j", True)),
        ({"j": "SUCCEEDED"}, False, ("j", True)),
        ({"j": "SUCCEEDED"}, True, ("j-2", False)),
        ({"j": "FAILED"}, False, ("j-2", False)),
        ({"j": "FAILED", "j-2": "STOPPED", "j-3": "RUNNING"}, False, ("j-3", True)),
    ],
)
def test_a_rerun_attaches_to_a_live_or_reusable_job_and_otherwise_starts_the_next_attempt(existing, fresh, expected):
    jobs = FakeJobs(existing)
    cfg = load_config("toy", ["ray.driver_num_cpus=2", "ray.driver_resources={cpu_node: 0.01}"])
    assert runtime._attach_or_submit(jobs, "j", "python -m pipelines.curate_images", cfg, fresh=fresh) == expected
    if expected[1]:
        assert jobs.submitted == []
    else:
        (sent,) = jobs.submitted
        assert sent["submission_id"] == expected[0]
        assert sent["entrypoint_num_cpus"] == 2.0 and sent["entrypoint_resources"] == {"cpu_node": 0.01}


def test_the_job_environment_carries_the_config_and_allow_listed_variables_but_never_a_credential(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3.internal:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-long-secret-value")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    cfg = load_config("toy", ["curate_images.scorer_actors=1"])
    env = runtime.job_env(cfg)
    assert json.loads(env["ALCM_CONFIG"])["curate_images"]["scorer_actors"] == 1
    assert env["AWS_ENDPOINT_URL"] == "http://s3.internal:9000" and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "a-long-secret-value" not in json.dumps(env)
    leaky = load_config("toy", ["distill_image.train.storage_path=s3://AKIAEXAMPLE:verysecretkey@bucket/runs"])
    with pytest.raises(ValueError, match=r"config key distill_image\.train\.storage_path holds a credential"):
        runtime.job_env(leaky)


def test_a_secret_on_the_forward_list_and_a_bad_timeout_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY' holds a secret"):
        load_config("toy", ["ray.forward_env=[AWS_ENDPOINT_URL, AWS_SECRET_ACCESS_KEY]"])
    with pytest.raises(ConfigError, match=r"ray\.job_timeout_s\.curate: no such stage"):
        load_config("toy", ["ray.job_timeout_s.curate=10"])
    with pytest.raises(ConfigError, match=r"ray\.job_timeout_s\.adapt=0\.0: must be > 0"):
        load_config("toy", ["ray.job_timeout_s.adapt=0"])


def _listener():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("head_alive", [True, False], ids=["head-alive", "head-gone"])
def test_connect_reuses_a_live_ray_connection_and_drops_a_dead_one(monkeypatch, head_alive):
    """A retried stage must not reuse the connection to a head that died (the real heads: the `Ray head gone` row of
    bench/fault_matrix.py)."""
    import types

    from pipelines.data_config import RayConfig

    listener, address = _listener()
    new_head, new_address = _listener()  # the configured head, up again
    if not head_alive:
        listener.close()  # nothing listens there any more
    calls = []
    monkeypatch.setattr(runtime.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(runtime.ray, "get_runtime_context", lambda: types.SimpleNamespace(gcs_address=address))
    monkeypatch.setattr(runtime.ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(runtime.ray, "init", lambda **kw: calls.append(("init", kw.get("address"))))
    try:
        info = runtime.connect(RayConfig(address=new_address))
    finally:
        listener.close()
        new_head.close()
    if head_alive:
        assert info == {"mode": "existing", "address": address} and calls == []
    else:
        assert calls == ["shutdown", ("init", new_address)] and info["mode"] == "cluster"


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_connect_to_a_head_that_is_not_listening_fails_at_once_as_a_retryable_error(monkeypatch, scheme):
    """``ray.init`` waits minutes for a head that is down; connect probes the address first and raises a
    connection error naming it, which the flows retry as infrastructure."""
    from flows.retry import is_infrastructure_error
    from pipelines.data_config import RayConfig

    listener, address = _listener()
    listener.close()
    monkeypatch.setattr(runtime.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.ray, "init", lambda **kw: pytest.fail("ray.init called for a head that is down"))
    with pytest.raises(ConnectionError, match=f"the Ray head at {scheme}{address} .*does not accept") as err:
        runtime.connect(RayConfig(address=scheme + address))
    assert is_infrastructure_error(err.value)
