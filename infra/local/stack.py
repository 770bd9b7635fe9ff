"""The production topology on one machine: what ``make stack`` starts and ``make stack-down`` stops.

On localhost, each a process of its own (in start order):

- **Postgres** (Debian's ``postgresql``, a private cluster: its own data directory and port) with the databases
  ``prefect`` and ``mlflow``;
- **an S3-compatible object store** (moto's server mode) with the buckets ``alcm-data`` (raw data and every
  output) and ``alcm-mlflow`` (MLflow's artifacts);
- **the MLflow server** on Postgres, serving its artifacts from the object store, ``--allowed-hosts`` set;
- **a Ray cluster**: a head that schedules nothing (``num-cpus 0``, as ``infra/kuberay``) and one worker node, with
  Ray's token authentication (a token generated for this stack);
- **the Prefect server** on Postgres, a **process work pool** ``alcm-process`` with one worker, and every flow's
  deployment registered with that pool (``flows.serve.deploy_to_pool``).

The worker's flow runs see what a flow pod sees on a cluster: ``RAY_ADDRESS`` = the Jobs API (so flows submit
their jobs), ``MLFLOW_TRACKING_URI`` = the MLflow server over HTTP, the ``AWS_*`` environment of the object store.
The Ray nodes carry the object-store credentials themselves (as a Kubernetes Secret gives them to the Ray pods):
a submitted job's environment never holds them.

``up`` writes ``DIR/stack.json`` (every process it started, by process group) and ``DIR/env.sh`` (the environment
a client needs: ``source .stack/env.sh`` then ``alcm ...``, ``prefect ...``, ``mlflow ...``); ``down`` stops
exactly the processes ``stack.json`` names, in reverse order, and with ``--purge`` removes ``DIR``.

Usage: ``python infra/local/stack.py up|down|env [--dir .stack] [--ports auto]``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the project's packages
BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
DEFAULT_PORTS = {"postgres": 15432, "s3": 19000, "mlflow": 15000, "ray_gcs": 16379, "ray_dashboard": 18265,
                 "ray_client": 10001, "prefect": 14200}  # fmt: skip
POOL = "alcm-process"
BUCKETS = ("alcm-data", "alcm-mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """The processes of one stack and its state file."""

    def __init__(self, home: Path):
        self.home = home.resolve()
        self.state_file = self.home / "stack.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {"services": []}

    def save(self) -> None:
        self.state_file.write_text(json.dumps(self.state, indent=2))

    def start(self, name: str, argv: list[str], env: dict[str, str], *, user: str | None = None,
              cwd: Path | None = None) -> subprocess.Popen:  # fmt: skip
        """Start ``argv`` in its own process group (as ``user`` via runuser when given), logging to DIR/logs."""
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=cwd or ROOT)  # fmt: skip
        self.state["services"].append({"name": name, "pid": proc.pid, "log": str(logs / f"{name}.log")})
        self.save()
        print(f"started {name} (pid {proc.pid})", flush=True)
        return proc

    def stop(self) -> None:
        """Stop every process this stack started, newest first: SIGTERM (Postgres: SIGINT, its fast shutdown) to
        the process group, SIGKILL after 30 s."""
        for svc in reversed(self.state["services"]):
            pid = svc["pid"]
            sig = signal.SIGINT if svc["name"] == "postgres" else signal.SIGTERM
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _group_alive(pid):
                time.sleep(0.3)
            if _group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
            print(f"stopped {svc['name']} (pid {pid})", flush=True)
        self.state["services"] = []
        self.save()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A group whose members are all zombies still answers: reap our own children.
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_http(url: str, name: str, proc: subprocess.Popen, timeout: float = 180.0, ok=(200,)) -> None:
    from flows.serve import wait_healthy

    wait_healthy(url, proc, name, timeout, ok=tuple(ok))


def up(home: Path, ports: dict[str, int]) -> dict[str, str]:
    """Start the stack (see the module docstring); return the client environment it wrote to ``env.sh``."""
    stack = Stack(home)
    if stack.state["services"]:
        raise SystemExit(f"a stack already runs from {stack.home} (stop it: python infra/local/stack.py down)")
    stack.home.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "PREFECT_API", "MLFLOW_"))}
    base.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore::DeprecationWarning"})  # fmt: skip
    try:
        pg_url = start_postgres(stack, base, ports["postgres"])
        s3 = start_object_store(stack, base, ports["s3"])
        storage_env = {"AWS_ENDPOINT_URL": s3, "AWS_ACCESS_KEY_ID": "alcm-stack", "AWS_SECRET_ACCESS_KEY":
                       "alcm-stack-secret", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        env = {**base, **storage_env}
        mlflow = start_mlflow(stack, env, pg_url, ports["mlflow"])
        ray_env = start_ray(stack, env, ports)
        prefect = start_prefect(stack, env, pg_url, ports["prefect"])
        client = {**storage_env, **ray_env, "MLFLOW_TRACKING_URI": mlflow, "PREFECT_API_URL": f"{prefect}/api",
                  "ALCM_STACK_DIR": str(stack.home)}  # fmt: skip
        start_worker(stack, {**env, **client})
        register_deployments(stack, {**env, **client})
    except BaseException:
        print("the stack did not come up; stopping what started (logs under "
              f"{stack.home / 'logs'})", file=sys.stderr, flush=True)  # fmt: skip
        stack.stop()
        raise
    stack.state["env"] = client
    stack.save()
    (stack.home / "env.sh").write_text("".join(f"export {k}={v}\n" for k, v in sorted(client.items())))
    print(f"\nthe stack runs from {stack.home}: source {stack.home / 'env.sh'}\n"
          f"  Prefect UI   {prefect}\n  MLflow UI    {mlflow}\n  Ray          {ray_env['RAY_ADDRESS']}\n"
          f"  object store {s3} (buckets {', '.join(BUCKETS)})\nstop it: make stack-down", flush=True)  # fmt: skip
    return client


def start_postgres(stack: Stack, env: dict, port: int) -> str:
    """A private Postgres cluster on 127.0.0.1:``port`` (trust authentication, loopback only) with the databases
    ``prefect`` and ``mlflow``; its SQLAlchemy URL without a driver (``postgresql://alcm@127.0.0.1:PORT``)."""
    if not (PG_BIN / "initdb").exists():
        raise SystemExit(f"{PG_BIN / 'initdb'} is missing: apt-get install postgresql (make stack-env)")
    user = "postgres" if os.geteuid() == 0 else None  # Postgres refuses to run as root
    data = Path(tempfile.mkdtemp(prefix="alcm-stack-pg-"))  # a place the postgres user can reach
    stack.state["postgres_dir"] = str(data)
    sock = data / "sock"
    sock.mkdir()
    if user:
        shutil.chown(data, user)
        shutil.chown(sock, user)
    prefix = ["runuser", "-u", user, "--"] if user else []
    subprocess.run([*prefix, str(PG_BIN / "initdb"), "-D", str(data / "db"), "-U", "alcm", "-A", "trust",
                    "--no-sync"], check=True, capture_output=True, env=env)  # fmt: skip
    proc = stack.start("postgres", [str(PG_BIN / "postgres"), "-D", str(data / "db"), "-p", str(port), "-k",
                                    str(sock), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"], env,
                       user=user)  # fmt: skip
    deadline = time.monotonic() + 60
    while subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                         capture_output=True).returncode != 0:  # fmt: skip
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"postgres did not start (log {stack.home / 'logs' / 'postgres.log'})")
        time.sleep(0.3)
    for db in ("prefect", "mlflow"):
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "alcm", "-d", "postgres", "-q", "-c",
                        f"CREATE DATABASE {db}"], check=True, capture_output=True, env=env)  # fmt: skip
    return f"postgresql://alcm@127.0.0.1:{port}"


