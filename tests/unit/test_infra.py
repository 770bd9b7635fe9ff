"""The scale-out manifests under infra/: every file parses, and the fields the operators require are there and
agree with the project (Ray version, entry points, the image, volumes, secrets, the Prefect work-pool template)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from pipelines.config import load_config

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
YAMLS = sorted(INFRA.rglob("*.yaml"))
SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH|TOKEN|KEY|DB_URL", re.I)
JOB_OPTIONS = {"--input", "--output", "--config", "--set", "--overwrite"}


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in YAMLS for d in docs(p)]


def pod_specs(doc: dict) -> list[dict]:
    """Every pod spec a manifest defines (Deployments, StatefulSets, RayCluster/RayJob groups)."""
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "StatefulSet"):
        return [spec["template"]["spec"]]
    cluster = spec.get("rayClusterSpec", spec) if doc["kind"] in ("RayCluster", "RayJob") else None
    if not cluster or "headGroupSpec" not in cluster:
        return []
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


def test_every_manifest_parses_and_names_its_kind():
    assert len(YAMLS) >= 6
    for path, doc in all_docs():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), path
        assert doc["metadata"].get("name"), path
    json.loads((INFRA / "prefect" / "k8s-work-pool.json").read_text())


def test_ray_manifests_match_the_installed_ray_and_declare_resources_per_group():
    ray_docs = [(p, d) for p, d in all_docs() if d["apiVersion"] == "ray.io/v1"]
    assert {d["kind"] for _, d in ray_docs} == {"RayCluster", "RayJob"}
    for path, doc in ray_docs:
        cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
        if "headGroupSpec" not in cluster:
            assert doc["kind"] == "RayJob" and doc["spec"]["clusterSelector"]["ray.io/cluster"] == "animatelcm", path
            continue
        assert cluster["rayVersion"] == ray.__version__, path
        assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
        for group in cluster["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], (path, group["groupName"])
            (container,) = group["template"]["spec"]["containers"]
            limits = container["resources"]["limits"]
            assert container["resources"]["requests"] == limits, (path, group["groupName"])
            params = group["rayStartParams"]
            gpus = int(params.get("num-gpus", "0"))
            assert int(limits.get("nvidia.com/gpu", "0")) == gpus, (path, group["groupName"])
            custom = json.loads(json.loads(params["resources"]))  # KubeRay's quoted JSON string
            assert custom == ({"gpu_node": 1} if gpus else {"cpu_node": 1}), (path, group["groupName"])
    groups = {g["groupName"] for _, d in ray_docs if d["kind"] == "RayCluster" for g in d["spec"]["workerGroupSpecs"]}
    assert groups == {"cpu-curation", "gpu-train", "gpu-caption"}


def test_ray_jobs_run_the_same_entry_points_as_local_runs():
    for path, doc in all_docs():
        if doc["kind"] != "RayJob":
            continue
        args = shlex.split(doc["spec"]["entrypoint"])
        assert args[:2] == ["python", "-m"] and args[2].startswith("pipelines."), path
        module = ROOT / (args[2].replace(".", "/") + ".py")
        source = module.read_text()
        assert "def main(" in source and "job_main(" in source, module
        for flag in (a for a in args[3:] if a.startswith("--")):
            assert flag in JOB_OPTIONS or f'"{flag[2:].replace("-", "_")}"' in source, (path, flag)
        assert args[args.index("--config") + 1] == "sd15"
        for path_arg in (args[i + 1] for i, a in enumerate(args) if a in ("--input", "--output", "--stage1")):
            assert path_arg.startswith("/data/"), (path, path_arg)


def test_every_pod_runs_the_one_image_mounts_what_it_declares_and_reads_secrets_from_secrets():
    images = set()
    for path, doc in all_docs():
        for spec in pod_specs(doc):
            declared = {v["name"] for v in spec.get("volumes", [])}
            claims = {v["metadata"]["name"] for v in doc["spec"].get("volumeClaimTemplates", [])}
            for c in spec["containers"]:
                if c["image"].startswith("registry.example.com/animatelcm-platform"):
                    images.add(c["image"])
                assert c.get("resources", {}).get("limits"), (path, c["name"])
                for m in c.get("volumeMounts", []):
                    assert m["name"] in declared | claims, (path, c["name"], m["name"])
                for env in c.get("env", []):
                    if SECRET_NAME.search(env["name"]):
                        assert "valueFrom" in env and "secretKeyRef" in env["valueFrom"], (path, env["name"])
    assert len(images) == 1


def test_the_prefect_work_pool_template_fills_every_placeholder_and_drives_the_cluster():
    template = json.loads((INFRA / "prefect" / "k8s-work-pool.json").read_text())
    placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    properties = template["variables"]["properties"]
    assert placeholders <= set(properties), placeholders - set(properties)
    manifest = template["job_configuration"]["job_manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    env = properties["env"]["default"]
    assert env["RAY_ADDRESS"].endswith(":8265") and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    cluster = next(d for _, d in all_docs() if d["kind"] == "RayCluster")
    assert (
        properties["image"]["default"] == cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert env["RAY_ADDRESS"].split("//")[1].split(":")[0] == f"{cluster['metadata']['name']}-head-svc"


def test_the_image_installs_what_the_makefile_installs_and_every_package():
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert dockerfile.startswith("#") and "FROM nvidia/cuda:" in dockerfile
    for pin in ("torch==2.14.1 torchvision==0.29.1", "salesforce-lavis==1.0.2"):
        assert pin in dockerfile and pin in makefile
    packages = re.search(r"include = \[(.*?)\]", (ROOT / "pyproject.toml").read_text()).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):
        assert f"COPY {package} {package}" in dockerfile, package
    assert "COPY configs configs" in dockerfile


@pytest.mark.parametrize(
    "field", ["data_dir", "teacher.pretrained_dir", "distill_video.motion_adapter_dir", "evaluate.i3d_path"]
)
def test_the_sd15_profile_paths_live_on_the_mounted_volumes(field):
    value = load_config("sd15")
    for part in field.split("."):
        value = getattr(value, part)
    assert value.startswith(("/data/", "/models/")), (field, value)
