"""The production topology on one machine (``make stack``: Postgres, an S3 object store, the MLflow server, a Ray
head and worker, the Prefect server with a process work pool and its worker), and a deployment run on it the way the
UI starts one: through the Prefect API, raw data and outputs on the object store, the job submitted to the Ray
cluster with its log in the Prefect run, the version recorded on the MLflow server over HTTP, and a cancel that
stops the Ray job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "infra" / "local" / "stack.py"

#: Runs in a client process with the stack's environment: trigger a deployment run through the Prefect API, wait
#: for it to end (or, with CANCEL, cancel it once its Ray job runs) and print what the run left as JSON. Arguments:
#: the deployment, its params (JSON), a string naming the Ray job to follow (in its entrypoint), wait or cancel.
CLIENT = r'''
import asyncio, json, os, sys, time
from prefect import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.deployments import run_deployment
from prefect.states import Cancelling
from ray.job_submission import JobSubmissionClient

deployment, params, match, cancel = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4] == "cancel"
run = run_deployment(deployment, parameters={"params": params}, timeout=0)
jobs = JobSubmissionClient(os.environ["RAY_ADDRESS"])

def job_of(status=None):
    return next((j for j in jobs.list_jobs() if match in j.entrypoint
                 and (status is None or str(j.status.value) == status)), None)

async def follow():
    async with get_client() as client:
        deadline = time.monotonic() + 1200
        if cancel:
            while job_of("RUNNING") is None:
                assert time.monotonic() < deadline, "the Ray job never ran"
                await asyncio.sleep(0.5)
            await client.set_flow_run_state(run.id, Cancelling())
        while not (state := (await client.read_flow_run(run.id)).state).is_final():
            assert time.monotonic() < deadline, "the flow run never ended"
            await asyncio.sleep(1)
        job = job_of()
        while job is not None and str(job.status.value) not in ("SUCCEEDED", "FAILED", "STOPPED"):
            assert time.monotonic() < deadline, "the Ray job never ended"
            await asyncio.sleep(1)
            job = job_of()
        logs, page = [], None
        while page is None or len(page) == 200:  # the API returns at most 200 lines a call
            page = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                                          limit=200, offset=len(logs))
            logs += page
        artifacts = await client.read_artifacts()
        return {"state": state.type.value, "logs": [entry.message for entry in logs],
                "job": job and {"id": job.submission_id, "status": str(job.status.value)},
                "links": [a.data for a in artifacts if a.key and a.key.startswith(("ray-job-", "mlflow-"))]}

print(json.dumps(asyncio.run(follow())))
'''


@pytest.fixture(scope="module")
def stack(tmp_path_factory, toy_images):
    """The stack, up on free ports for this module, with the toy shards under ``s3://alcm-data/raw/images``; its
    client environment."""
    home = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_", "MLFLOW_", "PREFECT_", "ALCM_"))}
    up = subprocess.run([sys.executable, str(STACK), "up", "--dir", str(home), "--ports", "auto"], env=env,
                        capture_output=True, text=True, timeout=600)  # fmt: skip
    if up.returncode != 0:
        pytest.fail(f"make stack failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
    client = {**env, **json.loads((home / "stack.json").read_text())["env"], "PREFECT_HOME": str(home / "client")}
    import boto3

    s3 = boto3.client("s3", endpoint_url=client["AWS_ENDPOINT_URL"], aws_access_key_id=client["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=client["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")  # fmt: skip
    for f in sorted((toy_images[0] / "parquet").glob("*.parquet")):
        s3.upload_file(str(f), "alcm-data", f"raw/images/{f.name}")
    yield client
    down = subprocess.run([sys.executable, str(STACK), "down", "--dir", str(home), "--purge"], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert down.returncode == 0, down.stderr
    # Exactly what it started is stopped: nothing of this stack still listens.
    assert "stopped postgres" in down.stdout and "stopped ray-head" in down.stdout


def client_run(stack: dict, output: str, mode: str, *, deployment: str = "curate-images/platform",
               params: dict | None = None, match: str | None = None) -> dict:  # fmt: skip
    """Run ``deployment`` (default: image curation of the raw shards into ``output``) through the API."""
    params = params or {"input_dir": "s3://alcm-data/raw/images", "output_dir": output, "profile": "toy",
                        "overrides": ["curate_images.scorer_actors=1"]}  # fmt: skip
    run = subprocess.run([sys.executable, "-c", CLIENT, deployment, json.dumps(params), match or output, mode],
                         env=stack, capture_output=True, text=True, timeout=1500, cwd=ROOT)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def read_in(stack: dict, code: str):
    """Evaluate ``code`` (an expression over ``storage``, ``read_manifest``, ``Registry``) in a process with the
    stack's environment (the object store's endpoint, the MLflow server's URI)."""
    script = ("import json\nfrom contracts import storage\nfrom contracts.manifest import read_manifest\n"
              f"from registry.store import Registry\nprint(json.dumps({code}, default=str))")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", script], env=stack, capture_output=True, text=True, timeout=300,
                         cwd=ROOT)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_deployment_run_through_the_api_uses_every_service_of_the_stack(stack, toy_images):
    _, labels = toy_images
    out = "s3://alcm-data/curated/stack-v1"
    result = client_run(stack, out, "wait")
    assert result["state"] == "COMPLETED", result["logs"][-20:]
    # The flow run submitted its job to the cluster (no --submit: the cluster is configured) and the job's own log
    # lines, streamed while it ran, are in the Prefect run's log.
    job = result["job"]
    assert job["status"] == "SUCCEEDED" and job["id"].startswith("alcm-curate-images-")
    streamed = [line for line in result["logs"] if line.startswith(f"[{job['id']}] ")]
    assert any(f"manifest: {out}/manifest.json" in line for line in streamed), result["logs"][-20:]
    assert any(job["id"] in link for link in result["links"])
    # The output is on the object store, committed, every row accounted for.
    manifest = read_in(stack, f"read_manifest({out!r})")
    assert manifest["counts"]["input"] == len(labels) == sum(manifest["counts"]["by_decision"].values())
    # Recorded on the MLflow server over HTTP, with the object-store URI as the version's source.
    entries = read_in(stack, "[(e.ref, e.location, e.digest) for e in Registry().list()]")
    assert entries == [["toy-curated-images@1", out, manifest["digest"]]]
    source = read_in(stack, "Registry()._client.get_model_version('toy-curated-images', '1').source")
    assert stack["MLFLOW_TRACKING_URI"].startswith("http://") and source == out
    # The run links its MLflow version's page on the server.
    page = f"{stack['MLFLOW_TRACKING_URI']}/#/models/toy-curated-images/versions/1"
    assert any(page in link for link in result["links"]), result["links"]


