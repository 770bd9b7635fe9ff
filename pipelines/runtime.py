"""Connecting jobs to Ray: a local Ray for the job, an existing cluster, or a submitted Ray job.

- :func:`connect` joins the cluster named by ``ray.address`` or ``$RAY_ADDRESS`` if either is set, and otherwise
  starts a local Ray for this process (``ray.num_cpus`` CPUs). It is idempotent.
- :func:`submit` runs the same ``python -m pipelines.<job>`` entry point as a Ray job through the Jobs API
  (``JobSubmissionClient``) at ``ray.dashboard_address`` or ``$RAY_ADDRESS`` (``http://head:8265``). The resolved
  config travels in the job's runtime environment (``ALCM_CONFIG``, JSON), so the cluster runs exactly the config
  the flow validated; the entry point's arguments carry only the job's inputs and outputs. A submission has a
  deterministic id (re-runs re-attach), streams the job's log live, stops the job when the submitter is
  interrupted or cancelled, and has no time limit unless the stage has one (``ray.job_timeout_s``). Flows submit
  by default when a Jobs API address is configured (``flows.common.submits``).

Every job module exposes ``run(settings, input_dir, output_dir, *, ray_config, overwrite, **inputs) -> JobResult`` (its
settings: the config sections it reads, :mod:`pipelines.stages`) and ``main(argv)``. :func:`run_job` runs a stage's
job from a whole profile (what flows, tests and benches call); :func:`job_config` is how ``main`` gets its profile
(``--config`` JSON or YAML profile, or ``$ALCM_CONFIG``).
"""

from __future__ import annotations

import collections
import contextvars
import hashlib
import importlib
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray

from contracts import storage
from pipelines.config import Config, config_from_dict, load_config, to_dict
from pipelines.data_config import RayConfig
from pipelines.stages import stage

log = logging.getLogger(__name__)

CONFIG_ENV = "ALCM_CONFIG"

#: Raylet settings of the local Ray started for a job. On a small machine, worker processes started ahead of need
#: and idle workers killed after a second are restarted over and over during a job's stages; each restart imports
#: the job's modules again and takes CPU from the real work (measured: 4 s of a 5,000-row curation's 18 s).
LOCAL_SYSTEM_CONFIG = {"enable_worker_prestart": False, "idle_worker_killing_time_threshold_ms": 600_000}


@dataclass(frozen=True)
class JobResult:
    """What a job returns: where its output is and the manifest it wrote (as written: redacted)."""

    output: Path | str
    """The output directory, or its object-store URI."""
    manifest: dict


def run_job(name: str, cfg: Config, input_dir: str | Path, output_dir: str | Path, *, overwrite: bool = False,
            **inputs: Path | None) -> JobResult:  # fmt: skip
    """Run stage ``name``'s job here with its settings taken from the whole config ``cfg`` (and ``cfg.ray``);
    ``inputs``: the job's further input directories (``stage1=``, ``control_data=``, ...). Every location may be
    a path or an object-store URI (:mod:`contracts.storage`)."""
    s = stage(name)
    inputs = {k: None if w is None else location(w) for k, w in inputs.items()}
    job = importlib.import_module(s.job)
    return job.run(s.settings_of(cfg), location(input_dir), location(output_dir), ray_config=cfg.ray,
                   overwrite=overwrite, **inputs)  # fmt: skip


def location(where: str | Path) -> str | Path:
    """A job's input or output location: an object-store URI stays a string (``contracts.storage``: a URI never
    passes through Path), anything else is a Path."""
    return storage.normalize(where) if storage.is_uri(where) else Path(where)


def input_location(where: str | Path) -> str | Path:
    """An input as jobs record it and hand it to their workers: a URI as it is, a path made absolute."""
    return storage.normalize(where) if storage.is_uri(where) else Path(where).resolve()


