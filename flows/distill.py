"""Flows ``distill-image``, ``distill-video`` and ``adapt``: the three distillation stages (a spatial
LCM-LoRA on curated images; motion layers on curated videos; control and image-to-video adapters).

Validate the parameters and the config (naming a bad key before any work) → run the job (here against Ray, or
submitted to the cluster) → read its manifest, the run's record until the registry takes it over → publish a
summary artifact (inputs with digests, metrics, where the LoRA is).
"""

from __future__ import annotations

from typing import ClassVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from pydantic import AliasChoices, Field

from flows.common import IOJobParams, apply_env_defaults, run_io_job
from flows.record import record_output, with_run_name
from pipelines.config import Config, load_config
from pipelines.stages import stage

DISTILL_IMAGE, DISTILL_VIDEO, ADAPT = stage("distill_image"), stage("distill_video"), stage("adapt")


class DistillImageParams(IOJobParams):
    """Parameters of the ``distill-image`` flow."""

    input_dir: str = Field(description="Curated image dataset (kept/ + manifest.json), as `alcm curate images` writes.")
    output_dir: str = Field(description="New directory for lora/, preview.png and manifest.json.")


@task(name="run-distill-image-job", cache_policy=NONE)
def run_distill_image_job(cfg: Config, params: DistillImageParams) -> dict:
    """Run the stage-1 job (here, or submitted to the cluster) and return its manifest."""
    return run_io_job(DISTILL_IMAGE.name, cfg, params)


def summary_markdown(manifest: dict, output_dir: str) -> str:
    """The stage-1 summary artifact: inputs, data counts, metrics, outputs."""
    inputs, metrics, counts = manifest["inputs"], manifest["metrics"], manifest["counts"]
    teacher = inputs["teacher"]
    lines = [
        f"### Stage 1 (image consistency distillation): `{manifest['name']}`",
        "",
        "| input | value |",
        "|---|---|",
        f"| dataset | `{inputs['dataset']['name']}` `{inputs['dataset']['digest']}` |",
        f"| teacher | `{teacher['pretrained_dir']}` ({len(teacher['digests'])} weight files) |",
        f"| rows | {counts['rows']} kept rows, {counts['encoded']} trained on, failed {counts['failed'] or 'none'} |",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.5g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()],
        "",
        f"LoRA: `{output_dir}/lora/` (diffusers `pytorch_lora_weights.safetensors`, kohya "
        f"`lcm_lora_kohya.safetensors`); run `{manifest['run']['name']}`, checkpoint `{manifest['run']['checkpoint']}`",
    ]
    if manifest.get("preview"):
        lines.append(f"\nPreview: `{output_dir}/preview.png` ({'; '.join(manifest['preview']['rows'])})")
    return "\n".join(lines)


@flow(name=DISTILL_IMAGE.flow)
def distill_image_flow(params: DistillImageParams) -> dict:
    """Stage 1: validate → run the job → read its manifest → publish a summary."""
    apply_env_defaults()
    params = with_run_name(params)
    logger = get_run_logger()
    cfg = load_config(params.profile, params.overrides)
    manifest = run_distill_image_job(cfg, params)
    registered = record_output(params.output_dir)
    create_markdown_artifact(
        key="distill-image-summary",
        markdown=summary_markdown(manifest, params.output_dir),
        description="Stage 1 summary",
    )
    logger.info("stage 1 finished at step %s (loss %s); LoRA in %s/lora", manifest["metrics"].get("step"),
                manifest["metrics"].get("loss"), params.output_dir)  # fmt: skip
    return {**manifest, "registered": registered}


# ------------------------------------------------------------------------------------------------ stages 2 and 3


class DistillVideoParams(IOJobParams):
    """Parameters of the ``distill-video`` flow."""

    FORM_INPUTS: ClassVar[tuple[str, ...]] = ("input_dir", "stage1")

    input_dir: str = Field(description="Curated video dataset (kept/ + manifest.json), as `alcm curate videos` writes.")
    stage1: str | None = Field(
        None,
        description="Stage 1's output (its LoRA); required unless distill_video.init is none.",
        validation_alias=AliasChoices("stage1", "stage1_dir"),  # stage1_dir: its name before stages had one name
    )
    output_dir: str = Field(description="New directory for motion_adapter/, lcm_lora/, pipeline/ and manifest.json.")

    def extra_inputs(self) -> dict[str, str]:
        return {"stage1": self.stage1} if self.stage1 else {}


class AdaptParams(IOJobParams):
    """Parameters of the ``adapt`` flow."""

    FORM_INPUTS: ClassVar[tuple[str, ...]] = ("input_dir", "control_data", "video_data")

    input_dir: str = Field(description="Stage 2's output (manifest.json + pipeline/), as `alcm distill video` writes.")
    control_data: str | None = Field(
        None, description="Recaptioned dancer set with pose control frames (`alcm recaption`), for the control adapter."
    )
    video_data: str | None = Field(None, description="Curated video dataset, for the image-to-video adapter.")
    output_dir: str = Field(description="New directory for controlnet/, image_to_video_adapter/ and manifest.json.")

    def extra_inputs(self) -> dict[str, str]:
        extra = {"control_data": self.control_data, "video_data": self.video_data}
        return {k: v for k, v in extra.items() if v}


