"""Deployments of every flow, served to a Prefect server: what ``alcm serve`` (``make serve``) runs.

:func:`build_deployments` makes one deployment per flow from a :class:`ServeSettings` — a raw-data root laid out
as ``alcm toy data`` writes it (:data:`RAW_LAYOUT`) and a work directory — so that every form in the UI opens filled
with working defaults:

- job flows read the retrain flow's links (``WORK/curated-images``, ``WORK/distilled-video``, …) and write new
  directories ``WORK/ui/<flow>/{run}`` (``{run}`` becomes the flow run's name, see :func:`flows.record.with_run_name`);
- training deployments (the three stages and the retrain) have a concurrency limit of 1: a second run waits; and
  every training or eval job, whichever deployment, schedule, event or CLI run starts it, holds a slot of the
  global accelerator limit ``alcm-gpu`` (``gpu_slots``, created here: ``flows.common.accelerator_slot``);
- ``retrain-animatelcm`` has an optional cron schedule (off unless ``retrain_cron`` is set) and an event trigger:
  every ``alcm.data.landed`` event (``alcm ingest``) starts it on the raw root, naming the landed shard.

:func:`serve_deployments` is the serving process (``python -m flows.serve``); :func:`run_services` is
``alcm serve``: a Prefect server on SQLite (``WORK/prefect``), the serving process and the MLflow UI on the registry,
stopped together on Ctrl-C. Safe by default:

- the API requires an auth string: the operator's (``ALCM_PREFECT_AUTH_STRING`` or ``--auth-string-file``, never the
  command line, which process listings show), or else one generated into ``WORK/prefect/auth-string`` (mode 0600).
  Only ``--insecure-no-auth``, and only on a loopback address, serves without one;
- CSRF protection is on (``PREFECT_SERVER_CSRF_PROTECTION_ENABLED``; Prefect's clients and UI fetch the token);
- everything listens on 127.0.0.1 unless ``--host`` says otherwise;
- deployment runs check their parameters (:mod:`flows.form_policy`): the served roots reach them in
  ``ALCM_FORM_ROOTS``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from contracts import storage
from pipelines.stages import BY_NAME, STAGES

#: Where each raw input lives under a raw-data root (the layout ``alcm toy data --out ROOT`` writes).
RAW_LAYOUT = {"images": "images/parquet", "videos": "videos/wds", "dancers": "dancers"}
#: The event ``alcm ingest`` emits when a shard lands; the retrain deployment's trigger expects it.
DATA_LANDED = "alcm.data.landed"
#: Deployments with a concurrency limit of 1 (they hold the cluster's accelerators): the training stages' flows and
#: the retrain flow.
TRAINING = (*(s.flow for s in STAGES if s.training), "retrain-animatelcm")
DEPLOYMENT = "platform"


@dataclass(frozen=True)
class ServeSettings:
    """What the served deployments default to."""

    data_root: str
    work_dir: str
    profile: str = "toy"
    overrides: list[str] = field(default_factory=list)
    retrain_cron: str | None = None
    """Cron schedule of the retrain deployment (e.g. ``0 3 * * *``); None: no schedule."""
    retrain_stages: list[str] | None = None
    """Stages the retrain deployment runs by default (None: all)."""
    trigger: bool = True
    """Run the retrain deployment on every ``alcm.data.landed`` event."""
    debounce_s: float = 120.0
    """Seconds a new-data run waits for more landings before retraining (``flows.retrain.debounce``): shards landing
    within it start one retrain."""
    gpu_slots: int = 1
    """Slots of the global accelerator limit (``flows.common.GPU_LIMIT``) every training and eval job holds one of,
    whichever run started it: accelerator jobs that may run at once on the cluster."""

    def raw(self, kind: str) -> str:
        return storage.join(storage.normalize(self.data_root), RAW_LAYOUT[kind])


def default_parameters(s: ServeSettings) -> dict[str, dict]:
    """Each flow's default parameters (flow name → parameters) in the served deployments: a stage's flow reads the
    raw data or the retrain flow's link to its upstream output (the stage graph's inputs) and writes
    ``WORK/ui/<flow>/{run}``."""
    work = storage.normalize(s.work_dir)
    common = {"profile": s.profile, "overrides": list(s.overrides)}

    def where(source: str) -> str:
        return s.raw(source.removeprefix("raw:")) if source.startswith("raw:") else \
            storage.join(work, BY_NAME[source].output)  # fmt: skip

    defaults = {
        stage.flow: {"params": {**common, **{i.option: where(i.source) for i in stage.inputs},
                                "output_dir": storage.join(work, "ui", stage.flow, "{run}")}}
        for stage in STAGES
    }  # fmt: skip
    retrain = {**common, "images": s.raw("images"), "videos": s.raw("videos"), "dancers": s.raw("dancers"),
               "work_dir": work}  # fmt: skip
    if s.retrain_stages:
        retrain["stages"] = list(s.retrain_stages)
    return {**defaults, "promote-checkpoint": {"params": {**common, "checkpoint": "toy-animatelcm-t2v@candidate"}},
            "retrain-animatelcm": {"params": retrain}}  # fmt: skip


def trigger_parameters(s: ServeSettings) -> dict:
    """The retrain run's parameters when data lands: the deployment's defaults, naming the event's shard."""
    params = dict(default_parameters(s)["retrain-animatelcm"]["params"])
    params["new_data"] = "{{ event.payload.kind }}: {{ event.payload.shard }}"
    params["debounce_s"] = s.debounce_s
    return {"params": params}