def connect(cfg: RayConfig | None = None) -> dict:
    """Make sure this process is connected to Ray; return ``{"mode": "local"|"cluster", "address": ...}``."""
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if _reachable(current):
            return {"mode": "existing", "address": current}
        # A retried stage after the head died: never reuse the dead connection.
        log.warning("the Ray connection to %s is dead (its head is gone): reconnecting", current)
        ray.shutdown()
    # No runtime_env here: a local Ray's workers inherit this process's environment, and a submitted job's
    # driver already carries the job's runtime_env (passing one again conflicts with it).
    if address and not address.startswith("http"):
        head = _head_endpoint(address)
        if head is not None and not _reachable(head):
            # ray.init would wait minutes for a head that is not there; fail now, as a retryable connection error.
            raise ConnectionError(f"the Ray head at {address} (ray.address / RAY_ADDRESS) does not accept "
                                  "connections: is the cluster up?")
        ray.init(address=address, log_to_driver=True)
        mode = "cluster"
    else:
        # "local" always starts a new Ray for this job, even if another one (e.g. `ray start`) runs here.
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus,
            include_dashboard=False,
            log_to_driver=True,
            _system_config=LOCAL_SYSTEM_CONFIG,
        )
        mode = "local"
    info = {"mode": mode, "address": ray.get_runtime_context().gcs_address}
    log.info("connected to Ray (%s) at %s", mode, info["address"])
    return info


def _head_endpoint(address: str) -> str | None:
    """``host:port`` of a Ray address to probe before connecting (``ray://`` included), or None where there is
    nothing to probe (``auto``, a bare host)."""
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    return rest if host and port.isdigit() else None


def _reachable(gcs_address: str, timeout: float = 5.0) -> bool:
    """Whether the Ray head's GCS at ``host:port`` accepts a connection."""
    import socket

    host, _, port = gcs_address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def job_config(config_arg: str | None, overrides: list[str]) -> Config:
    """The config of a job entry point: ``--config`` (a profile name, YAML path or JSON), else ``$ALCM_CONFIG``."""
    if config_arg and config_arg.lstrip().startswith("{"):
        return config_from_dict(json.loads(config_arg))
    if config_arg:
        return load_config(config_arg, overrides)
    if os.environ.get(CONFIG_ENV):
        cfg = config_from_dict(json.loads(os.environ[CONFIG_ENV]))
        if overrides:
            from pipelines.config import apply_overrides

            cfg = config_from_dict(apply_overrides(to_dict(cfg), overrides))
        return cfg
    return load_config("toy", overrides)


@dataclass(frozen=True)
class SubmittedJob:
    """A finished Ray job."""

    job_id: str
    status: str
    logs: str
    """The job log's last lines (:data:`LOG_TAIL_LINES`)."""
    seconds: float
    attached: bool = False
    """True if this call re-attached to a job an earlier call had submitted (a re-run or a retried stage)."""


#: Lines of a job's log kept for its error message and :attr:`SubmittedJob.logs` (the whole log streams live).
LOG_TAIL_LINES = 400


class JobCancelled(BaseException):
    """The submitting process was told to stop (SIGTERM: a cancelled Prefect run, a stopped worker); the Ray job
    was stopped with it. A BaseException, like KeyboardInterrupt, so that no retry or handler mistakes it for a
    failure of the job."""


class JobTimedOut(RuntimeError):
    """A submitted job ran past its stage's ``ray.job_timeout_s`` and was stopped. Not a TimeoutError: the limit
    is the user's choice, so the retrain flow does not retry it as an infrastructure fault."""


