"""Stage 2, video consistency distillation: curated text-video clips + the image teacher + a motion module teacher +
stage 1's LoRA → distilled motion layers and a complete AnimateDiffPipeline.

Steps and where they run:

1. **check inputs** (driver): the input is a curated video dataset (``kept/*.parquet`` with ``frames`` (PNG bytes)
   and ``caption`` + ``manifest.json``, as ``alcm curate videos`` writes it); ``--stage1`` is stage 1's output
   (``manifest.json`` + ``lora/pytorch_lora_weights.safetensors``), needed unless ``distill_video.init`` is
   ``none`` (and not read with ``decoupled: false``); the teacher directory and ``distill_video.motion_adapter_dir``
   are digested before any work.
2. **encode** (Ray Data actor pool): the first ``frames`` frames of every clip are decoded safely, resized and
   centre-cropped to ``resolution``, and encoded to VAE latents (C, F, h, w); the caption to text-encoder states
   (``precompute_text``) or token ids; cached under ``cache_dir/<key>``. A clip that fails (an undecodable frame,
   fewer than ``frames`` frames) is counted with its reason in the manifest and not trained on.
3. **train** (Ray Train + DeepSpeed, the shared loop): :class:`models.stage2.VideoConsistencyTask`; the run is named
   from the inputs and settings, so re-running resumes.
4. **export** (driver): ``motion_adapter/`` (MotionAdapter directory), ``lcm_lora/`` (the spatial LoRA the target
   holds) and ``pipeline/``, a complete diffusers ``AnimateDiffPipeline`` directory (:mod:`models.export`) that
   generates 4-step videos; ``preview.png`` (per prompt, the teacher at 25 DDIM steps with CFG above the pipeline at
   ``preview_steps`` LCM steps without CFG, frames left to right).
5. **manifest**: inputs (dataset, stage-1 checkpoint, teacher and motion-module digests), counts, metrics, run, files,
   config, timings.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from contracts.digests import sha256_file
from contracts.manifest import check_listed, code_version, read_manifest, verify_files
from contracts.publish import staged_output
from filters.decode import DecodeConfig
from pipelines import runtime
from pipelines.config import Config, to_dict
from pipelines.distill_image import RESUMABLE_FIELDS, _pixels, cached_dataset, decode_square, encode_cached
from pipelines.storage import check_storage

log = logging.getLogger(__name__)

JOB = "distill_video"
STAGE = "video_consistency_distillation"
CACHE_FORMAT = 1


@dataclass(frozen=True)
class DistillVideoResult:
    """Where stage 2 put its outputs, and what its manifest says."""

    output: Path
    manifest: dict


# ------------------------------------------------------------------------------------------------------- inputs


def read_video_dataset(input_dir: Path, *, what: str = "a curated video dataset (alcm curate videos)",
                       columns: tuple[str, ...] = ("key", "caption", "frames")) -> tuple[dict, list[Path]]:  # fmt: skip
    """A video dataset's manifest and Parquet files (``kept/`` or, for recaptioned sets, ``captioned/``)."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir} does not exist ({what})")
    if not (input_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{input_dir}: no manifest.json; expected {what}")
    manifest = read_manifest(input_dir)
    if "digest" not in manifest:
        raise ValueError(f"{input_dir}: manifest.json has no dataset digest; re-run the job that wrote it")
    verify_files(input_dir, manifest)
    files = sorted((input_dir / "kept").glob("*.parquet")) or sorted((input_dir / "captioned").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{input_dir}: no kept/*.parquet or captioned/*.parquet (no rows?)")
    check_listed(input_dir, manifest, files)
    names = pq.read_schema(files[0]).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{input_dir}: the Parquet files lack column(s) {missing}; expected {what}")
    return manifest, files


def read_stage1(stage1_dir: Path | None) -> tuple[dict | None, Path | None]:
    """Stage 1's manifest and LoRA file (clear errors when ``stage1_dir`` is not a stage-1 output)."""
    if stage1_dir is None:
        return None, None
    stage1_dir = Path(stage1_dir).resolve()  # training workers may run elsewhere: an absolute path
    lora = stage1_dir / "lora" / "pytorch_lora_weights.safetensors"
    if not (stage1_dir / "manifest.json").is_file() or not lora.is_file():
        raise FileNotFoundError(
            f"--stage1 {stage1_dir}: expected stage 1's output "
            "(manifest.json and lora/pytorch_lora_weights.safetensors)"
        )
    manifest = read_manifest(stage1_dir)
    if manifest.get("stage") != "image_consistency_distillation":
        raise ValueError(f"--stage1 {stage1_dir}: manifest stage is {manifest.get('stage')!r}, not stage 1's")
    verify_files(stage1_dir, manifest)
    return manifest, lora


def adapter_digests(path: str | Path) -> dict[str, str]:
    """Digests of a weight directory's safetensors and config files (a MotionAdapter, a ControlNet)."""
    root = Path(path)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"{root}: not a diffusers model directory (no config.json)")
    files = sorted(p for p in root.iterdir() if p.suffix in (".safetensors", ".json"))
    if not any(p.suffix == ".safetensors" for p in files):
        raise FileNotFoundError(f"{root}: no .safetensors weights")
    return {p.name: sha256_file(p) for p in files}


# ------------------------------------------------------------------------------------------------------- encode


def decode_clip(
    frames: list[bytes] | None, n: int, resolution: int, decode: DecodeConfig
) -> tuple[np.ndarray | None, str]:
    """The first ``n`` frames (PNG/JPEG bytes) → uint8 (n, r, r, 3), or (None, reason)."""
    if not frames or len(frames) < n:
        return None, f"too_few_frames: {len(frames or [])} < {n}"
    out = []
    for i, data in enumerate(frames[:n]):
        img, error = decode_square(data, resolution, decode)
        if img is None:
            return None, f"{error.split(':', 1)[0]}: frame {i}: {error}"
        out.append(img)
    return np.stack(out), ""


class VideoEncoder:
    """Ray Data actor: decodes and encodes a batch of clips (latents (C, F, h, w), captions, optional control frames
    as uint8 (3, F, r, r)). ``section``: the config section with frames, resolution, batch settings."""

    def __init__(self, cfg_dict: dict, section: str, control: bool = False, precompute_text: bool = True) -> None:
        import torch

        from models.factory import load_part, load_tokenizer
        from pipelines.config import config_from_dict

        cfg = config_from_dict(cfg_dict)
        self.s, self.decode, self.control = getattr(cfg, section), cfg.curation.decode, control
        torch.set_num_threads(max(1, int(self.s.encode_cpus)))
        self.device = "cuda" if self.s.encode_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.vae = load_part(cfg.teacher, "vae", device=self.device)
        self.text = load_part(cfg.teacher, "text_encoder", device=self.device) if precompute_text else None
        self.tokenizer = load_tokenizer(cfg.teacher)

    def __call__(self, batch: pa.Table) -> dict:
        import torch

        n, r = self.s.frames, self.s.resolution
        captions = batch.column("caption").to_pylist()
        clips, controls, errors = [], [], []
        control_col = batch.column("control").to_pylist() if self.control else [None] * batch.num_rows
        for frames, control in zip(batch.column("frames").to_pylist(), control_col, strict=True):
            clip, error = decode_clip(frames, n, r, self.decode)
            ctrl = None
            if self.control and not error:
                ctrl, error = decode_clip(control, n, r, self.decode)
                error = f"control_{error}" if error else ""
            clips.append(clip if not error else np.zeros((n, r, r, 3), np.uint8))
            controls.append(ctrl if ctrl is not None and not error else np.zeros((n, r, r, 3), np.uint8))
            errors.append(error)
        out: dict = {
            "key": np.array(batch.column("key").to_pylist(), dtype=object),
            "caption": np.array(captions, dtype=object),
            "error": np.array(errors, dtype=object),
        }
        ids = self.tokenizer([c or "" for c in captions], padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids  # fmt: skip
        with torch.no_grad():
            x = torch.from_numpy(_pixels([f for clip in clips for f in clip])).to(self.device, self.vae.dtype)
            lat = self.vae.encode(x).latent_dist.mean.float() * self.vae.config.scaling_factor
            lat = lat.reshape(len(clips), n, *lat.shape[1:]).permute(0, 2, 1, 3, 4)
            out["latents"] = lat.cpu().numpy()
            if self.text is not None:
                out["encoder_hidden_states"] = self.text(ids.to(self.device))[0].float().cpu().numpy()
            else:
                out["input_ids"] = ids.numpy().astype(np.int64)
        if self.control:
            out["control"] = np.stack(controls).transpose(0, 4, 1, 2, 3).copy()  # (B, 3, F, r, r) uint8
        return out


def video_cache_key(cfg: Config, section: str, dataset_digest: str, digests: dict[str, str], **extra) -> str:
    """Digest naming a video latent cache: dataset, VAE (and text encoder) digests, the encode settings."""
    s = getattr(cfg, section)
    parts = {
        "format": CACHE_FORMAT,
        "section": section,
        "dataset": dataset_digest,
        "vae": {k: v for k, v in digests.items() if k.startswith("vae/")},
        "text_encoder": {k: v for k, v in digests.items() if k.startswith("text_encoder/")},
        "dtype": cfg.teacher.dtype,
        "frames": s.frames,
        "resolution": s.resolution,
        "decode": to_dict(cfg.curation.decode),
        **extra,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------- run


def build_stage2_task(teacher, consistency, video, *, stage1_lora: str | None, seed: int = 0):
    """The stage-2 Task from config on this worker's device (importable target of ``functools.partial``)."""
    import torch

    from models.factory import build_teacher
    from models.lora import read_diffusers_lora
    from models.stage2 import VideoConsistencyTask
    from models.video_unet import load_motion_adapter

    device = torch.device("cpu")
    if torch.cuda.is_available():
        import ray.train.torch

        device = ray.train.torch.get_device()
    parts = build_teacher(teacher, device=device)
    adapter = load_motion_adapter(video.motion_adapter_dir)
    return VideoConsistencyTask(
        parts, adapter, consistency,
        stage1_lora=read_diffusers_lora(stage1_lora) if stage1_lora else None,
        lora=teacher.lora, init=video.init, decoupled=video.decoupled, lora_ema=video.lora_ema,
        motion_init=video.motion_init, ema_decay=video.ema_decay, seed=seed,
    )  # fmt: skip


def run_name(cfg: Config, section: str, output_dir: Path, identity: dict) -> str:
    """``<train.name>-<output dir name>-<8 hex>`` over the inputs and every setting that shapes training (not
    :data:`RESUMABLE_FIELDS`, not the preview): re-running the same job resumes its run."""
    d = to_dict(getattr(cfg, section))
    for name in RESUMABLE_FIELDS:
        d["train"].pop(name)
    for name in ("preview_prompts", "preview_steps"):
        d.pop(name, None)
    identity = {**identity, "teacher_config": to_dict(cfg.teacher), "consistency": to_dict(cfg.consistency), section: d}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    return f"{getattr(cfg, section).train.name}-{Path(output_dir).name}-{digest}"


def write_video_preview(cfg: Config, pipeline_dir: Path, prompts: list[str], steps: int, out_file: Path) -> dict:
    """Per prompt: the teacher (image UNet + motion module, DDIM 25, CFG) above the distilled pipeline (LCM, no
    CFG), frames left to right, same seeds."""
    import torch
    from diffusers import AnimateDiffPipeline, DDIMScheduler
    from PIL import Image

    from models.export import load_animatelcm_pipeline
    from models.sampling import image_grid
    from models.video_unet import load_motion_adapter

    c, v = cfg.consistency, cfg.distill_video
    guidance = 1.0 + 0.5 * (c.w_min + c.w_max)
    t = time.monotonic()
    teacher = AnimateDiffPipeline.from_pretrained(
        cfg.teacher.pretrained_dir, motion_adapter=load_motion_adapter(v.motion_adapter_dir), local_files_only=True
    )
    teacher.scheduler = DDIMScheduler.from_config(teacher.scheduler.config, timestep_spacing="trailing")
    teacher.set_progress_bar_config(disable=True)
    student = load_animatelcm_pipeline(pipeline_dir)
    rows = []
    for i, prompt in enumerate(prompts):
        for pipe, n, g in ((teacher, 25, guidance), (student, steps, 1.0)):
            video = pipe(prompt, num_frames=v.frames, num_inference_steps=n, guidance_scale=g, output_type="np",
                         height=v.resolution, width=v.resolution,
                         generator=torch.Generator().manual_seed(i)).frames[0]  # fmt: skip
            rows.append((np.asarray(video) * 255).round().astype(np.uint8))
    Image.fromarray(image_grid(rows)).save(out_file)
    return {
        "file": out_file.name,
        "prompts": prompts,
        "rows": [f"teacher DDIM 25 steps, guidance_scale {guidance:g}", f"AnimateLCM {steps} LCM steps, no CFG"],
        "seconds": round(time.monotonic() - t, 1),
    }


def checkpoint_manifest(staging: Path, *, inputs: dict, **fields) -> dict:
    """A checkpoint manifest: ``fields`` plus the digests of every file under ``staging`` and a content digest over
    the files and the inputs."""
    files_out = {p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
    manifest = {"kind": "checkpoint", **fields, "inputs": inputs, "files": files_out, "code_version": code_version()}
    body = json.dumps({"files": files_out, "inputs": inputs}, sort_keys=True).encode()
    manifest["digest"] = "sha256:" + hashlib.sha256(body).hexdigest()
    return manifest


def run(cfg: Config, input_dir: Path, output_dir: Path, *, stage1: Path | None = None,
        overwrite: bool = False) -> DistillVideoResult:  # fmt: skip
    """Distil the motion layers on the curated video dataset ``input_dir`` (module docstring)."""
    from models.export import write_animatelcm_pipeline
    from models.factory import teacher_digests, teacher_dir
    from pipelines.train_loop import train

    t0 = time.monotonic()
    v = cfg.distill_video
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    dataset_manifest, files = read_video_dataset(input_dir)
    uses_stage1 = v.decoupled and v.init != "none"
    if uses_stage1 and stage1 is None:
        raise ValueError(f"distill_video.init={v.init!r} needs --stage1 (stage 1's output directory), or init: none")
    stage1_manifest, lora_file = read_stage1(stage1 if uses_stage1 else None)
    teacher_root = teacher_dir(cfg.teacher)
    digests = teacher_digests(cfg.teacher)
    motion_digests = adapter_digests(v.motion_adapter_dir)
    timings: dict[str, float] = {"checks_s": time.monotonic() - t0}
    check_storage(v.train.storage_path, "distill_video.train.storage_path")
    with staged_output(output_dir, overwrite=overwrite) as out:
        staging = out.dir
        runtime.connect(cfg.ray)
        t = time.monotonic()
        key = video_cache_key(cfg, "distill_video", dataset_manifest["digest"], digests, text=v.precompute_text)
        data_dir, meta = encode_cached(
            v, files, key, encoder=VideoEncoder,
            encoder_args=(to_dict(cfg), "distill_video", False, v.precompute_text),
            columns=["key", "caption", "frames"],
        )  # fmt: skip
        ds, counts = cached_dataset(data_dir, meta["columns"]), meta["counts"]
        timings["encode_s"] = time.monotonic() - t
        if counts["encoded"] < v.train.micro_batch_size * v.train.num_workers:
            raise ValueError(f"--input {input_dir}: {counts['encoded']} trainable clips, fewer than one batch "
                             f"(distill_video.train.micro_batch_size × num_workers)")  # fmt: skip
        identity = {
            "dataset": dataset_manifest["digest"],
            "teacher": digests,
            "motion_adapter": motion_digests,
            "stage1": stage1_manifest["digest"] if stage1_manifest else None,
        }
        train_cfg = dataclasses.replace(v.train, name=run_name(cfg, "distill_video", output_dir, identity))
        make_task = functools.partial(
            build_stage2_task, cfg.teacher, cfg.consistency, v,
            stage1_lora=str(lora_file) if lora_file else None, seed=train_cfg.seed,
        )  # fmt: skip
        t = time.monotonic()
        log.info("stage 2: run %s, %d steps on %d workers (init=%s, decoupled=%s)", train_cfg.name, train_cfg.steps,
                 train_cfg.num_workers, v.init, v.decoupled)  # fmt: skip
        result = train(make_task, ds, train_cfg, export_dir=staging / "export")
        timings["train_s"] = time.monotonic() - t
        t = time.monotonic()
        export = json.loads((staging / "export" / "export.json").read_text())
        for part in ("motion_adapter", "lcm_lora"):
            if (staging / "export" / part).is_dir():
                (staging / "export" / part).rename(staging / part)
        (staging / "export" / "export.json").rename(staging / "export.json")
        (staging / "export").rmdir()
        lora_out = staging / "lcm_lora" / "pytorch_lora_weights.safetensors"
        write_animatelcm_pipeline(
            teacher_root, staging / "motion_adapter", staging / "pipeline",
            lora_file=lora_out if lora_out.is_file() else None,
            info={"stage": STAGE, "init": v.init, "decoupled": v.decoupled, "frames": v.frames,
                  "resolution": v.resolution},
        )  # fmt: skip
        timings["export_s"] = time.monotonic() - t
        preview = None
        if v.preview_prompts:
            t = time.monotonic()
            preview = write_video_preview(cfg, staging / "pipeline", list(v.preview_prompts), v.preview_steps,
                                          staging / "preview.png")  # fmt: skip
            timings["preview_s"] = time.monotonic() - t
        timings["total_s"] = time.monotonic() - t0
        inputs = {
            "dataset": {"name": dataset_manifest.get("name"), "digest": dataset_manifest["digest"],
                        "version": dataset_manifest.get("version"), "path": str(input_dir)},
            "stage1": {"digest": stage1_manifest["digest"], "name": stage1_manifest.get("name"),
                       "path": str(Path(stage1).resolve())} if stage1_manifest else None,
            "teacher": {"pretrained_dir": str(teacher_root), "digests": digests},
            "motion_adapter": {"path": str(Path(v.motion_adapter_dir)), "digests": motion_digests},
        }  # fmt: skip
        manifest = checkpoint_manifest(
            staging, inputs=inputs, stage=STAGE, job=JOB, name=f"{cfg.profile}-animatelcm-t2v", profile=cfg.profile,
            counts=counts, export=export,
            run={"name": train_cfg.name, "storage_path": train_cfg.storage_path, "checkpoint": result.checkpoint_path,
                 "resumed_from": result.metrics.get("resumed_from")},
            metrics={k: x for k, x in result.metrics.items() if isinstance(x, int | float)},
            latent_cache={"path": str(data_dir.parent), "key": key, "seconds": meta["seconds"]},
            preview=preview,
            config={"teacher": to_dict(cfg.teacher), "consistency": to_dict(cfg.consistency),
                    "distill_video": to_dict(v)},
            timings={k: round(x, 1) for k, x in timings.items()},
        )  # fmt: skip
        out.commit(manifest)
    log.info("stage 2 done in %.0f s: pipeline in %s (loss %.4f at step %s)", timings["total_s"],
             output_dir / "pipeline", manifest["metrics"].get("loss", float("nan")),
             manifest["metrics"].get("step"))  # fmt: skip
    return DistillVideoResult(output=output_dir, manifest=manifest)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.distill_video --input CURATED_VIDEOS --stage1 STAGE1 --output DIR [--config ...]``."""
    return runtime.job_main(
        argv,
        module="pipelines.distill_video",
        doc=__doc__,
        run=run,
        input_help="curated video dataset (kept/ + manifest.json)",
        output_help="new directory for motion_adapter/, lcm_lora/, pipeline/, preview.png and manifest.json",
        extra_inputs={"stage1": "stage 1's output directory (its LoRA); not needed with init none"},
    )


if __name__ == "__main__":
    raise SystemExit(main())
