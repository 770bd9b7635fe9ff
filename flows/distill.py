"""Flow ``distill-image``: stage 1, image consistency distillation (a spatial LCM-LoRA) on a curated image dataset.

Validate the parameters and the config (naming a bad key before any work) → run the job (here against Ray, or
submitted to the cluster) → read its manifest, the run's record until the registry takes it over → publish a
summary artifact (inputs with digests, metrics, where the LoRA is).
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from pydantic import Field

from flows.common import IOJobParams, apply_env_defaults, run_io_job
from pipelines import distill_image
from pipelines.config import Config, load_config


class DistillImageParams(IOJobParams):
    """Parameters of the ``distill-image`` flow."""

    input_dir: str = Field(description="Curated image dataset (kept/ + manifest.json), as `alcm curate images` writes.")
    output_dir: str = Field(description="New directory for lora/, preview.png and manifest.json.")


@task(name="run-distill-image-job", cache_policy=NONE)
def run_distill_image_job(cfg: Config, params: DistillImageParams) -> dict:
    """Run the stage-1 job (here, or submitted to the cluster) and return its manifest."""
    return run_io_job(distill_image, cfg, params)


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


@flow(name="distill-image")
def distill_image_flow(params: DistillImageParams) -> dict:
    """Stage 1: validate → run the job → read its manifest → publish a summary."""
    apply_env_defaults()
    logger = get_run_logger()
    cfg = load_config(params.profile, params.overrides)
    manifest = run_distill_image_job(cfg, params)
    create_markdown_artifact(
        key="distill-image-summary",
        markdown=summary_markdown(manifest, params.output_dir),
        description="Stage 1 summary",
    )
    logger.info("stage 1 finished at step %s (loss %s); LoRA in %s/lora", manifest["metrics"].get("step"),
                manifest["metrics"].get("loss"), params.output_dir)  # fmt: skip
    return manifest
