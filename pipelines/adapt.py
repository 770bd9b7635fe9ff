"""Stage 3, teacher-free adaptation: stage 2's video consistency model + pose-controlled dancers (control) and curated
clips (image-to-video) → a ControlNet and an image-to-video adapter that work at 1–4 steps.

The steps (:mod:`pipelines.stage_job`), per adapter in ``adapt.adapters``, and what is stage 3's own in each:

1. **check inputs**: ``--input`` is stage 2's output (``manifest.json`` + ``pipeline/``, the AnimateDiffPipeline
   with its LCM-LoRA); ``--control-data`` the recaptioned dancer set (``captioned/*.parquet`` with ``frames``,
   ``control`` pose frames and BLIP ``caption``, as ``alcm recaption`` writes it) for ``control``; ``--video-data``
   a curated video dataset for ``image_to_video``. Each adapter's data is required only when it is trained;
   ``adapt.control_init_dir`` (an image ControlNet to adapt) is digested when set.
2. **encode**: latents and caption states, and for ``control`` the pose frames as uint8; cached like stage 2's.
3. **train**: :class:`models.stage3.AdapterConsistencyTask`, one run per adapter named
   ``<train.name>-<adapter>-<output>-<digest>`` (re-running resumes).
4. **export**: ``controlnet/`` (diffusers ControlNetModel, loadable by ``AnimateDiffControlNetPipeline``) and
   ``image_to_video_adapter/`` (:func:`models.adapters.save_i2v_adapter`; load with
   :func:`models.adapters.load_i2v_adapter`), ``<adapter>_lora/`` per adapter when ``tune_lora``.
5. **manifest** (``kind: checkpoint``, stage ``adapt``): inputs (stage-2 checkpoint digest, each dataset),
   per adapter its counts, metrics, run, export and latent cache, files, settings, timings.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pipelines import runtime
from pipelines.data_config import RayConfig
from pipelines.latent_cache import EncodeSpec
from pipelines.runtime import JobResult
from pipelines.stage_job import StageJob, model_digests, read_checkpoint, read_dataset, read_teacher
from pipelines.stages import AdaptSettings

JOB = STAGE = "adapt"

DATA = {
    "control": ("control_data", ("key", "caption", "frames", "control"),
                "a recaptioned dancer set with pose control frames (alcm recaption)"),
    "image_to_video": ("video_data", ("key", "caption", "frames"), "a curated video dataset (alcm curate videos)"),
}  # fmt: skip
"""Per adapter: the job option that feeds it, the columns it reads, what the option must point at."""


def encode_spec(cfg: AdaptSettings, adapter: str) -> EncodeSpec:
    """What stage 3's encode step receives for ``adapter``."""
    a = cfg.adapt
    return EncodeSpec(teacher_dir=cfg.teacher.pretrained_dir, dtype=cfg.teacher.dtype, decode=cfg.decode,
                      resolution=a.resolution, frames=a.frames, control=adapter == "control")  # fmt: skip


def build_task(teacher, consistency, adapt, *, adapter: str, stage2: str):
    """The stage-3 Task on this worker's device (importable target of ``functools.partial``): the stage-2 pipeline's
    UNet with its LCM-LoRA fused is the frozen base (``stage2``: its output, a path or an object-store URI copied to
    this worker's node first, :func:`contracts.mirror.local_copy`)."""
    from contracts.mirror import local_copy
    from models.export import load_animatelcm_pipeline, pipeline_schedule
    from models.factory import build_teacher, with_schedule
    from models.stage3 import AdapterConsistencyTask
    from pipelines.train_loop import worker_device

    device = worker_device()
    pipeline_dir = str(local_copy(stage2) / "pipeline")
    parts = with_schedule(build_teacher(teacher, device=device), pipeline_schedule(pipeline_dir))  # stage 2's
    unet = load_animatelcm_pipeline(pipeline_dir, fuse_lora=True, device=str(device)).unet
    return AdapterConsistencyTask(
        parts, unet, consistency, adapter=adapter, control_init_dir=adapt.control_init_dir,
        control_scale=adapt.control_scale, motion_scale=adapt.motion_scale,
        tune_lora=teacher.lora if adapt.tune_lora else None, ema_decay=adapt.ema_decay,
        gradient_checkpointing=adapt.gradient_checkpointing,
    )  # fmt: skip