def build_deployments(s: ServeSettings) -> list:
    """One ``RunnerDeployment`` per flow, named ``<flow>/platform``."""
    from prefect.events import DeploymentEventTrigger

    from flows.curate import curate_images_flow
    from flows.distill import adapt_flow, distill_image_flow, distill_video_flow
    from flows.evaluate import evaluate_flow, promote_flow
    from flows.retrain import retrain_flow
    from flows.videos import curate_videos_flow, recaption_videos_flow

    flows = [curate_images_flow, curate_videos_flow, recaption_videos_flow, distill_image_flow, distill_video_flow,
             adapt_flow, evaluate_flow, promote_flow, retrain_flow]  # fmt: skip
    defaults = default_parameters(s)
    deployments = []
    for f in flows:
        kwargs: dict = {"parameters": defaults[f.name], "tags": ["alcm", s.profile]}
        if f.name in TRAINING:
            kwargs["concurrency_limit"] = 1
        if f.name == "retrain-animatelcm":
            if s.retrain_cron:
                kwargs["cron"] = s.retrain_cron
            if s.trigger:
                kwargs["triggers"] = [
                    DeploymentEventTrigger(
                        name="retrain on new data",
                        description=f"`alcm ingest` landed a raw shard under {s.data_root}",
                        expect={DATA_LANDED},
                        match={"prefect.resource.id": "alcm.raw.*"},
                        parameters=trigger_parameters(s),
                    )
                ]
        deployments.append(f.to_deployment(name=DEPLOYMENT, description=(f.description or "").strip(), **kwargs))
    return deployments


def serve_deployments(s: ServeSettings) -> None:
    """Serve every deployment from this process until interrupted (flow runs execute as its subprocesses)."""
    from prefect import serve

    from flows.common import apply_env_defaults, ensure_gpu_limit
    from flows.form_policy import served_roots

    apply_env_defaults()
    os.environ.update(served_roots(s.data_root, s.work_dir))  # inherited by the flow-run subprocesses
    ensure_gpu_limit(s.gpu_slots)
    serve(*build_deployments(s), print_starting_message=True)


# ------------------------------------------------------------------------------------------------ alcm serve


