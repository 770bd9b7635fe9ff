"""Flows ``recaption`` (BLIP captions for video clips) and ``curate-videos`` (text-video curation)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from pydantic import Field

from flows.common import IOJobParams, apply_env_defaults, run_io_job
from flows.curate import reason_rows
from flows.record import record_output, with_run_name
from pipelines.config import Config, load_config
from pipelines.stages import stage

RECAPTION, CURATE_VIDEOS = stage("recaption"), stage("curate_videos")

BACKENDS = ("transformers", "lavis")


class VideoJobParams(IOJobParams):
    """Inputs and outputs of a video job."""

    input_dir: str = Field(
        description="Directory of TikTok-style sequences (SEQ/images/0001.png), video files with .txt captions, "
        "or video2dataset webdataset tars."
    )
    output_dir: str = Field(description="New directory for the dataset, audit/ and manifest.json.")


class RecaptionParams(VideoJobParams):
    """Parameters of the ``recaption`` flow."""

    backend: str | None = Field(
        None, description="Captioner backend: transformers or lavis (default: the profile's captioner.backend)."
    )

    def config_overrides(self) -> list[str]:
        """The profile overrides, with the backend choice last."""
        if self.backend is None:
            return list(self.overrides)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: choose {' or '.join(BACKENDS)}")
        return [*self.overrides, f"captioner.backend={self.backend}"]


@task(name="run-recaption-job", cache_policy=NONE)
def run_recaption_job(cfg: Config, params: RecaptionParams) -> dict:
    """Run the recaptioning job (here, or submitted to the cluster) and return its manifest."""
    return run_io_job(RECAPTION.name, cfg, params)


@task(name="run-curate-videos-job", cache_policy=NONE)
def run_curate_videos_job(cfg: Config, params: VideoJobParams) -> dict:
    """Run the video curation job (here, or submitted to the cluster) and return its manifest."""
    return run_io_job(CURATE_VIDEOS.name, cfg, params)


def _summary(title: str, manifest: dict, output_dir: str, dataset: str) -> str:
    counts = manifest["counts"]
    return (
        f"### {title}: {counts['input']} inputs, {counts['clips']} clips\n\n| decision | clips |\n|---|---|\n"
        + "".join(f"| {d} | {n} |\n" for d, n in counts["by_decision"].items())
        + f"\nOutput: `{output_dir}` ({dataset}, audit/, manifest.json), version `{manifest['version']}`"
    )


@flow(name=RECAPTION.flow)
def recaption_videos_flow(params: RecaptionParams) -> dict:
    """Recaption video clips with BLIP: validate → run the job → read its manifest → publish a summary."""
    apply_env_defaults()
    params = with_run_name(params)
    logger = get_run_logger()
    cfg = load_config(params.profile, params.config_overrides())
    manifest = run_recaption_job(cfg, params)
    registered = record_output(params.output_dir)
    create_table_artifact(
        key="recaption-reasons",
        table=reason_rows(manifest),
        description=f"Clips per reject/quarantine reason for {params.input_dir}",
    )
    create_markdown_artifact(
        key="recaption-summary",
        markdown=_summary("Recaptioned", manifest, params.output_dir, "captioned/")
        + f"\n\nCaptioner: `{cfg.captioner.name}` ({cfg.captioner.backend}), aggregation "
        f"`{cfg.recaption.aggregation}` over frames at {list(cfg.recaption.frames_at)}",
        description="Recaptioning summary",
    )
    by = manifest["counts"]["by_decision"]
    logger.info("captioned %d clips (%d rejected, %d quarantined); outputs in %s", by["kept"], by["rejected"],
                by["quarantined"], params.output_dir)  # fmt: skip
    return {**manifest, "registered": registered}


@flow(name=CURATE_VIDEOS.flow)
def curate_videos_flow(params: VideoJobParams) -> dict:
    """Curate text-video data: validate → run the job → read its manifest → publish counts per reason."""
    apply_env_defaults()
    params = with_run_name(params)
    logger = get_run_logger()
    cfg = load_config(params.profile, params.overrides)
    manifest = run_curate_videos_job(cfg, params)
    registered = record_output(params.output_dir)
    create_table_artifact(
        key="curate-videos-reasons",
        table=reason_rows(manifest),
        description=f"Clips per reject/quarantine reason for {params.input_dir}",
    )
    create_markdown_artifact(
        key="curate-videos-summary",
        markdown=_summary("Curated videos", manifest, params.output_dir, "kept/"),
        description="Video curation summary",
    )
    by = manifest["counts"]["by_decision"]
    logger.info("kept %d, rejected %d, quarantined %d clips; outputs in %s", by["kept"], by["rejected"],
                by["quarantined"], params.output_dir)  # fmt: skip
    return {**manifest, "registered": registered}