def run(cfg: AdaptSettings, input_dir: Path, output_dir: Path, *, control_data: Path | None = None,
        video_data: Path | None = None, ray_config: RayConfig | None = None,
        overwrite: bool = False) -> JobResult:  # fmt: skip
    """Train ``cfg.adapt.adapters`` against the stage-2 model in ``input_dir`` (module docstring)."""
    a = cfg.adapt
    job = StageJob(STAGE, cfg, output_dir, overwrite=overwrite)
    given = {"control_data": control_data, "video_data": video_data}
    with job.step("checks"):
        stage2_dir = runtime.input_location(input_dir)
        stage2 = read_checkpoint(stage2_dir, stage="distill_video", needs=("pipeline/model_index.json",),
                                 option="--input", what="stage 2's output (alcm distill video)")  # fmt: skip
        datasets = {}
        for adapter in a.adapters:
            option, columns, what = DATA[adapter]
            if given[option] is None:
                raise ValueError(f"adapt.adapters has {adapter!r}: pass --{option.replace('_', '-')} DIR")
            datasets[adapter] = read_dataset(given[option], columns=columns, what=what,
                                             option=f"--{option.replace('_', '-')}")  # fmt: skip
        teacher = read_teacher(cfg.teacher)
        control_init = model_digests(a.control_init_dir) if a.control_init_dir and "control" in a.adapters else None
    results: dict[str, dict] = {}
    with job.output(a.train, ray_config) as out:
        for adapter, dataset in datasets.items():
            option = f"--{DATA[adapter][0].replace('_', '-')}"
            data = job.encode(encode_spec(cfg, adapter), dataset, teacher, section=a, option=option,
                              step=f"{adapter}_encode")  # fmt: skip
            make_task = functools.partial(build_task, cfg.teacher, cfg.consistency, a, adapter=adapter,
                                          stage2=str(stage2_dir))  # fmt: skip
            identity = {"stage2": stage2["digest"], "dataset": dataset.digest, "teacher": teacher.digests,
                        "adapter": adapter, "control_init": control_init}  # fmt: skip
            trained = job.train(make_task, data, a.train, inputs=identity, export_into=out.dir,
                                label=f"{adapter}-{job.output_name}", keep_description=False,
                                step=f"{adapter}_train")  # fmt: skip
            results[adapter] = {"dataset": dataset.record(), "counts": data.counts, "export": trained.export,
                                "run": trained.run, "metrics": trained.metrics, "latent_cache": data.cache}  # fmt: skip
        inputs = {
            "stage2": {"digest": stage2["digest"], "name": stage2.get("name"), "path": str(stage2_dir)},
            "teacher": teacher.record(),
            "control_init": {"path": a.control_init_dir, "digests": control_init} if control_init else None,
            **{f"{adapter}_dataset": r["dataset"] for adapter, r in results.items()},
        }
        return job.commit(out, name=f"{cfg.profile}-animatelcm-adapters", inputs=inputs, adapters=results)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.adapt --input STAGE2 --control-data DANCERS --video-data CURATED --output DIR``."""
    return runtime.job_main(
        argv,
        module="pipelines.adapt",
        doc=__doc__,
        input_help="stage 2's output directory (manifest.json + pipeline/)",
        output_help="new directory for controlnet/, image_to_video_adapter/ and manifest.json",
        extra_inputs={
            "control_data": "recaptioned dancer set with pose control frames (for the control adapter)",
            "video_data": "curated video dataset (for the image-to-video adapter)",
        },
    )


if __name__ == "__main__":
    raise SystemExit(main())