def test_cancelling_a_run_through_the_api_stops_its_ray_job(stack):
    out = "s3://alcm-data/curated/stack-cancelled"
    result = client_run(stack, out, "cancel")
    assert result["state"] in ("CANCELLED", "CRASHED")
    assert result["job"]["status"] == "STOPPED"
    assert any(f"stopped Ray job {result['job']['id']}" in line for line in result["logs"]), result["logs"][-20:]
    assert read_in(stack, f"storage.exists({out + '/manifest.json'!r})") is False


def test_the_retrain_deployment_trains_on_object_storage_with_worker_progress_in_the_prefect_log(stack, toy_images):
    """The retrain deployment with its work directory, raw data, latent cache and Ray Train checkpoints on the
    object store: image curation, then stage 1 trained by Ray Train workers on the cluster; the workers' progress
    lines reach the Prefect run's log while the job runs, the stage outputs are committed and linked on the store,
    and both versions are on the MLflow server with stage 1's parent."""
    work = "s3://alcm-data/work"
    params = {"images": "s3://alcm-data/raw/images", "videos": "s3://alcm-data/raw/videos",
              "dancers": "s3://alcm-data/raw/dancers", "work_dir": work, "profile": "toy",
              "stages": ["curate_images", "distill_image"], "promote": False,
              "overrides": ["curate_images.scorer_actors=1", "distill_image.train.steps=4",
                            "distill_image.train.log_every=1", "distill_image.train.checkpoint_every=2",
                            "distill_image.preview_prompts=[]", "distill_image.cache_dir=s3://alcm-data/cache",
                            "distill_image.train.storage_path=s3://alcm-data/ray-runs"]}  # fmt: skip
    result = client_run(stack, work, "wait", deployment="retrain-animatelcm/platform", params=params,
                        match="pipelines.distill_image")  # fmt: skip
    assert result["state"] == "COMPLETED", result["logs"][-30:]
    job = result["job"]
    assert job["status"] == "SUCCEEDED" and job["id"].startswith("alcm-distill-image-")
    progress = [line for line in result["logs"] if line.startswith(f"[{job['id']}] ") and "step " in line
                and " loss " in line]  # fmt: skip
    assert len(progress) >= 4, [line for line in result["logs"] if "loss" in line or "Worker" in line][-30:]
    stage1 = read_in(stack, f"read_manifest({work + '/distilled-image'!r})")
    curated = read_in(stack, f"read_manifest({work + '/curated-images'!r})")
    assert stage1["link_to"].startswith(f"{work}/runs/distill_image/") and stage1["metrics"]["step"] == 4
    assert stage1["inputs"]["dataset"]["path"] == curated["link_to"]
    assert stage1["latent_cache"]["path"].startswith("s3://alcm-data/cache/")
    assert stage1["run"]["checkpoint"].startswith("alcm-data/ray-runs/") or \
        stage1["run"]["checkpoint"].startswith("s3://alcm-data/ray-runs/")  # fmt: skip
    lora = f"{stage1['storage_root']}/lora/pytorch_lora_weights.safetensors"  # the link names the target's attempt
    assert stage1["storage_root"].startswith(f"{stage1['link_to']}/_attempts/")
    assert read_in(stack, f"storage.sha256({lora!r})") == stage1["files"]["lora/pytorch_lora_weights.safetensors"]
    (checkpoint,) = read_in(stack, "[(e.location, [p.ref for p in e.parents]) for e in Registry().list('checkpoint')]")
    # Its parent is the dataset version of that content (the first test's run curated the same rows: one version).
    datasets = read_in(stack, "{e.digest: e.ref for e in Registry().list('dataset')}")
    assert checkpoint == [stage1["link_to"], [datasets[curated["digest"]]]]
