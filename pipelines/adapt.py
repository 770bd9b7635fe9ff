"""Stage 3, teacher-free adaptation: stage 2's video consistency model + pose-controlled dancers (control) and curated
clips (image-to-video) → a ControlNet and an image-to-video adapter that work at 1–4 steps.

Steps and where they run, per adapter in ``adapt.adapters``:

1. **check inputs** (driver): ``--input`` is stage 2's output (``manifest.json`` + ``pipeline/``, the
   AnimateDiffPipeline with its LCM-LoRA); ``--control-data`` the recaptioned dancer set (``captioned/*.parquet`` with
   ``frames``, ``control`` pose frames and BLIP ``caption``, as ``alcm recaption`` writes it) for ``control``;
   ``--video-data`` a curated video dataset for ``image_to_video``. Each adapter's data is required only when it is
   trained; ``adapt.control_init_dir`` (an image ControlNet to adapt) is digested when set.
2. **encode** (Ray Data actor pool, :class:`pipelines.distill_video.VideoEncoder`): latents, caption states, and for
   ``control`` the pose frames as uint8; cached like stage 2's. Failures are counted by reason.
3. **train** (Ray Train + DeepSpeed, the shared loop): :class:`models.stage3.AdapterConsistencyTask`, one run per
   adapter named ``<train.name>-<adapter>-<output>-<digest>`` (re-running resumes).
4. **export**: ``controlnet/`` (diffusers ControlNetModel, loadable by ``AnimateDiffControlNetPipeline``) and
   ``image_to_video_adapter/`` (:func:`models.adapters.save_i2v_adapter`; load with
   :func:`models.adapters.load_i2v_adapter`), ``<adapter>_lora/`` per adapter when ``tune_lora``.
5. **manifest** (``kind: checkpoint``, stage ``teacher_free_adaptation``): inputs (stage-2 checkpoint digest, each
   dataset), per-adapter counts, metrics, run, export, files, config, timings.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from contracts.manifest import read_manifest, verify_files
from contracts.publish import staged_output
from pipelines import runtime
from pipelines.config import Config, to_dict
from pipelines.distill_video import (
    VideoEncoder,
    adapter_digests,
    cached_dataset,
    checkpoint_manifest,
    encode_cached,
    read_video_dataset,
    run_name,
    video_cache_key,
)
from pipelines.storage import check_storage

log = logging.getLogger(__name__)

JOB = "adapt"
STAGE = "teacher_free_adaptation"


@dataclass(frozen=True)
class AdaptResult:
    """Where stage 3 put its outputs, and what its manifest says."""

    output: Path
    manifest: dict


def read_stage2(stage2_dir: Path) -> dict:
    """Stage 2's manifest (its ``pipeline/`` must exist)."""
    stage2_dir = Path(stage2_dir)
    if not (stage2_dir / "manifest.json").is_file() or not (stage2_dir / "pipeline" / "model_index.json").is_file():
        raise FileNotFoundError(
            f"--input {stage2_dir}: expected stage 2's output (manifest.json and pipeline/), "
            "as alcm distill video writes it"
        )
    manifest = read_manifest(stage2_dir)
    if manifest.get("stage") != "video_consistency_distillation":
        raise ValueError(f"--input {stage2_dir}: manifest stage is {manifest.get('stage')!r}, not stage 2's")
    verify_files(stage2_dir, manifest)
    return manifest


def build_stage3_task(teacher, consistency, adapt, *, adapter: str, pipeline_dir: str, seed: int = 0):
    """The stage-3 Task on this worker's device (importable target of ``functools.partial``): the stage-2 pipeline's
    UNet with its LCM-LoRA fused is the frozen base."""
    import torch

    from models.export import load_animatelcm_pipeline
    from models.factory import build_teacher
    from models.stage3 import AdapterConsistencyTask

    device = torch.device("cpu")
    if torch.cuda.is_available():
        import ray.train.torch

        device = ray.train.torch.get_device()
    parts = build_teacher(teacher, device=device)
    unet = load_animatelcm_pipeline(pipeline_dir, fuse_lora=True, device=str(device)).unet
    return AdapterConsistencyTask(
        parts, unet, consistency, adapter=adapter, control_init_dir=adapt.control_init_dir,
        control_scale=adapt.control_scale, motion_scale=adapt.motion_scale,
        tune_lora=teacher.lora if adapt.tune_lora else None, ema_decay=adapt.ema_decay, seed=seed,
    )  # fmt: skip


DATA_OPTION = {"control": "control_data", "image_to_video": "video_data"}
"""Which job option feeds each adapter."""