def submission_id(job: str, args: list[str], cfg: Config) -> str:
    """The deterministic Ray submission id of running ``job`` with ``args`` (its inputs and output: the stage key
    is in the output's path) under config ``cfg``: a re-run of the same stage finds the job an earlier run
    submitted (:func:`submit` re-attaches to it) instead of starting a second on the same output."""
    key = json.dumps({"job": job, "args": args, "config": to_dict(cfg)}, sort_keys=True, default=str)
    return f"alcm-{job.replace('_', '-')}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def submit(
    job: str,
    args: list[str],
    cfg: Config,
    *,
    address: str | None = None,
    poll_s: float = 1.0,
    on_submitted: Callable[[str, str, bool], None] | None = None,
) -> SubmittedJob:
    """Submit ``python -m pipelines.<job> ARGS`` to the Ray Jobs API, stream its log and wait for it to finish.

    - **Re-attach.** The job's submission id is :func:`submission_id`. A job with that id that is pending or
      running is attached to, not submitted again; one that succeeded is attached to unless ``--overwrite`` asks
      for a new run; one that failed or was stopped is followed by a new attempt (``<id>-2``, ``<id>-3``, ...).
    - **Live log.** Every line the job's driver prints (the training workers' progress lines included: jobs
      connect with ``log_to_driver``) is logged as it comes through :mod:`logging` (``pipelines.runtime``), which
      a Prefect run forwards to its run log.
    - **Cancel.** If this process is interrupted (Ctrl-C; SIGTERM, which is how a Prefect worker cancels a flow
      run's process) or the wait fails, the Ray job is stopped before the error propagates
      (:class:`JobCancelled` for SIGTERM).
    - **Limits and placement.** ``ray.job_timeout_s[job]`` limits the run (none by default); the driver reserves
      ``ray.driver_num_cpus`` and ``ray.driver_resources``, so it runs on a worker group, not the head.
    - **Environment.** The resolved config travels as ``ALCM_CONFIG`` (JSON; a config holding a credential is
      refused); variables named in ``ray.forward_env`` are copied from this process when set. Credentials are
      never forwarded (Ray shows the runtime environment in its dashboard): the cluster's nodes carry them.

    ``on_submitted(job_id, address, attached)`` is called once the job is known (flows link it as an artifact).
    Raises RuntimeError (with the job's log tail) if the job fails or is stopped, JobTimedOut past its limit.
    A cluster with Ray's token authentication needs ``RAY_AUTH_MODE=token`` and the token (``RAY_AUTH_TOKEN`` or
    ``~/.ray/auth_token``) in this process's environment; Ray's client adds it to every request.
    """
    address = address or cfg.ray.jobs_address()
    if not address:
        raise ValueError("submit: no Jobs API address; set ray.dashboard_address or RAY_ADDRESS=http://head:8265")
    client = jobs_client(address)
    entrypoint = " ".join(
        shlex.quote(a) for a in [sys.executable if _local(address) else "python", "-m", f"pipelines.{job}", *args]
    )
    start = time.monotonic()
    job_id, attached = _attach_or_submit(client, submission_id(job, args, cfg), entrypoint, cfg,
                                         fresh="--overwrite" in args)  # fmt: skip
    log.info("%s Ray job %s: %s\n  dashboard: %s\n  the job's log follows (Ctrl-C stops the job)",
             "re-attached to" if attached else "submitted", job_id, entrypoint, job_link(address, job_id))
    if on_submitted is not None:
        on_submitted(job_id, address, attached)
    tail = _LogTail(client, job_id)
    timeout_s = cfg.ray.job_timeout_s.get(job)
    status = None
    try:
        with _stop_on_sigterm(job_id):
            tail.start()
            status = _wait(client, job_id, timeout_s, poll_s, start)
    finally:
        if status is None:  # interrupted, cancelled, timed out or lost the API: the job must not run on
            _stop(client, job_id)
        tail.finish()
    seconds = time.monotonic() - start
    if status != "SUCCEEDED":
        raise RuntimeError(f"Ray job {job_id} ended {status}; log tail:\n{tail.text()[-4000:]}")
    return SubmittedJob(job_id=job_id, status=status, logs=tail.text(), seconds=seconds, attached=attached)


