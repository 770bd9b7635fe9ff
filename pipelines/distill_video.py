"""Stage 2, video consistency distillation: curated text-video clips + the image teacher + a motion module teacher +
stage 1's LoRA → distilled motion layers and a complete AnimateDiffPipeline.

The steps (:mod:`pipelines.stage_job`), and what is stage 2's own in each:

1. **check inputs**: a curated video dataset (``kept/*.parquet`` with ``frames`` (PNG bytes) and ``caption`` +
   ``manifest.json``, as ``alcm curate videos`` writes it); ``--stage1``, stage 1's output (``manifest.json`` +
   ``lora/pytorch_lora_weights.safetensors``), needed unless ``distill_video.init`` is ``none`` (and not read with
   ``decoupled: false``); the teacher directory and ``distill_video.motion_adapter_dir`` digested.
2. **encode**: the first ``frames`` frames of every clip decoded safely, resized and centre-cropped to
   ``resolution``, encoded to VAE latents (C, F, h, w); the caption to text-encoder states (``precompute_text``) or
   token ids; cached. A clip that fails (an undecodable frame, fewer than ``frames`` frames) is counted with its
   reason and not trained on.
3. **train**: :class:`models.stage2.VideoConsistencyTask` under the shared loop; re-running resumes.
4. **export**: ``motion_adapter/`` (MotionAdapter directory), ``lcm_lora/`` (the spatial LoRA the target holds),
   ``export.json`` and ``pipeline/``, a complete diffusers ``AnimateDiffPipeline`` directory (:mod:`models.export`)
   that generates 4-step videos; ``preview.png`` (per prompt, the teacher at 25 DDIM steps with CFG above the
   pipeline at ``preview_steps`` LCM steps without CFG, frames left to right).
5. **manifest**: inputs (dataset, stage-1 checkpoint, teacher and motion-module digests), counts, metrics, run,
   files, settings, timings.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np

from pipelines import runtime
from pipelines.data_config import RayConfig
from pipelines.latent_cache import EncodeSpec
from pipelines.runtime import JobResult
from pipelines.stage_job import StageJob, model_digests, read_checkpoint, read_dataset, read_teacher
from pipelines.stages import DistillVideoSettings

JOB = STAGE = "distill_video"
COLUMNS = ("key", "caption", "frames")
CURATED_VIDEOS = "a curated video dataset (alcm curate videos)"
STAGE1_LORA = "lora/pytorch_lora_weights.safetensors"


def encode_spec(cfg: DistillVideoSettings) -> EncodeSpec:
    """What stage 2's encode step receives."""
    v = cfg.distill_video
    return EncodeSpec(teacher_dir=cfg.teacher.pretrained_dir, dtype=cfg.teacher.dtype, decode=cfg.decode,
                      resolution=v.resolution, frames=v.frames, text=v.precompute_text)  # fmt: skip


def build_task(teacher, consistency, video, *, stage1: str | None):
    """The stage-2 Task on this worker's device (importable target of ``functools.partial``), on the motion
    module's noise schedule. ``stage1``: stage 1's output (a path, or an object-store URI copied to this worker's
    node first, :func:`contracts.mirror.local_copy`)."""
    import torch

    from contracts.mirror import local_copy
    from models.factory import build_teacher, with_schedule
    from models.lora import read_diffusers_lora
    from models.stage2 import VideoConsistencyTask
    from models.video_unet import load_motion_adapter, motion_schedule
    from pipelines.train_loop import worker_device

    parts = build_teacher(teacher, device=worker_device())
    parts = with_schedule(parts, motion_schedule(video.motion_adapter_dir, video.beta_schedule))
    return VideoConsistencyTask(
        parts, load_motion_adapter(video.motion_adapter_dir, dtype=getattr(torch, teacher.dtype)), consistency,
        stage1_lora=read_diffusers_lora(str(local_copy(stage1) / STAGE1_LORA)) if stage1 else None,
        lora=teacher.lora, init=video.init, decoupled=video.decoupled, lora_ema=video.lora_ema,
        motion_init=video.motion_init, ema_decay=video.ema_decay, gradient_checkpointing=video.gradient_checkpointing,
    )  # fmt: skip


