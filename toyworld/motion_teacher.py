"""The toy motion teacher: a MotionAdapter trained on the toy world's moving-shape clips, for stage 2's teacher.

Stage 2's teacher is the image teacher plus a pretrained motion module (AnimateDiff on SD v1-5 in production). The toy
profile's motion module is trained here as an ordinary ε-prediction video diffusion model: the toy image teacher
(``toyworld/zoo/image_teacher``) is inflated with a fresh MotionAdapter whose temporal output projections are zero
(:func:`models.video_unet.inflate`), its spatial weights and text encoder stay frozen, and only the motion modules
learn, on clean clips of the toy world (every direction, shape, colour and background).

- Direction: the toy world's moving objects leave a faint trail (:func:`toyworld.videos.trail_mask`), so every
  frame shows where its object is heading; a motion module has no text input and can only carry on a motion that
  the spatial layers draw (:data:`DESIGN`, written to the manifest, says why this design). The committed teacher's
  manifest says what was measured: the image teacher's VAE does not yet reproduce the trail.
- ``init_from``: continue from a saved adapter (the committed teacher continues the first one, which had learned
  coherent motion but not the prompted direction); the manifest's ``continued_from`` records it.
- Clips: a window of ``frames`` consecutive frames (8; ``stride`` 1) at a random offset in a 16-frame toy clip, 64×64:
  the motion per frame that curated toy videos carry (video curation keeps 8 consecutive frames of each clip).
- Latents: the frozen VAE's posterior mean × its scaling_factor, encoded once; prompts: the frozen text encoder's
  embeddings of each distinct caption, once.
- Validation on held-out prompts (stream 41, balanced over directions) through diffusers' own ``AnimateDiffPipeline``
  loading the SAVED adapter: the direction of motion read back from the pixels (:func:`read_motion`), the colour of
  frame 0, and the same for the inflated model without a trained motion module (zero-initialised: every frame the
  same static sample), which is the baseline a motion module has to beat.

Written (``save_pretrained``, safetensors) to ``toyworld/zoo/motion_teacher`` with ``manifest.json`` (training
settings, wall times, metrics, file digests). ``alcm toy train-zoo --only motion-teacher``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
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
from toyworld.image_teacher import (
    DEFAULT_DIR as IMAGE_TEACHER_DIR,
)
from toyworld.image_teacher import (
    IMAGE_SIZE,
    SD15_SCHEDULE,
    read_object,
    to_pixels,
    tokenize,
)
from toyworld.scenes import BACKGROUND_LEVEL, BACKGROUNDS, COLOURS, SHAPES
from toyworld.videos import DIRECTIONS, render_clip, video_caption
from toyworld.zoo_common import REPO_ROOT, publish_part, warmup_cosine_lr

logger = logging.getLogger(__name__)

DEFAULT_DIR = Path(__file__).resolve().parent / "zoo" / "motion_teacher"
TRAIN_STREAM = 40
VAL_STREAM = 41
CLIP_FRAMES = 16
DESIGN = (
    "How the teacher follows the prompted direction: a cue that makes direction visible in each frame. A motion "
    "module (AnimateDiff's, which the sd15 profile loads unchanged) has no text input: it attends across frames at "
    "each position, over features the spatial layers computed from one frame and the prompt. When no single frame "
    "shows where an object is heading, the prompt's direction word reaches it only weakly, and the first teacher "
    "learned coherent motion (0.50 of clips) in random directions (0.08, below a zero module's 0.21). So the toy "
    "world's moving objects leave a faint trail (toyworld.videos.trail_mask: faded copies of the object along the "
    "last 30% of its path, under the pixel readers' object threshold): the image teacher, trained on clip frames "
    "with their captions, learns to draw the trail on the side the caption implies, and the motion module learns "
    "the text-free rule of moving the object away from its trail (a shrinking object is ringed by its trail, a "
    "growing one hides it). Text access for the motion layers was rejected because it would change the motion "
    "module's architecture away from the one production loads."
)
"""Frames of a rendered toy clip; the teacher sees every ``stride``-th."""


@dataclass(frozen=True)
class MotionTeacherTrainingConfig:
    """How the toy motion teacher is trained (defaults: the committed one)."""

    seed: int = 0
    threads: int = 2
    train_clips: int = 4000
    frames: int = 8
    stride: int = 1
    heads: int = 4
    steps: int = 2000
    batch: int = 8
    lr: float = 3e-4
    warmup: int = 100
    caption_dropout: float = 0.1
    ema_decay: float = 0.995
    val_prompts: int = 24
    val_steps: int = 25
    val_guidance: float = 5.0
    init_from: str | None = None
    """A saved MotionAdapter to continue from (its motion modules, not zero-initialised ones); None starts fresh."""

    def __post_init__(self) -> None:
        for name in ("train_clips", "frames", "stride", "heads", "steps", "batch", "val_prompts", "val_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        if (self.frames - 1) * self.stride >= CLIP_FRAMES:
            raise ValueError(f"frames={self.frames} × stride={self.stride} does not fit a {CLIP_FRAMES}-frame clip")
        if not 0.0 <= self.caption_dropout < 1.0 or not 0.0 < self.ema_decay < 1.0:
            raise ValueError("caption_dropout must be in [0, 1) and ema_decay in (0, 1)")


# ------------------------------------------------------------------------------------------------------ the data


def clip_prompt(rng: np.random.Generator, direction: str | None = None) -> dict[str, str]:
    """A clip description drawn as the toy world draws one (``direction`` fixed if given)."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = COLOURS[int(rng.integers(len(COLOURS)))]
    direction = direction or DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return {
        "caption": video_caption(shape, colour, direction, background),
        "shape": shape,
        "colour": colour,
        "direction": direction,
        "background": background,
    }


