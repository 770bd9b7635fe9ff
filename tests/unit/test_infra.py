"""The scale-out manifests under infra/: every file parses, every Kubernetes object is valid for the Kubernetes API
and the pinned KubeRay CRDs, and the fields the operators require are there and agree with the project (Ray
version, entry points, the image, volumes, secrets, Ray token authentication, the Prefect work-pool template)."""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml
from prefect.utilities.templating import apply_values

from pipelines.config import load_config

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
# KubeRay's CustomResourceDefinitions, pinned as data to validate against: not manifests of the project.
CRDS = INFRA / "kuberay" / "crds"
YAMLS = sorted(p for p in INFRA.rglob("*.yaml") if CRDS not in p.parents)
WORK_POOL = INFRA / "prefect" / "k8s-work-pool.json"
KUBERNETES_VERSION = "1.37"  # the newest schemas kubernetes-validate ships
SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH_STRING|TOKEN|KEY|DB_URL|USERNAME", re.I)
# Names that match SECRET_NAME but hold where a credential is (a Secret's name and key), not the credential.
SECRET_LOCATIONS = {f"PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_{x}" for x in ("NAME", "KEY")}
JOB_OPTIONS = {"--input", "--output", "--config", "--set", "--overwrite"}
# What prefect-kubernetes' worker refuses a template without (its own base template has them in the pod spec),
# and the API server drops from a pod spec with a warning.
PREFECT_POD_FIELDS = {"parallelism": 1, "completions": 1}


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in YAMLS for d in docs(p)]


def flow_run_job() -> dict:
    """The Job prefect-kubernetes' worker creates for a flow run from the work-pool template: the placeholders
    filled with the variables' defaults (example values where a variable has none, as Prefect fills them), the
    ``env`` variable put before the manifest's own variables (which it overrides by name) and the command split
    into arguments."""
    template = json.loads(WORK_POOL.read_text())
    values = {name: v["default"] for name, v in template["variables"]["properties"].items() if "default" in v}
    values |= {"name": "promote-checkpoint-abc12", "command": "prefect flow-run execute",
               "labels": {"prefect.io/flow-name": "promote-checkpoint"}}  # fmt: skip
    job = apply_values(template["job_configuration"], values)["job_manifest"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    own = [e for e in container["env"] if e["name"] not in values["env"]]
    container["env"] = [{"name": k, "value": v} for k, v in values["env"].items()] + own
    container["args"] = shlex.split(container["args"])
    return job


def objects() -> list[tuple[Path, dict]]:
    """Every Kubernetes object the platform creates: the manifests' documents and a flow run's Job."""
    return all_docs() + [(WORK_POOL, flow_run_job())]


def pod_templates(doc: dict) -> list[dict]:
    """Every pod template a manifest defines (Deployments, StatefulSets, Jobs, RayCluster/RayJob groups)."""
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        return [spec["template"]]
    cluster = spec.get("rayClusterSpec", spec) if doc["kind"] in ("RayCluster", "RayJob") else None
    if not cluster or "headGroupSpec" not in cluster:
        return []
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]


def pod_specs(doc: dict) -> list[dict]:
    return [t["spec"] for t in pod_templates(doc)]


def closed(schema: dict) -> dict:
    """``schema`` with unknown fields refused wherever it lists the fields. KubeRay's CRD schemas leave objects
    open (the API server prunes unknown fields of a custom resource), but `kubectl apply` asks the server for
    strict field validation, which refuses them: a misspelled field must fail here as it fails there."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {name: closed(s) for name, s in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out[key] = closed(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [closed(s) for s in schema[key]]
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    """A validator for ``kind`` (RayCluster, RayJob): the ray.io/v1 schema of the pinned KubeRay CRD, closed."""
    crd = yaml.load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=yaml.CSafeLoader)  # 1-2 MB each
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(closed(version["schema"]["openAPIV3Schema"]))


def kubernetes_errors(obj: dict) -> list[str]:
    """Why the Kubernetes API (its published schemas, strict: no unknown fields) would refuse ``obj``, if it would."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [e.message]
    return []


def describe(path: Path, doc: dict) -> str:
    meta = doc["metadata"]
    return f"{path.relative_to(ROOT)}: {doc['kind']} {meta.get('name') or meta.get('generateName')}"


def test_every_manifest_parses_and_names_its_kind():
    assert len(YAMLS) >= 6
    for path, doc in all_docs():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), path
        assert doc["metadata"].get("name"), path
    json.loads((INFRA / "prefect" / "k8s-work-pool.json").read_text())


def test_every_kubernetes_object_would_pass_the_api_servers_strict_validation():
    failures, kinds = [], set()
    for path, doc in objects():
        if doc["apiVersion"] == "ray.io/v1":
            # Their pod templates are plain Kubernetes pod templates, checked against Kubernetes' own schema here
            # (the CRDs carry a copy); the rest of them against the CRDs in the next test.
            candidates = [{"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"template-{i}"},
                           "template": t} for i, t in enumerate(pod_templates(doc))]  # fmt: skip
        elif path == WORK_POOL:
            candidates = [copy.deepcopy(doc)]
            pod = candidates[0]["spec"]["template"]["spec"]
            assert {f: pod.pop(f) for f in PREFECT_POD_FIELDS} == PREFECT_POD_FIELDS
        else:
            candidates = [doc]
        for obj in candidates:
            kinds.add(obj["kind"])
            failures += [f"{describe(path, doc)}: {error}" for error in kubernetes_errors(obj)]
    assert not failures, "\n".join(failures)
    assert kinds >= {"Namespace", "ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim", "Deployment",
                     "StatefulSet", "Service", "ConfigMap", "Ingress", "Job", "PodTemplate"}  # fmt: skip