@task(name="run-distill-video-job", cache_policy=NONE)
def run_distill_video_job(cfg: Config, params: DistillVideoParams) -> dict:
    """Run the stage-2 job (here, or submitted to the cluster) and return its manifest."""
    return run_io_job(DISTILL_VIDEO.name, cfg, params)


@task(name="run-adapt-job", cache_policy=NONE)
def run_adapt_job(cfg: Config, params: AdaptParams) -> dict:
    """Run the stage-3 job (here, or submitted to the cluster) and return its manifest."""
    return run_io_job(ADAPT.name, cfg, params)


def _metrics_table(metrics: dict) -> list[str]:
    return ["| metric | value |", "|---|---|"] + [
        f"| {k} | {v:.5g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()
    ]


def video_summary_markdown(manifest: dict, output_dir: str) -> str:
    """The stage-2 summary artifact."""
    inputs, counts, export = manifest["inputs"], manifest["counts"], manifest["export"]
    stage1 = inputs.get("stage1")
    lines = [
        f"### Stage 2 (video consistency distillation): `{manifest['name']}`",
        "",
        "| input | value |",
        "|---|---|",
        f"| dataset | `{inputs['dataset']['name']}` `{inputs['dataset']['digest']}` |",
        f"| stage 1 | `{stage1['digest']}` |" if stage1 else "| stage 1 | not used |",
        f"| motion module | `{inputs['motion_adapter']['path']}` |",
        f"| clips | {counts['rows']} kept, {counts['encoded']} trained on, failed {counts['failed'] or 'none'} |",
        f"| init | {export['init']} (decoupled: {export['decoupled']}, "
        f"target LoRA scale {export['target_lora_scale']}) |",
        "",
        *_metrics_table(manifest["metrics"]),
        "",
        f"Pipeline: `{output_dir}/pipeline/` (AnimateDiffPipeline + `lcm_lora/`, 4 steps, guidance_scale 1); "
        f"motion module: `{output_dir}/motion_adapter/`; run `{manifest['run']['name']}`",
    ]
    if manifest.get("preview"):
        lines.append(f"\nPreview: `{output_dir}/preview.png` ({'; '.join(manifest['preview']['rows'])})")
    return "\n".join(lines)


def adapt_summary_markdown(manifest: dict, output_dir: str) -> str:
    """The stage-3 summary artifact: one section per adapter."""
    lines = [f"### Stage 3 (teacher-free adaptation): `{manifest['name']}`", ""]
    lines.append(f"Base: stage 2 `{manifest['inputs']['stage2']['digest']}`")
    for adapter, r in manifest["adapters"].items():
        c = r["counts"]
        lines += [
            "",
            f"#### {adapter}",
            f"data `{r['dataset']['name']}` `{r['dataset']['digest']}`: {c['rows']} clips, {c['encoded']} trained on, "
            f"failed {c['failed'] or 'none'}; exported {', '.join(f'`{f}`' for f in r['export']['files'])}",
            "",
            *_metrics_table(r["metrics"]),
        ]
    lines.append(f"\nOutputs under `{output_dir}/`")
    return "\n".join(lines)


@flow(name=DISTILL_VIDEO.flow)
def distill_video_flow(params: DistillVideoParams) -> dict:
    """Stage 2: validate → run the job → read its manifest → publish a summary."""
    apply_env_defaults()
    params = with_run_name(params)
    logger = get_run_logger()
    cfg = load_config(params.profile, params.overrides)
    manifest = run_distill_video_job(cfg, params)
    registered = record_output(params.output_dir)
    create_markdown_artifact(
        key="distill-video-summary",
        markdown=video_summary_markdown(manifest, params.output_dir),
        description="Stage 2 summary",
    )
    logger.info("stage 2 finished at step %s; pipeline in %s/pipeline", manifest["metrics"].get("step"),
                params.output_dir)  # fmt: skip
    return {**manifest, "registered": registered}


@flow(name=ADAPT.flow)
def adapt_flow(params: AdaptParams) -> dict:
    """Stage 3: validate → run the job → read its manifest → publish a summary."""
    apply_env_defaults()
    params = with_run_name(params)
    logger = get_run_logger()
    cfg = load_config(params.profile, params.overrides)
    manifest = run_adapt_job(cfg, params)
    registered = record_output(params.output_dir)
    create_markdown_artifact(
        key="adapt-summary",
        markdown=adapt_summary_markdown(manifest, params.output_dir),
        description="Stage 3 summary",
    )
    logger.info("stage 3 finished: %s in %s", ", ".join(manifest["adapters"]), params.output_dir)
    return {**manifest, "registered": registered}
