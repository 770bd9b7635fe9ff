"""The flows' one write to the registry: record a finished job output (a Prefect task, so it shows in the run)."""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from flows.common import open_registry
from flows.retry import retry_condition


@task(name="record-in-registry", cache_policy=NONE, retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_condition)  # fmt: skip
def record_output(output_dir: str) -> str:
    """Register a finished job output, after the job outputs it was made from; return its ``NAME@VERSION``.
    Idempotent: a re-run that produced the same content returns the same version. A registry that is unreachable
    (the MLflow server down) is retried twice, each attempt with a new client (no dead connection is reused)."""
    from prefect.artifacts import create_link_artifact

    registry = open_registry()
    entry = registry.register(output_dir)
    get_run_logger().info("registered %s (%s, %s)", entry.ref, entry.type, entry.digest)
    url = registry.ui_url(entry)
    if url:
        create_link_artifact(link=url, link_text=f"{entry.ref} in MLflow", key=f"mlflow-{entry.name}".lower()[:100],
                             description=f"The registered {entry.kind} version this run recorded.")  # fmt: skip
    return entry.ref


def with_run_name(params):
    """``params`` with ``{run}`` in its ``output_dir`` replaced by this flow run's name (the served deployments'
    default output directories are ``WORK/ui/<flow>/{run}``, so each run from the UI writes a new directory)."""
    if "{run}" not in params.output_dir:
        return params
    from prefect.runtime import flow_run

    name = flow_run.name or time.strftime("run-%Y%m%d-%H%M%S")
    return params.model_copy(update={"output_dir": params.output_dir.replace("{run}", name)})