def render_prompt_clip(prompt: dict[str, str], rng: np.random.Generator, *, frames: int, stride: int) -> np.ndarray:
    """uint8 (frames, 64, 64, 3): ``frames`` frames ``stride`` apart, from a random offset, of a 16-frame toy clip of
    ``prompt``."""
    clip = render_clip(
        prompt["shape"], prompt["colour"], prompt["direction"], prompt["background"], rng,
        frames=CLIP_FRAMES, size=IMAGE_SIZE,
    )  # fmt: skip
    span = (frames - 1) * stride + 1
    start = int(rng.integers(CLIP_FRAMES - span + 1))
    return clip[start : start + span : stride]


def validation_prompts(seed: int, n: int) -> list[dict[str, str]]:
    """Held-out clip prompts (stream 41), directions balanced."""
    rng = np.random.default_rng([seed, VAL_STREAM])
    return [clip_prompt(rng, DIRECTIONS[i % len(DIRECTIONS)]) for i in range(n)]


def read_motion(frames: np.ndarray, background: str) -> dict[str, Any]:
    """The direction of motion of the one drawn object, read from pixels: foreground = pixels far from the
    background level (as :func:`toyworld.image_teacher.read_object`); the centroid's displacement from the first to
    the last frame and the change in foreground area decide among left/right/up/down/growing/shrinking. ``direction``
    is None when the object is missing in the first or last frame, or hardly moves."""
    level = BACKGROUND_LEVEL[background]
    tracks = []
    for frame in (frames[0], frames[-1]):
        mask = np.abs(frame.astype(np.float64) - level).max(axis=-1) > 60.0
        if mask.sum() < 12:
            return {"direction": None, "dx": 0.0, "dy": 0.0, "area_ratio": 1.0}
        ys, xs = np.nonzero(mask)
        tracks.append((xs.mean() / frame.shape[1], ys.mean() / frame.shape[0], float(mask.sum())))
    (x0, y0, a0), (x1, y1, a1) = tracks
    dx, dy, ratio = x1 - x0, y1 - y0, a1 / a0
    growth = abs(math.log(ratio))
    shift = max(abs(dx), abs(dy))
    if growth > 0.5 and shift < 0.15:
        direction = "growing" if ratio > 1 else "shrinking"
    elif shift < 0.08:
        direction = None
    elif abs(dx) >= abs(dy):
        direction = "right" if dx > 0 else "left"
    else:
        direction = "down" if dy > 0 else "up"
    return {"direction": direction, "dx": float(dx), "dy": float(dy), "area_ratio": float(ratio)}


