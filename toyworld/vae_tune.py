"""Fine-tune a committed toy VAE on frames it reconstructs badly, without moving the latents its UNet learned.

A teacher continued from a parent keeps the parent's VAE, so a cue the toy world gained after the VAE was trained
(a direction cue on moving objects, bench/RESULTS.md) never reaches the latents. :func:`tune_vae` trains the
parent's VAE on scenes and clip frames together, with a penalty that keeps its encoder's posterior mean on scenes
at the parent's (the latent anchor), so the UNet's latent space, and the scaling factor, stay valid.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from toyworld.zoo_common import warmup_cosine_lr

logger = logging.getLogger(__name__)


def tune_vae(
    vae: Any, scenes: np.ndarray, frames: np.ndarray, *, steps: int, lr: float, anchor: float, batch: int,
    kl_weight: float, rng: np.random.Generator, log_every: int = 100,
) -> tuple[Any, dict[str, float]]:  # fmt: skip
    """Train ``vae`` for ``steps`` on batches of half scenes and half ``frames`` (uint8 N×H×W×3): reconstruction MSE
    and ``kl_weight`` × KL as in the VAE's own training, plus ``anchor`` × the squared distance of the scenes'
    posterior means from the untouched encoder's. Returns the tuned VAE (eval mode, frozen) and the scene/frame
    reconstruction MSE and relative latent drift before and after, measured on the first 256 of each."""
    from toyworld.image_teacher import to_pixels

    if steps < 1 or batch < 2:
        raise ValueError(f"vae_tune steps={steps!r} and batch={batch!r}: need steps ≥ 1 and batch ≥ 2")
    parent = copy.deepcopy(vae).eval().requires_grad_(False)
    probe_scenes, probe_frames = to_pixels(scenes[:256]), to_pixels(frames[:256])

    @torch.no_grad()
    def measure(model: Any) -> dict[str, float]:
        out = {}
        for name, x in (("scene", probe_scenes), ("frame", probe_frames)):
            out[f"{name}_mse"] = float(F.mse_loss(model.decode(model.encode(x).latent_dist.mean).sample, x))
        ref = parent.encode(probe_scenes).latent_dist.mean
        out["latent_drift"] = float(((model.encode(probe_scenes).latent_dist.mean - ref) ** 2).mean() / (ref**2).mean())
        return out

    before = measure(vae)
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    half = batch // 2
    t = time.monotonic()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, steps, min(100, steps // 10), lr, pi_first=True)
        xs = to_pixels(scenes[rng.integers(len(scenes), size=half)])
        x = torch.cat([xs, to_pixels(frames[rng.integers(len(frames), size=batch - half)])])
        posterior = vae.encode(x).latent_dist
        mse = F.mse_loss(vae.decode(posterior.sample()).sample, x)
        with torch.no_grad():
            target = parent.encode(xs).latent_dist.mean
        drift = F.mse_loss(posterior.mean[:half], target)
        loss = mse + kl_weight * posterior.kl().mean() + anchor * drift
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            logger.info("vae tune step %d/%d mse %.4f anchor %.5f (%.2f s/step)", step + 1, steps, mse.item(),
                        drift.item(), (time.monotonic() - t) / (step + 1))  # fmt: skip
    vae.eval().requires_grad_(False)
    after = measure(vae)
    logger.info("vae tuned: before %s, after %s", before, after)
    return vae, {**{f"before_{k}": v for k, v in before.items()}, **{f"after_{k}": v for k, v in after.items()}}