_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def job_link(address: str, job_id: str) -> str:
    """The Ray dashboard's page of a job (the Jobs API address is the dashboard's)."""
    return f"{address.rstrip('/')}/#/jobs/{job_id}"


def jobs_client(address: str):
    """A Jobs API client for ``address``. With ``RAY_AUTH_TOKEN`` set (a flow pod's Secret), its token goes in every
    request's header: Ray otherwise sends the token this process loaded first, which need not be this cluster's."""
    from ray.job_submission import JobSubmissionClient

    token = os.environ.get("RAY_AUTH_TOKEN")
    return JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"} if token else None)


def _attach_or_submit(client, base_id: str, entrypoint: str, cfg: Config, *, fresh: bool) -> tuple[str, bool]:
    """(job id, attached?): the running or reusable attempt of ``base_id``, or a new one (see :func:`submit`)."""
    for attempt in range(1, 1000):
        job_id = base_id if attempt == 1 else f"{base_id}-{attempt}"
        status = _status_or_none(client, job_id)
        if status is None:
            break
        if status in ("PENDING", "RUNNING") or (status == "SUCCEEDED" and not fresh):
            return job_id, True
    else:
        raise RuntimeError(f"Ray job {base_id}: 999 earlier attempts; delete old jobs (ray job delete)")
    client.submit_job(
        entrypoint=entrypoint,
        submission_id=job_id,
        runtime_env={"env_vars": job_env(cfg)},
        entrypoint_num_cpus=cfg.ray.driver_num_cpus,
        entrypoint_resources=dict(cfg.ray.driver_resources) or None,
        metadata={"alcm.job": entrypoint.split(" -m ", 1)[-1].split(" ", 1)[0]},
    )
    return job_id, False


def job_env(cfg: Config) -> dict[str, str]:
    """The environment a submitted job's driver gets: its config (refused if it holds a credential) and the variables of
    ``ray.forward_env`` that are set here (``HF_HUB_OFFLINE`` defaults to 1: nothing reaches a model hub)."""
    from contracts.redact import redact

    config = to_dict(cfg)
    leaked = _first_difference(config, redact(config))
    if leaked:
        raise ValueError(f"config key {leaked} holds a credential, and Ray shows a job's environment in its "
                         "dashboard: put credentials in the environment (AWS_ACCESS_KEY_ID, ...), not in config")
    env = {CONFIG_ENV: json.dumps(config), "HF_HUB_OFFLINE": "1"}
    env.update({name: os.environ[name] for name in cfg.ray.forward_env if os.environ.get(name)})
    return env


def _first_difference(a, b, key: str = "") -> str | None:
    """The dotted key of the first value that differs between two nested configs, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a:
            found = _first_difference(a[k], b.get(k), f"{key}.{k}" if key else str(k))
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        return next((f for i, (x, y) in enumerate(zip(a, b, strict=True))
                     if (f := _first_difference(x, y, f"{key}[{i}]"))), None)  # fmt: skip
    return None if a == b else key


def _status_or_none(client, job_id: str) -> str | None:
    """The job's status name, or None if the cluster has no job with this id."""
    try:
        return str(client.get_job_info(job_id).status.value)
    except RuntimeError as exc:  # the Jobs API answers 404 through a RuntimeError
        if "404" in str(exc) or "does not exist" in str(exc):
            return None
        raise


def _wait(client, job_id: str, timeout_s: float | None, poll_s: float, start: float) -> str:
    """Poll until the job ends; its final status name. JobTimedOut past ``timeout_s`` (the caller stops it)."""
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in _TERMINAL:
            return status
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise JobTimedOut(f"Ray job {job_id} did not finish within {timeout_s:.0f} s (ray.job_timeout_s); it "
                              "was stopped")
        time.sleep(poll_s)


def _stop(client, job_id: str) -> None:
    try:
        stopped = client.stop_job(job_id)
    except Exception as exc:  # noqa: BLE001 - the original error propagates; this one is only reported
        log.error("could not stop Ray job %s: %s (stop it with `ray job stop %s`)", job_id, exc, job_id)
        return
    log.warning("stopped Ray job %s%s", job_id, "" if stopped else " (it had already ended)")