MAX_JUMP = 0.12
"""Largest centroid move between consecutive frames (fraction of the frame) of a coherent clip: a toy clip's object
moves at most 0.6 / 15 = 0.04 per frame."""


def coherent(frames: np.ndarray, background: str) -> bool:
    """One object persists through the clip: drawn in every frame, one colour throughout, and its centroid never
    jumps more than :data:`MAX_JUMP` between consecutive frames (independent per-frame samples fail this)."""
    reads = [read_object(f, background) for f in frames]
    if any(r["colour"] is None for r in reads) or len({r["colour"] for r in reads}) != 1:
        return False
    level = BACKGROUND_LEVEL[background]
    centres = []
    for f in frames:
        ys, xs = np.nonzero(np.abs(f.astype(np.float64) - level).max(axis=-1) > 60.0)
        centres.append((xs.mean() / f.shape[1], ys.mean() / f.shape[0]))
    jumps = np.sqrt((np.diff(np.asarray(centres), axis=0) ** 2).sum(axis=1))
    return bool(jumps.max() <= MAX_JUMP)


def motion_fidelity(videos: list[np.ndarray], prompts: list[dict[str, str]]) -> dict[str, float]:
    """Direction accuracy (pixels), colour accuracy of frame 0, how often an object was drawn, and how often the
    clip is :func:`coherent` (one object persisting and moving smoothly)."""
    motion = [read_motion(v, p["background"]) for v, p in zip(videos, prompts, strict=True)]
    first = [read_object(v[0], p["background"]) for v, p in zip(videos, prompts, strict=True)]
    pairs = list(zip(motion, first, prompts, strict=True))
    return {
        "direction_accuracy": float(np.mean([m["direction"] == p["direction"] for m, _, p in pairs])),
        "colour_accuracy": float(np.mean([r["colour"] == p["colour"] for _, r, p in pairs])),
        "drew_something": float(np.mean([r["colour"] is not None for r in first])),
        "coherent": float(np.mean([coherent(v, p["background"]) for v, p in zip(videos, prompts, strict=True)])),
    }


# ------------------------------------------------------------------------------------------------------ training


