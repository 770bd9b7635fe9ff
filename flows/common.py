"""What every flow shares: environment defaults, config validation, and running a job locally or on a cluster.

A flow is thin: validate parameters (build the config, which raises naming the bad key before any work) → run the
job (in this process against Ray, or submitted as a Ray job with ``submit=true``) → read the job's manifest →
record it in the registry (``flows.record.record_output``) → publish artifacts. Flows never load models or touch
data themselves, and jobs never write the registry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from pydantic import BaseModel, Field, model_validator

#: Set for every CLI invocation and flow run unless the user set them: nothing may reach a model hub, and the
#: embedded Prefect must not phone home. The project loggers are forwarded into Prefect's run logs.
ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "contracts,pipelines,filters,models,toyworld,registry",
    "RAY_DEDUP_LOGS": "0",
}


def apply_env_defaults() -> None:
    """Apply :data:`ENV_DEFAULTS` without overriding values the user set, and redact credentials from every log
    record of this process (``contracts.redact.install_log_redaction``): every flow and CLI invocation runs this
    first, so no run log, console line or log file shows a storage credential or auth string."""
    from contracts.redact import install_log_redaction

    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    install_log_redaction()
    forward_project_logs()


def forward_project_logs() -> None:
    """Send the project loggers' INFO records (a submitted Ray job's streamed log lines among them) to the Prefect
    run's logs. ``PREFECT_LOGGING_EXTRA_LOGGERS`` only takes effect if set before Prefect configures logging (a
    worker's flow-run process has configured it before the flow sets it), and even then leaves these loggers at the
    root's WARNING level: here they get Prefect's API handler (once) and the INFO level."""
    from prefect.logging.handlers import APILogHandler

    for name in ENV_DEFAULTS["PREFECT_LOGGING_EXTRA_LOGGERS"].split(","):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        if not any(isinstance(h, APILogHandler) for h in logger.handlers):
            logger.addHandler(APILogHandler())


class FormChecked(BaseModel):
    """Parameters that a deployment run (a UI form, a schedule, an event) has checked by :mod:`flows.form_policy`
    when they are validated: ``FORM_INPUTS`` are path parameters that must stay under the served roots,
    ``FORM_OUTPUTS`` under the work directory."""

    FORM_INPUTS: ClassVar[tuple[str, ...]] = ()
    FORM_OUTPUTS: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _form_policy(self):
        from flows.form_policy import check

        check(self, inputs=self.FORM_INPUTS, outputs=self.FORM_OUTPUTS)
        return self


class JobParams(FormChecked):
    """Parameters every job flow takes (rendered as a form in the Prefect UI)."""

    profile: str = Field("toy", description="Config profile: a name under configs/ (toy, sd15) or a YAML path.")
    overrides: list[str] = Field(
        default_factory=list, description="Config overrides, each key=value, e.g. curate_images.filters.min_side=48."
    )
    submit: bool | None = Field(
        None,
        description="Submit the job to the Ray cluster's Jobs API and wait (streaming its log); empty: submit when a "
        "cluster is configured (ray.dashboard_address, or RAY_ADDRESS=http://head:8265), else run on a local Ray.",
    )


class IOJobParams(JobParams):
    """Parameters of a job that reads one input directory and writes one new output directory."""

    FORM_INPUTS: ClassVar[tuple[str, ...]] = ("input_dir",)
    FORM_OUTPUTS: ClassVar[tuple[str, ...]] = ("output_dir",)

    input_dir: str = Field(description="Input directory.")
    output_dir: str = Field(description="New output directory (published atomically, with manifest.json).")
    overwrite: bool = Field(False, description="Replace output_dir if it is not empty.")

    def extra_inputs(self) -> dict[str, str]:
        """Further input directories of the job (keyword of its ``run`` → path); none by default."""
        return {}


def run_io_job(stage: str, cfg, params: IOJobParams) -> dict:
    """Run stage ``stage``'s job (``pipelines.<stage>``) here, or submit its entry point to the Ray cluster with
    ``params.submit``; return the manifest it wrote, redacted as written (what the flows publish and return never
    holds a credential, see ``contracts.redact``)."""
    from contracts.manifest import read_manifest
    from contracts.redact import redact
    from pipelines import runtime

    extra = params.extra_inputs()
    with accelerator_slot(stage), progress_artifact(stage):
        if submits(params.submit, cfg):
            args = ["--input", params.input_dir, "--output", params.output_dir]
            for name, path in extra.items():
                args += [f"--{name.replace('_', '-')}", path]
            args = [*args, "--overwrite"] if params.overwrite else args
            runtime.submit(stage, args, cfg, on_submitted=link_ray_job)
            return read_manifest(params.output_dir)
        kwargs = {name: runtime.location(path) for name, path in extra.items()}
        result = runtime.run_job(stage, cfg, params.input_dir, params.output_dir, overwrite=params.overwrite,
                                 **kwargs)  # fmt: skip
    return redact(result.manifest)


#: The Prefect global concurrency limit every accelerator job holds a slot of while it runs, whichever run started
#: it (the UI, a schedule, an event, the CLI against the server): ``alcm serve`` and ``alcm deploy`` create it with
#: ``--gpu-slots`` slots (default 1: one accelerator job at a time on the cluster).
GPU_LIMIT = "alcm-gpu"


@contextmanager
def accelerator_slot(stage: str) -> Iterator[None]:
    """Hold one slot of :data:`GPU_LIMIT` while stage ``stage``'s job runs, if the job uses the accelerators (the
    training stages and evaluation); waiting for a slot is logged. Where the limit does not exist (an embedded
    Prefect, no server), nothing is limited."""
    from prefect.concurrency.sync import concurrency

    from pipelines.stages import stage as stage_of

    if not (stage_of(stage).training or stage == "evaluate"):
        yield
        return
    logging.getLogger(__name__).info("%s: waiting for an accelerator slot (%s)", stage, GPU_LIMIT)
    with concurrency(GPU_LIMIT, occupy=1):
        yield


def ensure_gpu_limit(slots: int) -> None:
    """Create (or resize) :data:`GPU_LIMIT` on the Prefect server this process talks to."""
    from prefect.client.orchestration import get_client

    if slots < 1:
        raise ValueError(f"gpu slots {slots}: must be ≥ 1")
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, slots)


def submits(submit: bool | None, cfg) -> bool:
    """Whether a job is submitted to a Ray cluster: as asked, or (``None``) when a cluster's Jobs API address is
    configured (``ray.dashboard_address``, or an ``http(s)://`` ``ray.address`` or ``$RAY_ADDRESS``), so runs from
    the UI, schedules and events go to the cluster without anyone choosing."""
    return cfg.ray.jobs_address() is not None if submit is None else submit


def link_ray_job(job_id: str, address: str, attached: bool) -> None:
    """In a flow run: a link artifact from the run to its Ray job in the Ray dashboard (outside one: nothing)."""
    from prefect.artifacts import create_link_artifact
    from prefect.context import FlowRunContext

    from pipelines.runtime import job_link

    if FlowRunContext.get() is None:
        return
    what = "re-attached to" if attached else "submitted"
    create_link_artifact(link=job_link(address, job_id), link_text=f"Ray job {job_id}",
                         key=f"ray-job-{job_id}".lower()[:100].replace("_", "-"),
                         description=f"The Ray job this run {what}.")  # fmt: skip


@contextmanager
def progress_artifact(stage: str, every_s: float = 2.0) -> Iterator[None]:
    """In a flow run: the progress of the stage's job (:mod:`pipelines.progress` events, from this process or parsed
    from a submitted job's log) as a Prefect progress artifact per piece of work (``progress-<stage>-<what>``),
    updated at most every ``every_s`` seconds and at 100%. Outside a flow run: nothing. Best effort: a failed
    update never fails the job."""
    import contextvars
    import re
    import threading
    import time

    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.context import FlowRunContext

    from pipelines import progress

    if FlowRunContext.get() is None:
        yield
        return
    captured = contextvars.copy_context()  # events arrive on other threads: write in the run's context
    shown: dict[str, tuple[object, float, float]] = {}  # what → (artifact id, percent shown, when)

    def write(event) -> None:
        pct = round(event.percent, 1)
        ident, last, at = shown.get(event.what, (None, -1.0, 0.0))
        if pct == last or (ident is not None and pct < 100 and time.monotonic() - at < every_s):
            return
        eta = f", about {event.eta_s:.0f} s left" if event.eta_s is not None else ""
        text = f"{stage}: {event.what}, {event.n}/{event.total} {event.unit}{eta}"
        if ident is None:
            key = re.sub(r"[^a-z0-9-]+", "-", f"progress-{stage}-{event.what}".lower()).strip("-")[:100]
            ident = create_progress_artifact(pct, key=key, description=text)
        else:
            update_progress_artifact(ident, pct, description=text)
        shown[event.what] = (ident, pct, time.monotonic())

    lock = threading.Lock()

    def listener(event) -> None:
        if event.percent is not None:
            with lock:
                captured.copy().run(write, event)

    with progress.listen(listener):
        yield


def open_registry():
    """The registry (``MLFLOW_TRACKING_URI``, or the embedded store under ``ALCM_REGISTRY_DIR``)."""
    from registry.store import Registry

    return Registry()
