"""The toy style teacher: the toy image teacher's UNet fine-tuned on a "style", the toy world's personalised model.

The paper's personalisation claim is that an AnimateLCM video pipeline keeps working when its spatial (image)
weights are swapped for those of another SD-family model fine-tuned in some style (:func:`models.personalize
.personalize` does the swap). On the toy profile that other model is this one: the toy image teacher
(``toyworld/zoo/image_teacher``) with its UNet fine-tuned on the same kinds of content rendered in one style.

- **The style: wallpaper stripes.** Every background carries a diagonal sinusoidal stripe pattern,
  ``STRIPE_AMPLITUDE`` (24) grey levels either way, ``STRIPE_CYCLES`` (4) cycles per frame along x and along y
  (stripes along the anti-diagonal, one period every 11.3 pixels, fixed phase), the same on all three channels;
  objects stay flat-coloured (:func:`stylise`). The period is 2.8 latent pixels of the toy VAE (4x
  downsampling), well inside what it reconstructs, and above the background texture's band (at most 3.5 cycles
  per frame), so the style lives in one Fourier bin the unstyled world hardly touches.
- **Objects stay readable.** The stripes are weighted by ``1 - coverage``, with coverage read from the pixels:
  a pixel's largest channel distance from its background's nominal level is at most 24 on a background (texture
  ±20, tint ±4) and at least 65 inside an object (purple on gray is the closest pair: 73, less 8 of colour
  jitter), so a ramp between :data:`MASK_RAMP` (26 and 56) gives full stripes on backgrounds, none inside objects
  and a blend on anti-aliased edges. It needs only the image and its background word, so scenes and clip frames
  are styled alike. A styled background pixel stays within 48 of its level, under the 60 that
  :func:`toyworld.image_teacher.read_object` takes for foreground, so colour and position read back as before.
- **The score** (:func:`style_score`): the stripe amplitude read back from the pixels, in grey levels: twice the
  magnitude of the luma image's 2-D DFT at the stripe frequency (±(4, 4)), divided by the pixel count (a full-
  frame sinusoid of amplitude A reads A; a styled scene about A times its background fraction). Measured on 300
  scenes: plain renders 0.1-5.0 (mean 1.4; objects leak a little energy into that bin), styled ones 15.4-25.6
  (mean 20.7).
- **Fine-tuning**: only the UNet (VAE and text encoder frozen), ε-prediction on SD v1-5's schedule as the base
  teacher, latents scaled by the VAE's own ``scaling_factor``; 10% of captions dropped to the empty prompt, so
  the unconditional branch of classifier-free guidance learns the style too. Data: fresh scenes (stream
  ``[seed, 50]``) and one frame of each of a set of clean moving-shape clips (``[seed, 52, i]``, 20% of every
  batch), styled, with their normal captions: the style is not in the prompt. AdamW, linear warm-up, cosine decay,
  no EMA. Deterministic for a seed on a given machine and thread count: numpy
  ``default_rng`` for indices, timesteps and dropout, a seeded ``torch.Generator`` for latent and diffusion noise.
- **Validation**, on the SAVED UNet (loaded back into the image teacher's ``StableDiffusionPipeline``): 25-step DDIM
  samples with CFG 5 of the image teacher's held-out prompts (:func:`toyworld.image_teacher.validation_prompts`,
  24), from the base teacher and from the style teacher with the same seeds: style score, pixel colour/position
  accuracy (:func:`toyworld.image_teacher.read_object`) and the toy CLIP's accuracies; and the ground-truth renders
  of the same prompts, plain and styled.

Measured on the committed run (800 steps of 32, one thread: 6 to 12 min of training on a 2-core machine shared
with other jobs, 0.43 to 0.87 s a step; two runs wrote bit-identical weights): style score of the style teacher's
samples 13.2 (6.3-21.2 per sample) against the base teacher's 1.0 (0.3-3.3), same seeds; pixel colour accuracy
0.75 against 0.83, position 0.92 against 1.0. 400 steps at lr 2e-4 left the style patchy (0.9-28.7 per sample,
colour 0.71). The frozen VAE decodes the stripes with a green/purple tint on gray and black backgrounds (it never
saw stripes; its reconstructions of styled renders show the same), and a tinted stripe far enough from a black
background counts as foreground for ``read_object``, which costs some of the colour accuracy.

Written to ``toyworld/zoo/style_teacher``: ``unet/`` (``UNet2DConditionModel.save_pretrained``, safetensors) and
``manifest.json`` (settings, wall times, metrics, file digests, code digests).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from contracts.digests import sha256_file
from toyworld.clip_frames import make_video_pool
from toyworld.image_teacher import (
    DEFAULT_DIR as IMAGE_TEACHER_DIR,
)
from toyworld.image_teacher import (
    IMAGE_SIZE,
    SD15_SCHEDULE,
    VAL_STREAM,
    encode_latents,
    prompt_fidelity,
    render_prompt,
    sample_prompts,
    tokenize,
    toy_clip_scorer,
    validation_prompts,
)
from toyworld.scenes import BACKGROUND_LEVEL, caption_for, render_scene, sample_scene
from toyworld.videos import grey
from toyworld.zoo_common import REPO_ROOT, publish_part, warmup_cosine_lr

logger = logging.getLogger(__name__)

DEFAULT_DIR = Path(__file__).resolve().parent / "zoo" / "style_teacher"
TRAIN_STREAM = 50
CLIP_STREAM = 52

STRIPE_CYCLES = 4
"""Stripe frequency, cycles per frame along x and along y (stripes along the anti-diagonal, period 64/(4√2) px)."""
STRIPE_AMPLITUDE = 24.0
"""Stripe amplitude in grey levels (added to every channel of a background pixel, either way)."""
MASK_RAMP = (26.0, 56.0)
"""Channel distance from the background level below which a pixel takes full stripes, above which none."""


@dataclass(frozen=True)
class StyleTeacherTrainingConfig:
    """How the toy style teacher is fine-tuned (defaults: the committed one)."""

    seed: int = 0
    """Seeds the training data, the fine-tune's randomness and the validation samples."""
    threads: int = 1
    """torch CPU threads. One: on a shared 2-core machine two threads spin against other jobs (measured 30 s a step
    instead of 0.65 s), and the thread count changes the low bits of float sums, so the committed run's count is
    the default."""
    train_scenes: int = 6000
    """Styled scenes rendered for training (stream ``[seed, 50]``)."""
    train_clips: int = 1500
    """Moving-shape clips rendered for training, one styled frame of each (``[seed, 52, i]``)."""
    clip_fraction: float = 0.2
    """Share of every batch taken from the clip frames."""
    steps: int = 800
    """Optimiser steps."""
    batch: int = 32
    """Images per step."""
    lr: float = 3e-4
    """Peak AdamW learning rate."""
    warmup: int = 20
    """Linear warm-up steps before the cosine decay."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    caption_dropout: float = 0.1
    """Share of captions replaced by the empty prompt (the unconditional branch of CFG learns the style too)."""
    val_prompts: int = 24
    """Held-out prompts sampled for validation (the image teacher's ``validation_prompts``)."""
    val_steps: int = 25
    """DDIM steps of the validation samples."""
    val_guidance: float = 5.0
    """Classifier-free guidance scale of the validation samples."""

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r}: must be an integer ≥ 0")
        for name in ("threads", "train_scenes", "steps", "batch", "val_prompts", "val_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be an integer ≥ 1")
        if not isinstance(self.train_clips, int) or self.train_clips < 0:
            raise ValueError(f"train_clips={self.train_clips!r}: must be an integer ≥ 0 (0: scenes only)")
        if not isinstance(self.warmup, int) or not 0 <= self.warmup < self.steps:
            raise ValueError(f"warmup={self.warmup!r}: must be an integer in [0, steps={self.steps})")
        for name in ("clip_fraction", "caption_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r}: must be in [0, 1)")
        if self.clip_fraction > 0 and self.train_clips == 0:
            raise ValueError(f"clip_fraction={self.clip_fraction!r} with train_clips=0: set one of them to 0")
        if not self.lr > 0.0:
            raise ValueError(f"lr={self.lr!r}: must be > 0")
        if self.weight_decay < 0.0:
            raise ValueError(f"weight_decay={self.weight_decay!r}: must be ≥ 0")
        if self.val_guidance < 1.0:
            raise ValueError(f"val_guidance={self.val_guidance!r}: must be ≥ 1 (1: no guidance)")


