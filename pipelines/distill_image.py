"""Stage 1, image consistency distillation: a curated image dataset + a frozen SD teacher → a spatial LCM-LoRA.

The steps (:mod:`pipelines.stage_job`), and what is stage 1's own in each:

1. **check inputs**: a curated image dataset (``kept/*.parquet`` with ``key``, ``caption``, ``image`` +
   ``manifest.json``, as ``alcm curate images`` writes it; its digest is this run's data lineage) and the teacher
   (``teacher.pretrained_dir``, its weights digested).
2. **encode**: every kept image decoded safely, resized (shorter side) and centre-cropped to
   ``distill_image.resolution``, encoded to its VAE posterior mean × ``scaling_factor``; its caption to the text
   encoder's last hidden state (``precompute_text``) or token ids; cached (:mod:`pipelines.latent_cache`). With
   ``precompute_latents: false`` the workers get decoded pixels and encode them every step.
3. **train**: :class:`models.stage1.ImageConsistencyTask` under the shared loop; re-running resumes.
4. **export + preview**: ``lora/pytorch_lora_weights.safetensors`` (diffusers format) and
   ``lora/lcm_lora_kohya.safetensors`` (kohya layout), loaded back into a ``StableDiffusionPipeline`` with
   ``LCMScheduler`` to sample ``preview_prompts`` into ``preview.png`` (teacher 25-step DDIM with CFG above, the LoRA
   at ``preview_steps`` LCM steps without CFG below, same seeds).
5. **manifest**: inputs (dataset, teacher), counts, metrics, run, latent cache, preview, files, settings, timings.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

from pipelines import runtime
from pipelines.data_config import RayConfig
from pipelines.latent_cache import EncodeSpec
from pipelines.runtime import JobResult
from pipelines.stage_job import StageJob, read_dataset, read_teacher
from pipelines.stages import DistillImageSettings

JOB = STAGE = "distill_image"
COLUMNS = ("key", "caption", "image")


def encode_spec(cfg: DistillImageSettings) -> EncodeSpec:
    """What stage 1's encode step receives."""
    d = cfg.distill_image
    return EncodeSpec(teacher_dir=cfg.teacher.pretrained_dir, dtype=cfg.teacher.dtype, decode=cfg.decode,
                      resolution=d.resolution, latents=d.precompute_latents, text=d.precompute_text)  # fmt: skip


def build_task(teacher, consistency, *, target: str = "ema", ema_decay: float = 0.95,
               gradient_checkpointing: bool = False):
    """The stage-1 Task on this worker's device: what the job hands the shared loop, as ``functools.partial``
    (importable, so Ray workers unpickle it)."""
    from models.factory import build_teacher
    from models.stage1 import ImageConsistencyTask
    from pipelines.train_loop import worker_device

    parts = build_teacher(teacher, device=worker_device())
    return ImageConsistencyTask(parts, teacher.lora, consistency, target=target, ema_decay=ema_decay,
                                gradient_checkpointing=gradient_checkpointing)


def write_preview(cfg: DistillImageSettings, lora_dir: Path, out_file: Path) -> dict:
    """Teacher (25-step DDIM, CFG at the middle of the training w range) above the LoRA (LCM, no CFG), same seeds."""
    from PIL import Image

    from models.sampling import image_grid, load_pipeline, sample

    d = cfg.distill_image
    prompts = list(d.preview_prompts)
    seeds = list(range(len(prompts)))
    guidance = cfg.consistency.teacher_guidance_scale
    t = time.monotonic()
    teacher = load_pipeline(cfg.teacher.pretrained_dir, scheduler="ddim")
    top = sample(teacher, prompts, steps=25, guidance_scale=guidance, seeds=seeds)
    student = load_pipeline(cfg.teacher.pretrained_dir, scheduler="lcm", lora_dir=lora_dir)
    bottom = sample(student, prompts, steps=d.preview_steps, guidance_scale=1.0, seeds=seeds)
    Image.fromarray(image_grid([top, bottom])).save(out_file)
    return {
        "file": out_file.name,
        "prompts": prompts,
        "rows": [f"teacher DDIM 25 steps, guidance_scale {guidance:g}", f"LCM-LoRA {d.preview_steps} steps, no CFG"],
        "seconds": round(time.monotonic() - t, 1),
    }


def run(cfg: DistillImageSettings, input_dir: Path, output_dir: Path, *, ray_config: RayConfig | None = None,
        overwrite: bool = False) -> JobResult:  # fmt: skip
    """Distil a spatial LCM-LoRA from ``cfg.teacher`` on the curated dataset ``input_dir`` (module docstring)."""
    d = cfg.distill_image
    job = StageJob(STAGE, cfg, output_dir, overwrite=overwrite)
    with job.step("checks"):
        dataset = read_dataset(input_dir, columns=COLUMNS, what="a curated image dataset (alcm curate images)")
        teacher = read_teacher(cfg.teacher)
    with job.output(d.train, ray_config) as out:
        data = job.encode(encode_spec(cfg), dataset, teacher, section=d)
        make_task = functools.partial(build_task, cfg.teacher, cfg.consistency, target=d.target, ema_decay=d.ema_decay,
                                      gradient_checkpointing=d.gradient_checkpointing)  # fmt: skip
        trained = job.train(make_task, data, d.train, inputs={"dataset": dataset.digest, "teacher": teacher.digests},
                            export_into=out.dir / "lora")  # fmt: skip
        preview = None
        if d.preview_prompts:
            with job.step("preview"):
                preview = write_preview(cfg, out.dir / "lora", out.dir / "preview.png")
        return job.commit(
            out, name=f"{cfg.profile}-lcm-lora", inputs={"dataset": dataset.record(), "teacher": teacher.record()},
            counts=data.counts, metrics=trained.metrics, export=trained.export, run=trained.run,
            latent_cache=data.cache, preview=preview,
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.distill_image --input CURATED --output DIR [--config PROFILE|JSON] [--set k=v ...]``."""
    return runtime.job_main(
        argv,
        module="pipelines.distill_image",
        doc=__doc__,
        input_help="curated image dataset (kept/ + manifest.json)",
        output_help="new directory for lora/, preview.png and manifest.json",
    )


if __name__ == "__main__":
    raise SystemExit(main())