def run(
    cfg: Config,
    input_dir: Path,
    output_dir: Path,
    *,
    control_data: Path | None = None,
    video_data: Path | None = None,
    overwrite: bool = False,
) -> AdaptResult:
    """Train ``cfg.adapt.adapters`` against the stage-2 model in ``input_dir`` (module docstring)."""
    from models.factory import teacher_digests
    from pipelines.train_loop import train

    t0 = time.monotonic()
    a = cfg.adapt
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    stage2 = read_stage2(input_dir)
    given = {"control_data": control_data, "video_data": video_data}
    data = {}
    for adapter in a.adapters:
        option = DATA_OPTION[adapter]
        if given[option] is None:
            raise ValueError(f"adapt.adapters has {adapter!r}: pass --{option.replace('_', '-')} DIR")
        if adapter == "control":
            data[adapter] = read_video_dataset(
                given[option], what="a recaptioned dancer set with pose control frames (alcm recaption)",
                columns=("key", "caption", "frames", "control"),
            )  # fmt: skip
        else:
            data[adapter] = read_video_dataset(given[option])
    digests = teacher_digests(cfg.teacher)
    control_init = adapter_digests(a.control_init_dir) if a.control_init_dir and "control" in a.adapters else None
    timings: dict[str, float] = {"checks_s": time.monotonic() - t0}
    results: dict[str, dict] = {}
    check_storage(a.train.storage_path, "adapt.train.storage_path")
    with staged_output(output_dir, overwrite=overwrite) as out:
        staging = out.dir
        runtime.connect(cfg.ray)
        for adapter in a.adapters:
            manifest_in, files = data[adapter]
            control = adapter == "control"
            t = time.monotonic()
            key = video_cache_key(cfg, "adapt", manifest_in["digest"], digests, control=control)
            columns = ["key", "caption", "frames", "control"] if control else ["key", "caption", "frames"]
            encoder_args = (to_dict(cfg), "adapt", control, True)
            data_dir, meta = encode_cached(
                a, files, key, encoder=VideoEncoder, encoder_args=encoder_args, columns=columns
            )
            counts = meta["counts"]
            timings[f"{adapter}_encode_s"] = time.monotonic() - t
            if counts["encoded"] < a.train.micro_batch_size * a.train.num_workers:
                raise ValueError(f"--{DATA_OPTION[adapter].replace('_', '-')}: {counts['encoded']} trainable clips, "
                                 f"fewer than one batch (adapt.train.micro_batch_size × num_workers)")  # fmt: skip
            identity = {"stage2": stage2["digest"], "dataset": manifest_in["digest"], "teacher": digests,
                        "adapter": adapter, "control_init": control_init}  # fmt: skip
            train_cfg = dataclasses.replace(
                a.train, name=run_name(cfg, "adapt", output_dir.with_name(f"{adapter}-{output_dir.name}"), identity)
            )
            make_task = functools.partial(
                build_stage3_task, cfg.teacher, cfg.consistency, a, adapter=adapter,
                pipeline_dir=str(input_dir / "pipeline"), seed=train_cfg.seed,
            )  # fmt: skip
            t = time.monotonic()
            log.info("stage 3 (%s): run %s, %d steps on %d workers", adapter, train_cfg.name, train_cfg.steps,
                     train_cfg.num_workers)  # fmt: skip
            result = train(make_task, cached_dataset(data_dir, meta["columns"]), train_cfg,
                           export_dir=staging / f".{adapter}")  # fmt: skip
            timings[f"{adapter}_train_s"] = time.monotonic() - t
            export_dir = staging / f".{adapter}"
            export = (export_dir / "export.json").read_text()
            for child in export_dir.iterdir():
                if child.name != "export.json":
                    shutil.move(str(child), str(staging / child.name))
            shutil.rmtree(export_dir)
            results[adapter] = {
                "dataset": {"name": manifest_in.get("name"), "digest": manifest_in["digest"],
                            "version": manifest_in.get("version"),
                            "path": str(Path(given[DATA_OPTION[adapter]]).resolve())},
                "counts": counts,
                "export": json.loads(export),
                "run": {"name": train_cfg.name, "storage_path": train_cfg.storage_path,
                        "checkpoint": result.checkpoint_path, "resumed_from": result.metrics.get("resumed_from")},
                "metrics": {k: x for k, x in result.metrics.items() if isinstance(x, int | float)},
                "latent_cache": {"path": str(data_dir.parent), "key": key, "seconds": meta["seconds"]},
            }  # fmt: skip
        timings["total_s"] = time.monotonic() - t0
        inputs = {
            "stage2": {"digest": stage2["digest"], "name": stage2.get("name"), "path": str(input_dir)},
            "teacher": {"pretrained_dir": cfg.teacher.pretrained_dir, "digests": digests},
            "control_init": {"path": a.control_init_dir, "digests": control_init} if control_init else None,
            **{f"{adapter}_dataset": r["dataset"] for adapter, r in results.items()},
        }
        manifest = checkpoint_manifest(
            staging, inputs=inputs, stage=STAGE, job=JOB, name=f"{cfg.profile}-animatelcm-adapters",
            profile=cfg.profile, adapters=results,
            config={"teacher": to_dict(cfg.teacher), "consistency": to_dict(cfg.consistency), "adapt": to_dict(a)},
            timings={k: round(x, 1) for k, x in timings.items()},
        )  # fmt: skip
        out.commit(manifest)
    log.info("stage 3 done in %.0f s: %s in %s", timings["total_s"], ", ".join(a.adapters), output_dir)
    return AdaptResult(output=output_dir, manifest=manifest)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.adapt --input STAGE2 --control-data DANCERS --video-data CURATED --output DIR``."""
    return runtime.job_main(
        argv,
        module="pipelines.adapt",
        doc=__doc__,
        run=run,
        input_help="stage 2's output directory (manifest.json + pipeline/)",
        output_help="new directory for controlnet/, image_to_video_adapter/ and manifest.json",
        extra_inputs={
            "control_data": "recaptioned dancer set with pose control frames (for the control adapter)",
            "video_data": "curated video dataset (for the image-to-video adapter)",
        },
    )


if __name__ == "__main__":
    raise SystemExit(main())