# ------------------------------------------------------------------------------------------------------- the style


def stripe_pattern(size: int = IMAGE_SIZE) -> np.ndarray:
    """The (size, size) stripe field in [-1, 1]: sin(2π·STRIPE_CYCLES·(x + y)/size), fixed phase."""
    yy, xx = np.mgrid[0:size, 0:size]
    return np.sin(2.0 * np.pi * STRIPE_CYCLES * (xx + yy) / size)


def stylise(image: np.ndarray, background: str) -> np.ndarray:
    """``image`` (uint8 H×W×3, rendered on the ``background`` word) with the stripes on its background.

    Coverage is read from pixels (see the module docstring): full stripes within ``MASK_RAMP[0]`` of the
    background's nominal level, none beyond ``MASK_RAMP[1]``, linear in between."""
    if background not in BACKGROUND_LEVEL:
        raise ValueError(f"background={background!r}: choose one of {tuple(BACKGROUND_LEVEL)}")
    img = image.astype(np.float64)
    distance = np.abs(img - BACKGROUND_LEVEL[background]).max(axis=-1)
    low, high = MASK_RAMP
    weight = np.clip((high - distance) / (high - low), 0.0, 1.0)
    stripes = STRIPE_AMPLITUDE * stripe_pattern(image.shape[0]) * weight
    return np.clip(np.rint(img + stripes[:, :, None]), 0, 255).astype(np.uint8)