@dataclass
class Services:
    """The processes of ``alcm serve``, in start order."""

    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM in reverse start order (the serving process first, the server last); SIGKILL after ``timeout``."""
        for name, proc in reversed(self.processes):
            if proc.poll() is None:
                print(f"stopping {name} (pid {proc.pid})", flush=True)
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                except ProcessLookupError:  # it exited between the poll and the signal
                    proc.wait()


def wait_healthy(url: str, proc: subprocess.Popen, name: str, timeout: float = 120.0,
                 ok: tuple[int, ...] = (200,)) -> None:  # fmt: skip
    """Poll ``url`` until it answers with a status in ``ok``; fail naming ``name`` if its process exits or the time
    runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status in ok:
                    return
        except urllib.error.HTTPError as exc:  # an answer all the same (e.g. 401 from a server with auth on)
            if exc.code in ok:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{name} did not answer {url} within {timeout:.0f} s")


LOOPBACK = ("127.0.0.1", "localhost", "::1")
AUTH_FILE = "auth-string"
"""Under ``WORK/prefect/``: the auth string ``alcm serve`` generated when the operator gave none."""


def resolve_auth(work_dir: str | Path, given: str | None, *, insecure: bool, host: str) -> str | None:
    """The API auth string ``alcm serve`` uses: ``given`` (from the environment or a file), else one generated and
    kept in ``WORK/prefect/auth-string`` (0600, reused on the next start); None only with ``insecure``, which a
    non-loopback ``host`` refuses."""
    if insecure:
        if host not in LOOPBACK:
            raise ValueError(f"--insecure-no-auth serves without an auth string: only on a loopback address, not "
                             f"--host {host}")  # fmt: skip
        return None
    if given:
        return given
    path = Path(work_dir).resolve() / "prefect" / AUTH_FILE
    if path.is_file():
        return path.read_text().strip()
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    token = f"admin:{secrets.token_urlsafe(18)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def service_env(s: ServeSettings, port: int, auth_string: str | None, host: str = "127.0.0.1") -> dict[str, str]:
    """The environment of the server and the serving process: API URL, SQLite home, auth, CSRF, registry."""
    from flows.common import ENV_DEFAULTS

    work = Path(s.work_dir).resolve()
    env = {**ENV_DEFAULTS, **os.environ}
    client = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    env.update({
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_API_URL": f"http://{client}:{port}/api",
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": f"http://{client}:{port}/api",
        "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "true",
        "PREFECT_RUNNER_POLL_FREQUENCY": env.get("PREFECT_RUNNER_POLL_FREQUENCY", "5"),
    })  # fmt: skip
    env.setdefault("ALCM_REGISTRY_DIR", str(work / "registry"))
    for key in ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING"):
        env.pop(key, None)
    if auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
        env["PREFECT_API_AUTH_STRING"] = auth_string
    return env