@contextmanager
def _stop_on_sigterm(job_id: str) -> Iterator[None]:
    """Turn SIGTERM into :class:`JobCancelled` while waiting (main thread only; an existing handler, e.g. the
    engine's own, is chained, not replaced)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        if callable(previous):
            previous(signum, frame)  # may raise its own error, which stops the job the same way
        raise JobCancelled(f"Ray job {job_id}: the submitting process received SIGTERM; the job is stopped")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _LogTail:
    """Streams a Ray job's log (``tail_job_logs``) on a thread, line by line into :mod:`logging`, keeping the last
    :data:`LOG_TAIL_LINES` lines. The thread runs in a copy of the caller's context, so a Prefect run's logger
    still knows its run."""

    def __init__(self, client, job_id: str):
        self.client, self.job_id = client, job_id
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.logger = logging.getLogger(f"{__name__}.job")
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,), daemon=True,
                                        name=f"tail-{job_id}")  # fmt: skip

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        import asyncio

        async def follow() -> None:
            pending = ""
            async for chunk in self.client.tail_job_logs(self.job_id):
                pending += chunk
                *complete, pending = pending.split("\n")
                for line in complete:
                    self._emit(line)
            if pending:
                self._emit(pending)

        try:
            asyncio.run(follow())
        except Exception as exc:  # noqa: BLE001 - the log stream is best effort; the job's status decides
            self.logger.warning("Ray job %s: log stream ended early (%s)", self.job_id, exc)

    def _emit(self, line: str) -> None:
        from pipelines import progress

        self.lines.append(line)
        if line.strip():
            self.logger.info("[%s] %s", self.job_id, line)
            event = progress.parse(line)
            if event is not None:  # the job's progress lines reach this process's listeners (a flow's artifact)
                progress.emit(event)

    def finish(self, timeout_s: float = 30.0) -> None:
        """Wait for the stream to end (it ends once the job has)."""
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def text(self) -> str:
        return "\n".join(self.lines)


def _local(address: str) -> bool:
    # A head node on this machine runs the job with this interpreter (the project's venv); a remote cluster
    # runs it with the image's `python`.
    return any(h in address for h in ("127.0.0.1", "localhost"))


def job_main(
    argv: list[str] | None,
    *,
    module: str,
    doc: str,
    input_help: str,
    output_help: str,
    extra_inputs: dict[str, str] | None = None,
) -> int:
    """The ``python -m pipelines.<job> --input DIR --output DIR [--config P|JSON] [--set k=v ...] [--overwrite]``
    entry point every job shares: parse, configure logging, build the config, run the job (:func:`run_job`).
    ``extra_inputs``: further input directories of the job, option name (``stage1`` → ``--stage1``, passed to the
    job as the keyword ``stage1``) → help."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("--input", required=True, type=location, help=input_help)
    parser.add_argument("--output", required=True, type=location, help=output_help)
    parser.add_argument("--config", default=None, help="profile name, YAML path or JSON; default $ALCM_CONFIG or toy")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override key=value")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    for name, help_text in (extra_inputs or {}).items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=location, default=None, help=help_text)
    args = parser.parse_args(argv)
    from contracts.redact import install_log_redaction

    install_log_redaction()  # a submitted job's driver log holds no credential from a URI or the environment
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    extra = {name: getattr(args, name) for name in (extra_inputs or {})}
    try:
        result = run_job(module.removeprefix("pipelines."), job_config(args.config, args.overrides), args.input,
                         args.output, overwrite=args.overwrite, **extra)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - reported through logging (redacted), not the raw traceback hook
        log.error("%s failed: %s", module, exc, exc_info=True)
        return 1
    log.info("manifest: %s", storage.join(result.output, "manifest.json"))
    return 0