def stripe_amplitudes(images: np.ndarray) -> np.ndarray:
    """Per image (uint8 N×H×W×3), the stripe amplitude read back in grey levels: 2·|DFT of luma at the stripe
    frequency| / pixels."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images of shape {images.shape}: expected N×H×W×3")
    luma = grey(images)
    luma = luma - luma.mean(axis=(1, 2), keepdims=True)
    spectrum = np.fft.fft2(luma, axes=(1, 2))
    h, w = luma.shape[1:]
    return 2.0 * np.abs(spectrum[:, STRIPE_CYCLES, STRIPE_CYCLES]) / (h * w)


def style_score(images: np.ndarray) -> float:
    """Mean stripe amplitude of ``images`` (uint8 N×64×64×3), in grey levels: ~20 for styled renders, ~1 plain."""
    return float(stripe_amplitudes(images).mean())


# -------------------------------------------------------------------------------------------------------- the data


def render_styled_training_set(cfg: StyleTeacherTrainingConfig) -> dict[str, Any]:
    """Styled scenes with their captions, and styled clip frames with their video captions."""
    rng = np.random.default_rng([cfg.seed, TRAIN_STREAM])
    scenes = [sample_scene(rng) for _ in range(cfg.train_scenes)]
    images = np.stack([stylise(np.asarray(render_scene(s, IMAGE_SIZE)), s.background) for s in scenes])
    out = {"images": images, "captions": [caption_for(s) for s in scenes]}
    if cfg.train_clips:
        pool = make_video_pool(cfg.seed, cfg.train_clips, stream=CLIP_STREAM)
        frames = np.stack([stylise(f, c.background) for f, c in zip(pool.images, pool.clips, strict=True)])
        out.update(clip_images=frames, clip_captions=list(pool.captions))
    else:
        out.update(clip_images=images[:0], clip_captions=[])
    return out


def validation_set(seed: int, n: int) -> tuple[list[dict[str, str]], np.ndarray]:
    """The image teacher's held-out prompts and their ground-truth renders (jitter from ``[seed, 31, 1]``)."""
    prompts = validation_prompts(seed, n)
    rng = np.random.default_rng([seed, VAL_STREAM, 1])
    return prompts, np.stack([render_prompt(p, int(rng.integers(2**31))) for p in prompts])


# -------------------------------------------------------------------------------------------------------- training