def start_object_store(stack: Stack, env: dict, port: int) -> str:
    proc = stack.start("object-store", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url, "object store", proc)
    import boto3

    client = boto3.client("s3", endpoint_url=url, aws_access_key_id="alcm-stack",
                          aws_secret_access_key="alcm-stack-secret", region_name="us-east-1")  # fmt: skip
    for bucket in BUCKETS:
        client.create_bucket(Bucket=bucket)
    return url


def start_mlflow(stack: Stack, env: dict, pg_url: str, port: int) -> str:
    backend = pg_url.replace("postgresql://", "postgresql+psycopg2://") + "/mlflow"  # SQLAlchemy's default: psycopg 3
    proc = stack.start("mlflow", [str(BIN / "mlflow"), "server", "--backend-store-uri", backend,
                                  "--artifacts-destination", "s3://alcm-mlflow/artifacts", "--serve-artifacts",
                                  "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                  "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}"], env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", "mlflow server", proc)
    return url


def start_ray(stack: Stack, env: dict, ports: dict[str, int]) -> dict[str, str]:
    """The head (no CPUs: drivers and work go to the worker) and one worker node, token authentication on; the
    client environment (``RAY_ADDRESS`` = the Jobs API, the auth mode and token)."""
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray_env = {**env, **auth}
    gcs, dash = ports["ray_gcs"], ports["ray_dashboard"]
    head = stack.start("ray-head", [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}",
                                    f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--num-cpus=0",
                                    f"--ray-client-server-port={ports['ray_client']}",
                                    f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"],
                       ray_env)  # fmt: skip
    url = f"http://127.0.0.1:{dash}"
    wait_http(f"{url}/api/version", "ray head", head, ok=(200, 401))
    stack.start("ray-worker", [str(BIN / "ray"), "start", "--block", f"--address=127.0.0.1:{gcs}", "--num-cpus=3",
                               f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"],
                ray_env)  # fmt: skip
    return {"RAY_ADDRESS": url, **auth}


def start_prefect(stack: Stack, env: dict, pg_url: str, port: int) -> str:
    url = f"http://127.0.0.1:{port}"
    prefect_env = {**env, "PREFECT_HOME": str(stack.home / "prefect"),
                   "PREFECT_API_DATABASE_CONNECTION_URL": pg_url.replace("postgresql://", "postgresql+asyncpg://")
                   + "/prefect", "PREFECT_UI_API_URL": f"{url}/api"}  # fmt: skip
    proc = stack.start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                          str(port)], prefect_env)  # fmt: skip
    wait_http(f"{url}/api/health", "prefect server", proc)
    return url


