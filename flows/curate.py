"""Flow ``curate-images`` (stage ``curate_images``): curate image-text data for quality and watermarks, and publish
the reject-reason table."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from pydantic import Field

from contracts.reasons import ALL_REASONS, QUARANTINE_REASONS, percentile_lines
from flows.common import IOJobParams, apply_env_defaults, run_io_job
from flows.record import record_output, with_run_name
from pipelines.config import Config, load_config
from pipelines.stages import stage

STAGE = stage("curate_images")


class CurateImagesParams(IOJobParams):
    """Parameters of the ``curate-images`` flow."""

    input_dir: str = Field(description="Directory of img2dataset Parquet shards, webdataset tars or captioned images.")
    output_dir: str = Field(description="New directory for kept/, audit/ and manifest.json.")


@task(name="run-curation-job", cache_policy=NONE)
def run_curation_job(cfg: Config, params: CurateImagesParams) -> dict:
    """Run the Ray Data job (here, or submitted to the cluster) and return its manifest."""
    return run_io_job(STAGE.name, cfg, params)


def reason_rows(manifest: dict) -> list[dict]:
    """The reject-reason table: one row per reason seen, with its decision, count and meaning."""
    rows = []
    for reason, count in sorted(manifest["counts"]["by_reason"].items(), key=lambda kv: (-kv[1], kv[0])):
        decision = "quarantined" if reason in QUARANTINE_REASONS else "rejected"
        rows.append({"reason": reason, "decision": decision, "rows": count, "meaning": ALL_REASONS.get(reason, "")})
    return rows


@flow(name=STAGE.flow)
def curate_images_flow(params: CurateImagesParams) -> dict:
    """Curate image-text data: validate → run the job → read its manifest → publish counts per reason."""
    apply_env_defaults()
    params = with_run_name(params)
    logger = get_run_logger()
    cfg = load_config(params.profile, params.overrides)
    manifest = run_curation_job(cfg, params)
    registered = record_output(params.output_dir)
    counts = manifest["counts"]
    create_table_artifact(
        key="curate-images-reasons",
        table=reason_rows(manifest),
        description=f"Rows per reject/quarantine reason for {params.input_dir} ({counts['input']} input rows)",
    )
    by = counts["by_decision"]
    create_markdown_artifact(
        key="curate-images-summary",
        markdown=(
            f"### Curated {counts['input']} rows\n\n| decision | rows |\n|---|---|\n"
            + "".join(f"| {d} | {n} |\n" for d, n in by.items())
            + "".join(f"\n- top percent: {line}" for line in percentile_lines(manifest.get("percentiles")))
            + f"\n\nOutput: `{params.output_dir}` (kept/, audit/, manifest.json), version `{manifest['version']}`"
        ),
        description="Curation summary",
    )
    logger.info(
        "kept %d, rejected %d, quarantined %d of %d rows; outputs in %s (kept/, audit/, manifest.json)",
        by["kept"],
        by["rejected"],
        by["quarantined"],
        counts["input"],
        params.output_dir,
    )
    return {**manifest, "registered": registered}