def fine_tune_unet(
    unet: Any,
    text_encoder: Any,
    tokenizer: Any,
    latents: tuple[torch.Tensor, torch.Tensor],
    captions: list[str],
    scaling: float,
    cfg: StyleTeacherTrainingConfig,
    *,
    n_clip_images: int,
    log_every: int,
) -> Any:
    """Fine-tune ``unet`` in place (ε-prediction, caption dropout) on unscaled posterior ``latents`` (mean, std);
    the last ``n_clip_images`` rows are clip frames, drawn for ``clip_fraction`` of every batch."""
    from models.factory import alphas_cumprod_from

    rng = np.random.default_rng([cfg.seed, TRAIN_STREAM, 1])
    noise_gen = torch.Generator().manual_seed(cfg.seed)
    ids = tokenize(tokenizer, captions)
    empty_ids = tokenize(tokenizer, [""])
    n_scene = len(captions) - n_clip_images
    n_clip = int(round(cfg.batch * cfg.clip_fraction)) if n_clip_images else 0
    unet.train().requires_grad_(True)
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    acp = alphas_cumprod_from(SD15_SCHEDULE)
    t0 = time.monotonic()
    for step in range(cfg.steps):
        lr = warmup_cosine_lr(step, cfg.steps, cfg.warmup, cfg.lr, pi_first=True)
        for group in opt.param_groups:
            group["lr"] = lr
        rows = np.concatenate(
            [rng.integers(n_scene, size=cfg.batch - n_clip), n_scene + rng.integers(max(1, n_clip_images), size=n_clip)]
        )
        index = torch.from_numpy(rows)
        tokens = ids[index]
        drop = torch.from_numpy(rng.uniform(size=len(rows)) < cfg.caption_dropout)
        tokens = torch.where(drop[:, None], empty_ids.expand_as(tokens), tokens)
        t = torch.from_numpy(rng.integers(0, len(acp), size=len(rows)))
        mean, std = latents[0][index], latents[1][index]
        x0 = (mean + std * torch.randn(mean.shape, generator=noise_gen)) * scaling
        noise = torch.randn(x0.shape, generator=noise_gen)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.no_grad():
            states = text_encoder(tokens).last_hidden_state
        loss = F.mse_loss(unet(xt, t, states).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % log_every == 0 or step == cfg.steps - 1:
            elapsed = time.monotonic() - t0
            logger.info(
                "style step %d/%d loss %.4f lr %.2e (%.1f samples/s, %.1f min left)",
                step + 1, cfg.steps, loss.item(), lr, (step + 1) * cfg.batch / elapsed,
                elapsed / (step + 1) * (cfg.steps - step - 1) / 60,
            )  # fmt: skip
    return unet.eval().requires_grad_(False)


def _pipeline(image_teacher: Path, unet_dir: Path | None) -> Any:
    """The image teacher's ``StableDiffusionPipeline`` (DDIM), with the UNet from ``unet_dir`` if given."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    load = {"local_files_only": True}
    extra = {}
    if unet_dir is not None:
        extra["unet"] = UNet2DConditionModel.from_pretrained(str(unet_dir), use_safetensors=True, **load)
    pipe = StableDiffusionPipeline.from_pretrained(
        str(image_teacher), safety_checker=None, requires_safety_checker=False, **extra, **load
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def validate(unet_dir: Path, image_teacher: Path, cfg: StyleTeacherTrainingConfig) -> dict:
    """Validate the SAVED style UNet against the base teacher (see the module docstring)."""
    prompts, truth = validation_set(cfg.seed, cfg.val_prompts)
    styled = np.stack([stylise(img, p["background"]) for img, p in zip(truth, prompts, strict=True)])
    scorer = toy_clip_scorer()
    kw = {"steps": cfg.val_steps, "guidance": cfg.val_guidance, "seed": cfg.seed}
    key = f"ddim{cfg.val_steps}_cfg{cfg.val_guidance:g}"
    out = {}
    for name, images in (("ground_truth_renders", list(truth)), ("ground_truth_styled", list(styled))):
        out[name] = {"style_score": round(style_score(np.stack(images)), 3), **prompt_fidelity(images, prompts, scorer)}
    for name, unet in (("base_teacher", None), ("style_teacher", unet_dir)):
        samples = sample_prompts(_pipeline(image_teacher, unet), prompts, **kw)
        amplitudes = stripe_amplitudes(np.stack(samples))
        out[f"{name}_{key}"] = {
            "style_score": round(float(amplitudes.mean()), 3),
            "style_score_min": round(float(amplitudes.min()), 3),
            "style_score_max": round(float(amplitudes.max()), 3),
            **prompt_fidelity(samples, prompts, scorer),
        }
    return out


def train_style_teacher(
    out_dir: Path = DEFAULT_DIR, *, image_teacher: Path = IMAGE_TEACHER_DIR, seed: int = 0, log_every: int = 50,
    **settings: Any,
) -> dict:  # fmt: skip
    """Fine-tune the toy image teacher's UNet on the stripe style and write ``unet/`` and ``manifest.json`` to
    ``out_dir``; returns the manifest.

    Written to a temporary folder next to ``out_dir``, validated there, and moved into place at the end, so a failed
    run leaves the previous style teacher intact."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    cfg = StyleTeacherTrainingConfig(seed=seed, **settings)
    out_dir, image_teacher = Path(out_dir), Path(image_teacher)
    if not (image_teacher / "unet" / "config.json").is_file():
        raise FileNotFoundError(f"image_teacher {image_teacher}: no unet/config.json (not a pipeline directory)")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    wall: dict[str, float] = {}
    t_start = time.monotonic()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        load = {"local_files_only": True}
        vae = AutoencoderKL.from_pretrained(str(image_teacher), subfolder="vae", **load).eval().requires_grad_(False)
        tokenizer = CLIPTokenizer.from_pretrained(str(image_teacher), subfolder="tokenizer", **load)
        text_encoder = CLIPTextModel.from_pretrained(str(image_teacher), subfolder="text_encoder", **load)
        text_encoder.eval().requires_grad_(False)
        unet = UNet2DConditionModel.from_pretrained(str(image_teacher), subfolder="unet", **load)

        t = time.monotonic()
        data = render_styled_training_set(cfg)
        images = np.concatenate([data["images"], data["clip_images"]])
        captions = data["captions"] + data["clip_captions"]
        latents = encode_latents(vae, images)
        wall["data_s"] = time.monotonic() - t
        logger.info(
            "rendered, styled and encoded %d scenes and %d clip frames in %.0f s (style score %.1f)",
            len(data["images"]), len(data["clip_images"]), wall["data_s"], style_score(images[:256]),
        )  # fmt: skip

        t = time.monotonic()
        fine_tune_unet(
            unet, text_encoder, tokenizer, latents, captions, vae.config.scaling_factor, cfg,
            n_clip_images=len(data["clip_images"]), log_every=log_every,
        )  # fmt: skip
        wall["train_s"] = time.monotonic() - t
        unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)

        t = time.monotonic()
        metrics = validate(tmp / "unet", image_teacher, cfg)
        wall["validation_s"] = time.monotonic() - t
        wall["total_s"] = time.monotonic() - t_start
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*.safetensors"))}
        manifest = {
            "name": "toyworld-style-teacher",
            "description": "the toy image teacher's UNet fine-tuned on diagonal background stripes (the toy "
            "profile's personalised image model)",
            "seed": seed,
            "image_teacher": {
                "path": os.path.relpath(image_teacher.resolve(), REPO_ROOT),
                "unet": sha256_file(image_teacher / "unet" / "diffusion_pytorch_model.safetensors"),
                "latent_scaling_factor": vae.config.scaling_factor,
            },
            "style": {
                "kind": "diagonal background stripes",
                "stripe_cycles": STRIPE_CYCLES,
                "stripe_amplitude": STRIPE_AMPLITUDE,
                "mask_ramp": list(MASK_RAMP),
            },
            "training": dataclasses.asdict(cfg),
            "parameters": sum(p.numel() for p in unet.parameters()),
            "wall_time_s": {k: round(v, 1) for k, v in wall.items()},
            "validation_prompts": validation_prompts(seed, cfg.val_prompts),
            "metrics": metrics,
            "files": files,
            "code": {rel: sha256_file(REPO_ROOT / rel) for rel in ("toyworld/style_teacher.py", "toyworld/scenes.py")},
            "environment": {"python": platform.python_version(), "torch": torch.__version__, "threads": cfg.threads},
        }
        publish_part(tmp, out_dir, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(previous_threads)
    logger.info("toy style teacher written to %s in %.0f s: %s", out_dir, wall["total_s"], json.dumps(metrics))
    return manifest