def run_services(s: ServeSettings, *, port: int = 4200, mlflow_port: int | None = 5000,
                 auth_string: str | None = None, host: str = "127.0.0.1") -> int:  # fmt: skip
    """``alcm serve``: start the Prefect server, the serving process and the MLflow UI; stop them on Ctrl-C or when
    one of them exits. Returns the exit code. ``auth_string``: see :func:`resolve_auth` (None: no auth)."""
    work = Path(s.work_dir).resolve()
    (work / "prefect").mkdir(parents=True, exist_ok=True)
    env = service_env(s, port, auth_string, host)
    client = env["PREFECT_API_URL"].removesuffix("/api")
    if mlflow_port:
        env["ALCM_MLFLOW_UI_URL"] = f"http://127.0.0.1:{mlflow_port}"  # the runs' links to their versions
    bin_dir = Path(sys.executable).parent
    services = Services()

    def start(name: str, argv: list[str], log_name: str) -> subprocess.Popen:
        log = open(work / "prefect" / log_name, "ab")  # noqa: SIM115 - the child owns it until it exits
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        services.processes.append((name, proc))
        print(f"started {name} (pid {proc.pid}, log {work / 'prefect' / log_name})", flush=True)
        return proc

    interrupted = False

    def on_signal(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    # Both, explicitly: a process started in the background by a shell inherits SIGINT ignored.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server = start("prefect server", [str(bin_dir / "prefect"), "server", "start", "--host", host,
                                          "--port", str(port)], "server.log")  # fmt: skip
        wait_healthy(f"{client}/api/health", server, "prefect server")
        settings = json.dumps(asdict(s))
        served = start("deployments", [sys.executable, "-m", "flows.serve", "--settings", settings], "serve.log")
        if mlflow_port:
            registry = Path(env["ALCM_REGISTRY_DIR"]).resolve()
            registry.mkdir(parents=True, exist_ok=True)
            backend = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{registry / 'mlflow.db'}"
            mlflow = start("mlflow ui", [str(bin_dir / "mlflow"), "server", "--backend-store-uri", backend,
                                         "--default-artifact-root", (registry / "artifacts").as_uri(),
                                         "--host", "127.0.0.1", "--port", str(mlflow_port)], "mlflow.log")  # fmt: skip
        print(f"\nPrefect UI:  {client}   (API: export PREFECT_API_URL={env['PREFECT_API_URL']})")
        if auth_string:
            generated = work / "prefect" / AUTH_FILE
            where = f"the one in {generated}" if generated.is_file() and generated.read_text().strip() == \
                auth_string else "yours"  # fmt: skip
            print(f"             the API and UI require the auth string ({where}; PREFECT_API_AUTH_STRING for "
                  "clients); CSRF protection is on")  # fmt: skip
        else:
            print("             WARNING: no auth string (--insecure-no-auth): anyone who can reach this address "
                  "can run flows", flush=True)  # fmt: skip
        if mlflow_port:
            print(f"MLflow UI:   http://127.0.0.1:{mlflow_port}   (registry {env['ALCM_REGISTRY_DIR']})")
        print(f"deployments: <flow>/{DEPLOYMENT} for every flow; new data: alcm ingest PATH --kind images "
              f"--data-root {s.data_root}\nCtrl-C stops everything.", flush=True)  # fmt: skip
        watched = [("prefect server", server), ("deployments", served)]
        if mlflow_port:
            watched.append(("mlflow ui", mlflow))
        while True:
            for name, proc in watched:
                if proc.poll() is not None:
                    print(f"{name} exited with code {proc.returncode}; stopping the others", file=sys.stderr)
                    return 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        interrupted = True
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        services.stop()
        if interrupted:
            print("stopped", flush=True)


def deploy_to_pool(s: ServeSettings, pool: str, image: str | None = None, working_dir: str | None = None) -> list[str]:
    """Register the same deployments with a work pool (on a cluster: the Kubernetes pool of
    ``infra/prefect/k8s-work-pool.json``, whose jobs run the platform image; on one machine: a process pool, whose
    flow runs start in ``working_dir``, the project root holding the flows' entry points) instead of serving them;
    return their ids. The pool's workers then run the flow runs."""
    from flows.common import apply_env_defaults, ensure_gpu_limit
    from flows.form_policy import served_roots

    apply_env_defaults()
    ensure_gpu_limit(s.gpu_slots)
    ids = []
    for d in build_deployments(s):
        variables = dict(d.job_variables or {})
        variables["env"] = {**variables.get("env", {}), **served_roots(s.data_root, s.work_dir)}
        if working_dir:
            variables["working_dir"] = working_dir
        d.job_variables = variables
        ids.append(str(d.apply(work_pool_name=pool, image=image)))
    return ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve every flow's deployment (the serving process of alcm serve), "
                                     "or register them with a work pool (--pool).")  # fmt: skip
    parser.add_argument("--settings", required=True, help="ServeSettings as JSON.")
    parser.add_argument("--pool", help="Register the deployments with this work pool instead of serving them.")
    parser.add_argument("--image", help="Container image of the pool's flow-run jobs (with --pool).")
    parser.add_argument("--working-dir", help="Where a process pool's flow runs start (with --pool): the project root.")
    args = parser.parse_args(argv)
    settings = ServeSettings(**json.loads(args.settings))
    if args.pool:
        ids = deploy_to_pool(settings, args.pool, args.image, args.working_dir)
        print(f"registered {len(ids)} deployments with work pool {args.pool}")
    else:
        serve_deployments(settings)


if __name__ == "__main__":
    main()
