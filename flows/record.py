"""The flows' one write to the registry: record a finished job output (a Prefect task, so it shows in the run)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from flows.common import open_registry


@task(name="record-in-registry", cache_policy=NONE)
def record_output(output_dir: str) -> str:
    """Register a finished job output, after the job outputs it was made from; return its ``NAME@VERSION``.
    Idempotent: a re-run that produced the same content returns the same version."""
    entry = open_registry().register(output_dir)
    get_run_logger().info("registered %s (%s, %s)", entry.ref, entry.type, entry.digest)
    return entry.ref