def write_preview(cfg: DistillVideoSettings, pipeline_dir: Path, out_file: Path) -> dict:
    """Per prompt: the teacher (image UNet + motion module, DDIM 25, CFG) above the distilled pipeline (LCM, no
    CFG), frames left to right, same seeds."""
    import torch
    from diffusers import AnimateDiffPipeline, DDIMScheduler
    from PIL import Image

    from models.export import load_animatelcm_pipeline, pipeline_schedule
    from models.sampling import image_grid
    from models.video_unet import load_motion_adapter

    v = cfg.distill_video
    guidance = cfg.consistency.teacher_guidance_scale
    t = time.monotonic()
    teacher = AnimateDiffPipeline.from_pretrained(
        cfg.teacher.pretrained_dir, motion_adapter=load_motion_adapter(v.motion_adapter_dir), local_files_only=True
    )
    teacher.scheduler = DDIMScheduler.from_config(teacher.scheduler.config, timestep_spacing="trailing",
                                                  **pipeline_schedule(pipeline_dir))  # the distillation's schedule
    teacher.set_progress_bar_config(disable=True)
    student = load_animatelcm_pipeline(pipeline_dir)
    rows = []
    for i, prompt in enumerate(v.preview_prompts):
        for pipe, n, g in ((teacher, 25, guidance), (student, v.preview_steps, 1.0)):
            video = pipe(prompt, num_frames=v.frames, num_inference_steps=n, guidance_scale=g, output_type="np",
                         height=v.resolution, width=v.resolution,
                         generator=torch.Generator().manual_seed(i)).frames[0]  # fmt: skip
            rows.append((np.asarray(video) * 255).round().astype(np.uint8))
    Image.fromarray(image_grid(rows)).save(out_file)
    return {
        "file": out_file.name,
        "prompts": list(v.preview_prompts),
        "rows": [f"teacher DDIM 25 steps, guidance_scale {guidance:g}",
                 f"AnimateLCM {v.preview_steps} LCM steps, no CFG"],
        "seconds": round(time.monotonic() - t, 1),
    }  # fmt: skip


def run(cfg: DistillVideoSettings, input_dir: Path, output_dir: Path, *, stage1: Path | None = None,
        ray_config: RayConfig | None = None, overwrite: bool = False) -> JobResult:  # fmt: skip
    """Distil the motion layers on the curated video dataset ``input_dir`` (module docstring)."""
    from models.export import write_animatelcm_pipeline
    from models.video_unet import motion_schedule

    v = cfg.distill_video
    job = StageJob(STAGE, cfg, output_dir, overwrite=overwrite)
    with job.step("checks"):
        dataset = read_dataset(input_dir, columns=COLUMNS, what=CURATED_VIDEOS)
        stage1_manifest = None
        if v.decoupled and v.init != "none":
            if stage1 is None:
                raise ValueError(f"distill_video.init={v.init!r} needs --stage1 (stage 1's output directory), or "
                                 "init: none")  # fmt: skip
            stage1 = runtime.input_location(stage1)
            stage1_manifest = read_checkpoint(stage1, stage="distill_image", needs=(STAGE1_LORA,), option="--stage1",
                                              what="stage 1's output")  # fmt: skip
        teacher = read_teacher(cfg.teacher)
        motion = model_digests(v.motion_adapter_dir)
        schedule = motion_schedule(v.motion_adapter_dir, v.beta_schedule)
    with job.output(v.train, ray_config) as out:
        data = job.encode(encode_spec(cfg), dataset, teacher, section=v)
        make_task = functools.partial(build_task, cfg.teacher, cfg.consistency, v,
                                      stage1=str(stage1) if stage1_manifest else None)  # fmt: skip
        identity = {"dataset": dataset.digest, "teacher": teacher.digests, "motion_adapter": motion,
                    "stage1": stage1_manifest["digest"] if stage1_manifest else None}  # fmt: skip
        trained = job.train(make_task, data, v.train, inputs=identity, export_into=out.dir)
        with job.step("export"):
            lora = out.dir / "lcm_lora" / "pytorch_lora_weights.safetensors"
            write_animatelcm_pipeline(
                teacher.root, out.dir / "motion_adapter", out.dir / "pipeline",
                lora_file=lora if lora.is_file() else None, schedule=schedule,
                info={"stage": STAGE, "init": v.init, "decoupled": v.decoupled, "frames": v.frames,
                      "resolution": v.resolution, "noise_schedule": schedule or "the teacher's"},
            )  # fmt: skip
        preview = None
        if v.preview_prompts:
            with job.step("preview"):
                preview = write_preview(cfg, out.dir / "pipeline", out.dir / "preview.png")
        inputs = {
            "dataset": dataset.record(),
            "stage1": {"digest": stage1_manifest["digest"], "name": stage1_manifest.get("name"), "path": str(stage1)}
            if stage1_manifest else None,
            "teacher": teacher.record(),
            "motion_adapter": {"path": str(Path(v.motion_adapter_dir)), "digests": motion},
        }  # fmt: skip
        return job.commit(out, name=f"{cfg.profile}-animatelcm-t2v", inputs=inputs, counts=data.counts,
                          metrics=trained.metrics, export=trained.export, run=trained.run, latent_cache=data.cache,
                          preview=preview)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.distill_video --input CURATED_VIDEOS --stage1 STAGE1 --output DIR [--config ...]``."""
    return runtime.job_main(
        argv,
        module="pipelines.distill_video",
        doc=__doc__,
        input_help="curated video dataset (kept/ + manifest.json)",
        output_help="new directory for motion_adapter/, lcm_lora/, pipeline/, preview.png and manifest.json",
        extra_inputs={"stage1": "stage 1's output directory (its LoRA); not needed with init none"},
    )


if __name__ == "__main__":
    raise SystemExit(main())