def start_worker(stack: Stack, env: dict) -> None:
    """The process work pool and its worker; flow runs are the worker's subprocesses, in the project root."""
    from flows.common import ENV_DEFAULTS  # the project's loggers forwarded into the runs' logs, offline hubs

    worker_env = {**env, **ENV_DEFAULTS, "PREFECT_HOME": str(stack.home / "prefect-worker"),
                  "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_RUNNER_POLL_FREQUENCY": "2"}  # fmt: skip
    subprocess.run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process", "--overwrite"],
                   check=True, capture_output=True, env=worker_env, cwd=ROOT)  # fmt: skip
    stack.start("prefect-worker", [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
                worker_env)  # fmt: skip


def register_deployments(stack: Stack, env: dict) -> None:
    """Every flow's deployment in the process pool (the same deployments ``alcm serve`` and ``alcm deploy`` make),
    on the object store: reading ``s3://alcm-data/raw`` and writing under ``s3://alcm-data``, the roots a deployment
    run's paths must stay in (``flows.form_policy``)."""
    settings = {"data_root": "s3://alcm-data/raw", "work_dir": "s3://alcm-data", "trigger": False}
    run = subprocess.run([sys.executable, "-m", "flows.serve", "--settings", json.dumps(settings), "--pool", POOL,
                          "--working-dir", str(ROOT)],
                         env={**env, "PREFECT_HOME": str(stack.home / "prefect-client")}, cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"registering the deployments failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    print(run.stdout.strip(), flush=True)


def down(home: Path, *, purge: bool) -> None:
    stack = Stack(home)
    stack.stop()
    pg = stack.state.get("postgres_dir")
    if purge:
        if pg:
            shutil.rmtree(pg, ignore_errors=True)
        shutil.rmtree(stack.home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "env"))
    parser.add_argument("--dir", default=str(ROOT / ".stack"), help="State, logs and env.sh (default .stack).")
    parser.add_argument("--ports", choices=("default", "auto"), default="default",
                        help="auto: free ports instead of the defaults (tests).")  # fmt: skip
    parser.add_argument("--purge", action="store_true", help="down: also remove the state directory and data.")
    args = parser.parse_args(argv)
    home = Path(args.dir)
    if args.command == "up":
        ports = {k: free_port() for k in DEFAULT_PORTS} if args.ports == "auto" else dict(DEFAULT_PORTS)
        up(home, ports)
    elif args.command == "down":
        down(home, purge=args.purge)
    elif args.command == "env":
        print((home / "env.sh").read_text(), end="")
    else:
        raise ValueError(f"command {args.command!r}: choose up, down or env")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
