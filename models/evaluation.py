"""Evaluation building blocks: samplers over diffusers pipelines, video/image feature extractors, and the metrics
(Fréchet distance, CLIPSIM, temporal consistency, distance to a reference), shared by the eval job and the benches.

- Methods sample one video (or image) per (prompt, seed) from ``torch.Generator().manual_seed(seed)``, so every
  method starts from the same noise. ``with_scheduler`` swaps the scheduler of a pipeline while sharing its modules:
  trailing DDIM, second-order DPM-Solver++ with trailing spacing, or LCM.
- FVD features: production uses an I3D network (Kinetics-400) loaded from a local TorchScript file
  (:class:`I3DFeatures`: frames resized to 224, scaled to [-1, 1], (N, 3, T, 224, 224) in, (N, D) out); the toy
  profile, which has no I3D, uses the toy CLIP image tower pooled over time (:func:`clip_video_features`: the mean
  of the frame embeddings, concatenated with last − first so that motion counts as well as content). Reports name
  the extractor they used.
- CLIPSIM: CLIP similarity (×100) of every frame to its prompt, averaged over frames (and then over videos).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import torch

SCHEDULERS = ("ddim", "dpmsolver++", "lcm")


def with_scheduler(pipe, name: str):
    """A pipeline of the same class sharing ``pipe``'s modules, with the named scheduler."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LCMScheduler

    config = pipe.scheduler.config
    if name == "ddim":
        scheduler = DDIMScheduler.from_config(config, timestep_spacing="trailing")
    elif name == "dpmsolver++":
        scheduler = DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing"
        )
    elif name == "lcm":
        scheduler = LCMScheduler.from_config(config)
    else:
        raise ValueError(f"scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    variant = type(pipe)(**{**pipe.components, "scheduler": scheduler})
    variant.set_progress_bar_config(disable=True)
    return variant


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Decoded pixels (N, 3, H, W) in [-1, 1] → uint8 (N, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> np.ndarray:
    """Image latents (N, C, h, w) or video latents (1, C, F, h, w) → uint8 frames (N or F, H, W, 3), every frame
    decoded as an image."""
    if latents.ndim == 5:
        latents = latents[0].permute(1, 0, 2, 3)
    return to_uint8(vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample.float())


@torch.no_grad()
def generate(pipe, caption: str, seed: int, *, steps: int, guidance: float, size: int,
             frames: int | None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One sample: its latents (float32, (C, h, w) or (C, F, h, w)) and uint8 frames (F, H, W, 3), F = 1 for an
    image pipeline (``frames`` None)."""
    kwargs = {"num_frames": frames} if frames is not None else {}
    out = pipe(
        caption, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
        generator=torch.Generator().manual_seed(int(seed)), output_type="latent", **kwargs,
    )  # fmt: skip
    latents = out.frames if frames is not None else out.images
    pixels = decode_latents(pipe.vae, latents)
    return latents[0].float().cpu().numpy(), pixels


class Timer:
    """Wall time and peak memory of one block: CUDA's peak allocation on a GPU, otherwise the process's
    resident-set high-water mark (per process, so on CPU it is the worker's peak so far, not the block's own)."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        self.seconds = time.perf_counter() - self.t0
        return False


# ------------------------------------------------------------------------------------------------ features


def clip_video_features(frame_embeddings: np.ndarray) -> np.ndarray:
    """The toy FVD feature of each video from its L2-normalised frame embeddings (N, F, D): [mean over frames,
    last − first], (N, 2D). For single images (F = 1) the second half is zero."""
    return np.concatenate([frame_embeddings.mean(axis=1), frame_embeddings[:, -1] - frame_embeddings[:, 0]], axis=1)


class I3DFeatures:
    """FVD features from an I3D network saved as TorchScript (``torch.jit.save``) at a local path."""

    def __init__(self, path: str | Path, device: str = "cpu", size: int = 224):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"evaluate.i3d_path {path} does not exist (a TorchScript I3D, Kinetics-400)")
        self.model = torch.jit.load(str(path), map_location=device).eval()
        self.device, self.size = device, size

    @torch.no_grad()
    def __call__(self, videos: np.ndarray) -> np.ndarray:
        """uint8 videos (N, F, H, W, 3) → features (N, D)."""
        x = torch.from_numpy(videos).to(self.device).float().permute(0, 4, 1, 2, 3)  # N, 3, F, H, W
        n, c, f, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(n * f, c, h, w)
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (x / 127.5 - 1.0).reshape(n, f, c, self.size, self.size).permute(0, 2, 1, 3, 4)
        return self.model(x).reshape(n, -1).float().cpu().numpy()


# ------------------------------------------------------------------------------------------------ metrics


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples):
    |μa − μb|² + tr(Σa + Σb − 2 (Σa Σb)^½), with tr((Σa Σb)^½) = Σ √λ(Σa^½ Σb Σa^½) (symmetric, so eigh is exact)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 samples per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    fd = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(cross, 0, None)).sum()
    return float(max(fd, 0.0))  # identical sets give 0 up to rounding, never a negative distance


def clipsim(frame_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Per-video CLIPSIM: 100 × cosine similarity of each frame (N, F, D) to its prompt (N, D), mean over frames."""
    return 100.0 * np.sum(frame_embeddings * text_embeddings[:, None, :], axis=-1).mean(axis=1)


def temporal_consistency(frame_embeddings: np.ndarray) -> np.ndarray:
    """Per-video mean cosine similarity of consecutive frames' embeddings (1 = a still video); NaN for images."""
    if frame_embeddings.shape[1] < 2:
        return np.full(frame_embeddings.shape[0], np.nan)
    return np.sum(frame_embeddings[:, 1:] * frame_embeddings[:, :-1], axis=-1).mean(axis=1)