@torch.no_grad()
def encode_clips(vae: Any, clips: np.ndarray, batch: int = 256) -> torch.Tensor:
    """uint8 (N, F, H, W, 3) → scaled posterior-mean latents (N, C, F, h, w)."""
    n, f = clips.shape[:2]
    flat = clips.reshape(n * f, *clips.shape[2:])
    out = []
    for s in range(0, len(flat), batch):
        out.append(vae.encode(to_pixels(flat[s : s + batch])).latent_dist.mean * vae.config.scaling_factor)
    lat = torch.cat(out)
    return lat.reshape(n, f, *lat.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


def train_motion(
    unet2d: Any, latents: torch.Tensor, embeds: torch.Tensor, caption_index: np.ndarray, empty: torch.Tensor,
    cfg: MotionTeacherTrainingConfig, rng: np.random.Generator, log_every: int,
) -> Any:  # fmt: skip
    """Train the motion modules of the inflated teacher (ε-prediction); returns the EMA model."""
    import copy

    from models.factory import alphas_cumprod_from
    from models.video_unet import inflate, load_motion_adapter, temporal_parameters, video_forward

    start = load_motion_adapter(cfg.init_from) if cfg.init_from is not None else None
    model = inflate(unet2d, start, heads=cfg.heads)
    model.requires_grad_(False)
    params = list(temporal_parameters(model).values())
    for p in params:
        p.requires_grad_(True)
    ema = copy.deepcopy(model).requires_grad_(False)
    ema_params = list(temporal_parameters(ema).values())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    acp = alphas_cumprod_from(SD15_SCHEDULE)
    t0 = time.monotonic()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, cfg.steps, cfg.warmup, cfg.lr, pi_first=True)
        i = rng.integers(len(latents), size=cfg.batch)
        x0 = latents[torch.from_numpy(i)]
        ehs = embeds[torch.from_numpy(caption_index[i])]
        drop = torch.from_numpy(rng.uniform(size=cfg.batch) < cfg.caption_dropout)
        ehs = torch.where(drop[:, None, None], empty.expand_as(ehs), ehs)
        noise = torch.randn_like(x0)
        t = torch.from_numpy(rng.integers(0, len(acp), size=cfg.batch))
        a = acp[t].view(-1, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(video_forward(model, xt, t, ehs), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p, e in zip(params, ema_params, strict=True):
                e.lerp_(p, 1 - decay)
        if step % log_every == 0 or step == cfg.steps - 1:
            elapsed = time.monotonic() - t0
            logger.info(
                "motion step %d/%d loss %.4f (%.2f s/step, %.0f min left)",
                step + 1, cfg.steps, loss.item(), elapsed / (step + 1),
                elapsed / (step + 1) * (cfg.steps - step - 1) / 60,
            )  # fmt: skip
    return ema.eval()


@torch.no_grad()
def sample_videos(pipe: Any, prompts: list[dict[str, str]], *, steps: int, guidance: float, seed: int, frames: int):
    """One uint8 (F, 64, 64, 3) video per prompt from an ``AnimateDiffPipeline`` (generator seeded per prompt)."""
    out = []
    for i, p in enumerate(prompts):
        g = torch.Generator().manual_seed(seed * 100003 + i)
        video = pipe(
            p["caption"], num_frames=frames, num_inference_steps=steps, guidance_scale=guidance, generator=g,
            output_type="np", height=IMAGE_SIZE, width=IMAGE_SIZE,
        ).frames[0]  # fmt: skip
        out.append((np.asarray(video) * 255).round().astype(np.uint8))
    return out


def animatediff_pipeline(image_teacher: Path, adapter: Any, scheduler: str = "ddim", *, unet: Any = None) -> Any:
    """diffusers' ``AnimateDiffPipeline`` of the image teacher and ``adapter`` (a MotionAdapter); ``unet``: another
    image UNet (a ``UNet2DConditionModel``, e.g. the style teacher's) in place of the teacher's own."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler

    extra = {} if unet is None else {"unet": unet}
    pipe = AnimateDiffPipeline.from_pretrained(str(image_teacher), motion_adapter=adapter, local_files_only=True,
                                               **extra)  # fmt: skip
    if scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def validate(out_dir: Path, image_teacher: Path, cfg: MotionTeacherTrainingConfig) -> dict:
    """Validate the SAVED adapter against the zero-initialised one (see the module docstring)."""
    from models.video_unet import load_motion_adapter, new_motion_adapter

    prompts = validation_prompts(cfg.seed, cfg.val_prompts)
    rng = np.random.default_rng([cfg.seed, VAL_STREAM, 1])
    truth = [render_prompt_clip(p, rng, frames=cfg.frames, stride=cfg.stride) for p in prompts]
    trained = animatediff_pipeline(image_teacher, load_motion_adapter(out_dir))
    unet_cfg = dict(trained.unet.config)
    static = animatediff_pipeline(image_teacher, new_motion_adapter(unet_cfg, heads=cfg.heads))
    kw = {"steps": cfg.val_steps, "guidance": cfg.val_guidance, "seed": cfg.seed, "frames": cfg.frames}
    return {
        f"ddim{cfg.val_steps}_cfg{cfg.val_guidance:g}": motion_fidelity(sample_videos(trained, prompts, **kw), prompts),
        "zero_init_motion_module": motion_fidelity(sample_videos(static, prompts, **kw), prompts),
        "ground_truth_renders": motion_fidelity(truth, prompts),
    }


def adapter_record(adapter_dir: Path) -> dict:
    """Where a continued motion teacher started: the adapter's path, its manifest's digest and its metrics."""
    manifest = adapter_dir / "manifest.json"
    record: dict[str, Any] = {"path": os.path.relpath(adapter_dir.resolve(), REPO_ROOT)}
    if manifest.is_file():
        parent = json.loads(manifest.read_text())
        record |= {"manifest_sha256": sha256_file(manifest), "training": parent.get("training"),
                   "metrics": parent.get("metrics")}  # fmt: skip
    return record


def train_motion_teacher(
    out_dir: Path = DEFAULT_DIR, *, image_teacher: Path = IMAGE_TEACHER_DIR, seed: int = 0, log_every: int = 50,
    **settings: Any,
) -> dict:  # fmt: skip
    """Train the toy motion teacher and write it (MotionAdapter directory + ``manifest.json``) to ``out_dir``.

    Written to a temporary folder next to ``out_dir``, validated there, and moved into place at the end, so a failed
    run leaves the previous one intact."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from models.video_unet import save_motion_adapter

    cfg = MotionTeacherTrainingConfig(seed=seed, **settings)
    out_dir, image_teacher = Path(out_dir), Path(image_teacher)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, TRAIN_STREAM, 1])
    wall: dict[str, float] = {}
    t_start = time.monotonic()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        load = {"local_files_only": True}
        vae = AutoencoderKL.from_pretrained(str(image_teacher), subfolder="vae", **load).eval()
        tokenizer = CLIPTokenizer.from_pretrained(str(image_teacher), subfolder="tokenizer", **load)
        text_encoder = CLIPTextModel.from_pretrained(str(image_teacher), subfolder="text_encoder", **load).eval()
        unet = UNet2DConditionModel.from_pretrained(str(image_teacher), subfolder="unet", **load).eval()

        t = time.monotonic()
        prompts, clips = [], []
        for i in range(cfg.train_clips):
            clip_rng = np.random.default_rng([seed, TRAIN_STREAM, i])
            prompt = clip_prompt(clip_rng)
            prompts.append(prompt)
            clips.append(render_prompt_clip(prompt, clip_rng, frames=cfg.frames, stride=cfg.stride))
        latents = encode_clips(vae, np.stack(clips))
        captions = sorted({p["caption"] for p in prompts})
        index = {c: k for k, c in enumerate(captions)}
        caption_index = np.array([index[p["caption"]] for p in prompts])
        with torch.no_grad():
            embeds = text_encoder(tokenize(tokenizer, captions))[0]
            empty = text_encoder(tokenize(tokenizer, [""]))[0]
        wall["data_s"] = time.monotonic() - t
        logger.info("rendered and encoded %d clips (%d captions) in %.0f s", len(clips), len(captions), wall["data_s"])

        t = time.monotonic()
        model = train_motion(unet, latents, embeds, caption_index, empty, cfg, rng, log_every)
        wall["train_s"] = time.monotonic() - t
        save_motion_adapter(model, tmp)
        t = time.monotonic()
        metrics = validate(tmp, image_teacher, cfg)
        wall["validation_s"] = time.monotonic() - t
        wall["total_s"] = time.monotonic() - t_start
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*.safetensors"))}
        manifest = {
            "name": "toyworld-motion-teacher",
            "description": "MotionAdapter trained on the toy moving-shape clips over the frozen toy image teacher "
            "(stage 2's teacher on the toy profile)",
            "seed": seed,
            "image_teacher": {"path": os.path.relpath(image_teacher, REPO_ROOT)},
            "training": dataclasses.asdict(cfg),
            "design": DESIGN,
            "continued_from": None if cfg.init_from is None else adapter_record(Path(cfg.init_from)),
            "parameters": sum(p.numel() for n, p in model.named_parameters() if "motion_modules" in n),
            "wall_time_s": {k: round(v, 1) for k, v in wall.items()},
            "validation_prompts": validation_prompts(seed, cfg.val_prompts),
            "metrics": metrics,
            "files": files,
            "code": {rel: sha256_file(REPO_ROOT / rel) for rel in ("toyworld/motion_teacher.py", "toyworld/videos.py")},
            "environment": {"python": platform.python_version(), "torch": torch.__version__, "threads": cfg.threads},
        }
        publish_part(tmp, out_dir, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(previous_threads)
    logger.info("toy motion teacher written to %s in %.0f s: %s", out_dir, wall["total_s"], json.dumps(metrics))
    return manifest
