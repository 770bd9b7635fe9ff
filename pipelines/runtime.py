"""Connecting jobs to Ray: a local Ray for the job, an existing cluster, or a submitted Ray job.

- :func:`connect` joins the cluster named by ``ray.address`` or ``$RAY_ADDRESS`` if either is set, and otherwise
  starts a local Ray for this process (``ray.num_cpus`` CPUs). It is idempotent.
- :func:`submit` runs the same ``python -m pipelines.<job>`` entry point as a Ray job through the Jobs API
  (``JobSubmissionClient``) at ``ray.dashboard_address`` or ``$RAY_ADDRESS`` (``http://head:8265``). The resolved
  config travels in the job's runtime environment (``ALCM_CONFIG``, JSON), so the cluster runs exactly the config
  the flow validated; the entry point's arguments carry only the job's inputs and outputs.

Every job module exposes ``run(settings, input_dir, output_dir, *, ray_config, overwrite, **inputs) -> JobResult`` (its
settings: the config sections it reads, :mod:`pipelines.stages`) and ``main(argv)``. :func:`run_job` runs a stage's
job from a whole profile (what flows, tests and benches call); :func:`job_config` is how ``main`` gets its profile
(``--config`` JSON or YAML profile, or ``$ALCM_CONFIG``).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ray

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

    output: Path
    manifest: dict


def run_job(name: str, cfg: Config, input_dir: Path, output_dir: Path, *, overwrite: bool = False,
            **inputs: Path | None) -> JobResult:  # fmt: skip
    """Run stage ``name``'s job here with its settings taken from the whole config ``cfg`` (and ``cfg.ray``);
    ``inputs``: the job's further input directories (``stage1=``, ``control_data=``, ...)."""
    s = stage(name)
    job = importlib.import_module(s.job)
    return job.run(s.settings_of(cfg), Path(input_dir), Path(output_dir), ray_config=cfg.ray, overwrite=overwrite,
                   **inputs)


def connect(cfg: RayConfig | None = None) -> dict:
    """Make sure this process is connected to Ray; return ``{"mode": "local"|"cluster", "address": ...}``."""
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return {"mode": "existing", "address": ray.get_runtime_context().gcs_address}
    # No runtime_env here: a local Ray's workers inherit this process's environment, and a submitted job's
    # driver already carries the job's runtime_env (passing one again conflicts with it).
    if address and not address.startswith("http"):
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
    seconds: float


def submit(
    job: str,
    args: list[str],
    cfg: Config,
    *,
    address: str | None = None,
    timeout_s: float = 3600.0,
    poll_s: float = 1.0,
    extra_env: dict[str, str] | None = None,
) -> SubmittedJob:
    """Submit ``python -m pipelines.<job> ARGS`` to the Ray Jobs API and wait for it to finish.

    Raises RuntimeError (with the job's log tail) if the job fails or stops, TimeoutError after ``timeout_s``.
    A cluster with Ray's token authentication needs ``RAY_AUTH_MODE=token`` and the token (``RAY_AUTH_TOKEN`` or
    ``~/.ray/auth_token``) in this process's environment; Ray's client adds it to every request.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    address = address or cfg.ray.dashboard_address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ValueError("submit: no Jobs API address; set ray.dashboard_address or RAY_ADDRESS=http://head:8265")
    client = JobSubmissionClient(address)
    entrypoint = " ".join(
        shlex.quote(a) for a in [sys.executable if _local(address) else "python", "-m", f"pipelines.{job}", *args]
    )
    env = {CONFIG_ENV: json.dumps(to_dict(cfg)), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    env.update(extra_env or {})
    start = time.monotonic()
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": env})
    log.info("submitted Ray job %s to %s: %s", job_id, address, entrypoint)
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    status = client.get_job_status(job_id)
    while status not in terminal:
        if time.monotonic() - start > timeout_s:
            client.stop_job(job_id)
            raise TimeoutError(f"Ray job {job_id} did not finish within {timeout_s:.0f} s")
        time.sleep(poll_s)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    seconds = time.monotonic() - start
    if status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"Ray job {job_id} ended {status}; log tail:\n{logs[-4000:]}")
    return SubmittedJob(job_id=job_id, status=str(status), logs=logs, seconds=seconds)


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
    from pathlib import Path

    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("--input", required=True, type=Path, help=input_help)
    parser.add_argument("--output", required=True, type=Path, help=output_help)
    parser.add_argument("--config", default=None, help="profile name, YAML path or JSON; default $ALCM_CONFIG or toy")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override key=value")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    for name, help_text in (extra_inputs or {}).items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, default=None, help=help_text)
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
    log.info("manifest: %s", result.output / "manifest.json")
    return 0
