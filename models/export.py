"""The video deliverable: a complete diffusers ``AnimateDiffPipeline`` directory of a distilled AnimateLCM model, and
its loader.

Layout of ``<out>/`` (what ``AnimateDiffPipeline.save_pretrained`` writes, plus two files of ours)::

    model_index.json  vae/  text_encoder/  tokenizer/  scheduler/ (LCMScheduler, the teacher's noise schedule)
    unet/             UNetMotionModel: the teacher's spatial weights + the distilled motion modules
    motion_adapter/   the distilled motion modules alone (MotionAdapter), for other SD-family image models
    lcm_lora/pytorch_lora_weights.safetensors   the spatial LCM-LoRA (diffusers format), NOT fused
    animatelcm.json   what the directory holds and how to sample it (steps, guidance)

The LoRA stays a separate file so that a personalised image model can replace the spatial weights
(``alcm export --personalize``) and the LoRA still applies on top, as the paper does. Plain diffusers use::

    pipe = AnimateDiffPipeline.from_pretrained(out)
    pipe.load_lora_weights(out / "lcm_lora")          # then: pipe.fuse_lora() for speed
    pipe(prompt, num_inference_steps=4, guidance_scale=1.0)

:func:`load_animatelcm_pipeline` does exactly that.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

LORA_DIR = "lcm_lora"
INFO_FILE = "animatelcm.json"


def write_animatelcm_pipeline(
    image_model_dir: str | Path,
    motion_adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    lora_file: str | Path | None = None,
    schedule: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the pipeline directory from the teacher's SD directory, the distilled MotionAdapter directory and
    the spatial LoRA file (module docstring); ``out_dir`` must not exist. ``schedule``: the noise schedule the motion
    layers were distilled on (:func:`models.video_unet.motion_schedule`), written into the pipeline's scheduler
    config in place of the image model's. Returns the ``animatelcm.json`` content."""
    from diffusers import AnimateDiffPipeline

    from models.video_unet import load_motion_adapter

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; the pipeline is written to a new directory")
    adapter = load_motion_adapter(motion_adapter_dir)
    pipe = AnimateDiffPipeline.from_pretrained(str(image_model_dir), motion_adapter=adapter, local_files_only=True)
    pipe.scheduler = lcm_scheduler(pipe.scheduler.config, schedule)
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    if lora_file is not None:
        (out_dir / LORA_DIR).mkdir()
        shutil.copyfile(lora_file, out_dir / LORA_DIR / "pytorch_lora_weights.safetensors")
    doc = {
        "format": "animatelcm-pipeline/1",
        "pipeline": "AnimateDiffPipeline",
        "lora": f"{LORA_DIR}/pytorch_lora_weights.safetensors" if lora_file is not None else None,
        "sampling": {"num_inference_steps": 4, "guidance_scale": 1.0, "scheduler": "LCMScheduler"},
        **(info or {}),
    }
    (out_dir / INFO_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def lcm_scheduler(config: dict[str, Any], schedule: dict[str, Any] | None = None) -> Any:
    """The exported pipeline's sampler: ``LCMScheduler`` from the image model's scheduler ``config`` with trailing
    timestep spacing, on the noise schedule the motion layers were distilled on (``schedule`` overrides)."""
    from diffusers import LCMScheduler

    return LCMScheduler.from_config(config, timestep_spacing="trailing", **(schedule or {}))


def pipeline_schedule(path: str | Path) -> dict[str, Any]:
    """The noise schedule of a pipeline directory (its ``scheduler/scheduler_config.json``), as scheduler-config
    overrides: what stage 3 trains on and what the teacher is sampled with when the pipeline is evaluated."""
    from models.factory import SCHEDULE_KEYS

    config_file = Path(path) / "scheduler" / "scheduler_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: not a pipeline directory (no scheduler/scheduler_config.json)")
    return {k: v for k, v in json.loads(config_file.read_text()).items() if k in SCHEDULE_KEYS}


def load_animatelcm_pipeline(
    path: str | Path, *, fuse_lora: bool = True, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> Any:
    """Load a pipeline directory written by :func:`write_animatelcm_pipeline` with its LoRA (fused by default)."""
    from diffusers import AnimateDiffPipeline

    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path}: not a pipeline directory (no model_index.json)")
    pipe = AnimateDiffPipeline.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    if (path / LORA_DIR / "pytorch_lora_weights.safetensors").is_file():
        pipe.load_lora_weights(str(path / LORA_DIR), adapter_name="lcm")
        if fuse_lora:
            pipe.fuse_lora()
            pipe.unload_lora_weights()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