def test_every_ray_resource_is_valid_for_the_pinned_kuberay_crds():
    failures = []
    for path, doc in all_docs():
        if doc["apiVersion"] != "ray.io/v1":
            continue
        for error in sorted(crd_validator(doc["kind"]).iter_errors(doc), key=lambda e: e.json_path):
            failures.append(f"{describe(path, doc)}: {error.json_path}: {error.message}")
    assert not failures, "\n".join(failures)


def test_the_schema_checks_refuse_a_misspelled_field():
    deployment = next(d for _, d in all_docs() if d["kind"] == "Deployment")
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "IfNotPresent"
    assert "imagePullPolcy" in kubernetes_errors(bad)[0]
    cluster = next(d for _, d in all_docs() if d["kind"] == "RayCluster")
    bad = copy.deepcopy(cluster)
    bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = 4
    assert ["maxReplica" in e.message for e in crd_validator("RayCluster").iter_errors(bad)] == [True]


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
    for path, doc in objects():
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
                    if SECRET_NAME.search(env["name"]) and env["name"] not in SECRET_LOCATIONS:
                        assert "valueFrom" in env and "secretKeyRef" in env["valueFrom"], (path, env["name"])
    assert len(images) == 1


def test_every_claim_and_service_account_a_pod_uses_is_declared_in_the_base_manifest():
    base = {(d["kind"], d["metadata"]["name"]) for d in docs(INFRA / "k8s" / "base.yaml")}
    for path, doc in objects():
        for spec in pod_specs(doc):
            for volume in spec.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    claim = volume["persistentVolumeClaim"]["claimName"]
                    assert ("PersistentVolumeClaim", claim) in base, (path, claim)
            if "serviceAccountName" in spec:
                assert ("ServiceAccount", spec["serviceAccountName"]) in base, (path, spec["serviceAccountName"])


def test_ray_token_authentication_is_on_for_every_ray_node_and_every_flow_run():
    tokens = set()
    for path, doc in objects():
        if doc["apiVersion"] == "ray.io/v1":
            cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
            if "headGroupSpec" not in cluster:
                continue  # a RayJob on the long-lived cluster: that cluster's settings apply
            # authOptions: the operator hands the token to the containers it adds and uses it itself.
            assert cluster["authOptions"]["mode"] == "token", path
            tokens.add((cluster["authOptions"]["secretName"], "auth_token"))
            assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", path
        elif doc["kind"] != "Job":
            continue
        for spec in pod_specs(doc):
            for c in spec["containers"]:
                env = {e["name"]: e for e in c["env"]}
                assert env["RAY_AUTH_MODE"]["value"] == "token", (path, c["name"])
                ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
                tokens.add((ref["name"], ref["key"]))
    assert tokens == {("animatelcm-ray-auth", "auth_token")}  # one token everywhere, under the key KubeRay reads


def test_the_registry_server_requires_a_user_lets_people_only_read_and_answers_every_in_cluster_name():
    mlflow = {d["kind"]: d for d in docs(INFRA / "services" / "mlflow.yaml")}
    args = shlex.split(mlflow["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"][0])
    assert args[args.index("--app-name") + 1] == "basic-auth"
    hosts = set(args[args.index("--allowed-hosts") + 1].split(","))
    assert hosts >= {"mlflow", "mlflow:5000", "mlflow.animatelcm", "mlflow.animatelcm:5000",
                     "mlflow.animatelcm.svc.cluster.local:5000", "localhost:5000"}  # fmt: skip
    assert "default_permission = READ" in mlflow["ConfigMap"]["data"]["basic_auth.ini"].splitlines()


def test_the_prefect_work_pool_template_fills_every_placeholder_and_drives_the_cluster():
    template = json.loads(WORK_POOL.read_text())
    placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    properties = template["variables"]["properties"]
    assert placeholders <= set(properties), placeholders - set(properties)
    manifest = flow_run_job()
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    env = {e["name"]: e.get("value") for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RAY_ADDRESS"].endswith(":8265") and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(env)  # the registry user of the gate
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
    mlflow_pin = re.search(r'"mlflow(==[^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"mlflow[auth]{mlflow_pin}" in dockerfile  # the registry server's basic-auth app needs the extra
    assert re.search(r"prefect-kubernetes==\d", dockerfile)  # the Kubernetes worker
    assert 'RUN test -n "$ALCM_CODE_VERSION"' in dockerfile and "ENV ALCM_CODE_VERSION=$ALCM_CODE_VERSION" in dockerfile


@pytest.mark.parametrize(
    "field", ["data_dir", "teacher.pretrained_dir", "distill_video.motion_adapter_dir", "evaluate.i3d_path"]
)
def test_the_sd15_profile_paths_live_on_the_mounted_volumes(field):
    value = load_config("sd15")
    for part in field.split("."):
        value = getattr(value, part)
    assert value.startswith(("/data/", "/models/")), (field, value)
