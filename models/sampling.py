"""Sampling with diffusers pipelines: the teacher with DDIM or DPM-Solver++, the distilled LoRA with LCM sampling.

Used by the stage-1 job's preview, the few-step benchmark and evaluation; every sampler reads the same local
diffusers directory that training used (``teacher.pretrained_dir``), so "the teacher" means one thing everywhere.

- ``ddim`` / ``ddim_leading``: ``DDIMScheduler`` with ``timestep_spacing="trailing"`` (the stronger few-step
  baseline: a 4-step trailing schedule starts at t=999, a leading one at t=751) or the SD default ``leading``.
- ``dpmsolver++``: ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", timestep_spacing="trailing")``,
  second order.
- ``lcm``: ``LCMScheduler`` (LCM's multistep consistency sampling), with the LoRA loaded by
  ``pipe.load_lora_weights`` from an export directory (``pytorch_lora_weights.safetensors``).

Guidance follows diffusers' convention, ``guidance_scale`` g = 1 + w for the LCM-form w of training; consistency
sampling runs without CFG (g = 1), as the paper reports it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SCHEDULERS = ("ddim", "ddim_leading", "dpmsolver++", "lcm")


def load_pipeline(
    pretrained_dir: str | Path,
    *,
    scheduler: str = "ddim",
    lora_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """A ``StableDiffusionPipeline`` from a local directory with the named scheduler (and a LoRA, if given)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LCMScheduler, StableDiffusionPipeline

    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler={scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    pipe = StableDiffusionPipeline.from_pretrained(
        str(pretrained_dir),
        local_files_only=True,
        use_safetensors=True,
        safety_checker=None,
        requires_safety_checker=False,
        dtype=dtype,
    )
    config = pipe.scheduler.config
    if scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(config, timestep_spacing="trailing")
    elif scheduler == "ddim_leading":
        pipe.scheduler = DDIMScheduler.from_config(config, timestep_spacing="leading")
    elif scheduler == "dpmsolver++":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing"
        )
    else:
        pipe.scheduler = LCMScheduler.from_config(config)
    if lora_dir is not None:
        lora_file = Path(lora_dir) / "pytorch_lora_weights.safetensors"
        if not lora_file.is_file():
            raise FileNotFoundError(f"no {lora_file.name} in {lora_dir} (a stage-1 export directory)")
        pipe.load_lora_weights(str(lora_dir), weight_name=lora_file.name)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.no_grad()
def sample(
    pipe,
    prompts: list[str],
    *,
    steps: int,
    guidance_scale: float,
    seeds: list[int],
    size: int | None = None,
    output_type: str = "np",
) -> np.ndarray:
    """One sample per (prompt, seed) pair, each from ``torch.Generator().manual_seed(seed)`` (the same starting
    noise for every sampler given the same seed). ``np``: uint8 images N×H×W×3; ``latent``: float32 N×C×h×w."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed per prompt")
    size = size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    out = []
    for prompt, seed in zip(prompts, seeds, strict=True):
        result = pipe(
            prompt,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(int(seed)),
            height=size,
            width=size,
            output_type="latent" if output_type == "latent" else "np",
        ).images
        if output_type == "latent":
            out.append(result[0].float().cpu().numpy())
        else:
            out.append((np.asarray(result[0]) * 255).round().clip(0, 255).astype(np.uint8))
    return np.stack(out)


def image_grid(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of equally sized uint8 images (each row N×H×W×3) as one image, 2-pixel white gutters."""
    n, h, w = rows[0].shape[0], rows[0].shape[1], rows[0].shape[2]
    gap = 2
    grid = np.full((len(rows) * (h + gap) - gap, n * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c in range(n):
            grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = row[c]
    return grid
