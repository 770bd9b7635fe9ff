"""The toy model zoo: tiny models trained on the toy world, whose weights are committed under ``toyworld/zoo/``.

This module trains the image scorers used by toy curation (``models.scorers``), reproducibly, on 2 CPU cores in a few
minutes, and writes them with a manifest to ``toyworld/zoo/scorers/``:

- ``clip.safetensors``: open_clip ``alcm-toy-clip`` (64-d joint space; image tower: open_clip's ModifiedResNet, the
  RN50 CLIP design, at width 16 with one block per stage and attention pooling; text tower: 3-layer transformer of
  width 64 over the standard 49408-token BPE vocabulary, context 32), stored in fp16 (~10 MB, mostly the token
  embedding).
- ``aesthetic.safetensors``: `models.scorers.AestheticMLP` (input 64, hidden 128/64/32/16) on the toy CLIP's
  L2-normalised image embeddings.
- ``watermark.safetensors``: `models.scorers.ToyWatermarkCNN` (arch ``toy_cnn``, 64x64 input, "watermarked" at logit 0
  like LAION's detector).
- ``manifest.json``: what was trained, seeds, steps, wall times, the training settings, the toy ``ScorersConfig``,
  sha256 of every file and of the code that made them, validation metrics and the recommended thresholds (image
  curation's in ``thresholds``, video curation's ``clip_min`` in ``video_thresholds``).

How, and why:

- Data. One pool of images rendered from ``toyworld.scenes`` with seed ``[seed, 0]``: every scene clean, and
  degraded copies (``toyworld.degrade``) of a random subset: watermarked, blurred, noisy, near-duplicate. Every image
  keeps its scene's TRUE caption. Low-resolution images are left out: curation rejects them by size before their
  scores matter. Validation uses fresh scenes from seed ``[seed, 1]``, never seen in training.
- Video frames. Video curation scores a clip's middle frame against the clip's caption ("a red circle moving left on
  a black background"). Trained on image captions alone, where "left"/"right"/"top"/"bottom" are POSITIONS, the
  CLIP read "moving left" as a place (clean clips captioned "moving left" scored -40..0, "moving right" ~70), so no
  video threshold could separate wrong captions from right ones. So the pool also holds one random frame of each of
  ``pool_clips`` clean clips rendered with ``toyworld.videos.render_clip``, clip i from ``[seed, 20, i]`` (a stream
  no toy world and no validation uses), captioned with its full video caption (``video_caption``); every CLIP step
  adds ``batch_video`` of them to its images (20% of the batch). Their hard negatives swap the colour or the shape
  word (``video_mismatched_caption``), never the direction: one frame cannot show where a shape is heading, so a
  direction-swapped caption is not wrong for a frame, and as a negative it would only teach noise.
- CLIP. Contrastive InfoNCE in both directions with a learnable logit scale (open_clip's), plus HARD NEGATIVES: each
  image's caption with one colour or shape word swapped (``mismatched_caption``, resampled every step) is added to the
  text side, because curation must catch exactly that kind of wrong caption. Curation decides by a FIXED threshold on
  ``clip_score``, which InfoNCE (a ranking loss) does not calibrate, so a second term, a sigmoid loss on the cosine of
  (image, true caption) vs (image, mismatched caption) with a learnable scale and bias (SigLIP-style; both are training
  only and not saved), pushes every true pair above and every mismatched pair below one common cosine. Captions that
  are literally identical to an image's own caption are masked out of its negatives. Degraded images take part in
  InfoNCE so the embeddings stay meaningful on them; blurred and noisy ones are left out of the sigmoid term (their
  small shapes can be blurred beyond recognition, so "mismatched" is not decidable there). Shape is what the tiny
  model learns last (colour mismatches are caught almost perfectly early on), so each image also gets a caption with
  a SHAPE word swapped as an extra hard negative. Clip frames take part in both terms like clean images (their
  negatives: one colour-or-shape swap, ``shape_negatives`` shape swaps); they are left out of the aesthetic term.
- Aesthetic. Trained jointly with CLIP on the image embedding (gradient into the image tower), because a contrastive
  loss alone teaches the tower to IGNORE blur and noise (the caption stays the same), which would leave nothing for an
  aesthetic head to read. Targets: 1.0 for clean, near-duplicate and watermarked images (a watermark is the watermark
  detector's business, not an aesthetic defect), 0.0 for blurred and noisy ones; MSE, so the score lives in about
  [0, 1], higher is better. After CLIP training the head is fine-tuned alone on embeddings of the saved (fp16) CLIP,
  so that it matches the weights that ship.
- Watermark. ``toy_cnn`` trained with cross-entropy on balanced batches: watermarked images vs everything else in the
  pool (clean, blurred, noisy, near-duplicate), so blur or noise does not read as a watermark; a quarter of each
  batch (either class) is turned greyscale, so greyscale inputs (L or 16-bit images) do not read as one either.
- Reproducibility. numpy ``default_rng`` and ``torch.manual_seed`` from ``seed``, deterministic torch algorithms,
  2 torch threads; the same seed on the same machine gives the same weights (checked: two runs wrote bit-identical
  ``clip.safetensors``; a different thread count or CPU may change the low bits of float sums).
- Calibration (validation seed, through `models.scorers.ImageTextScorer` loading the saved files): ``clip_min`` is the
  3rd percentile of correct-caption clip scores on clean images (keeps 97% of correct pairs, leaving room in the
  5% false-rejection budget for the other filters), rounded down.
  ``aesthetic_min`` sits in the middle of the gap between the 3rd percentile of clean scores and the 97th percentile
  of blurred/noisy scores, and never above that clean percentile (so at most 3% clean false rejections): the 3rd
  percentile itself would sit at the edge of the tight clean cluster and reject a third of the near-duplicates
  (measured), whose JPEG/crop artifacts lower their score a little. ``watermark_max`` is 0.5. Each is reported with
  the recall it achieves and the false rejections it causes on every image kind. Video ``clip_min`` follows the
  ``clip_min`` rule on clip frames: clean frames of fresh clips (``[seed, 21, i]``) against their true video caption
  (3rd percentile, rounded down), reported with the correct-pair 3rd/5th percentiles, the mismatched (colour- or
  shape-swapped caption) 95th percentile, the mismatch recall and the clean false rejections it gives.

Run: ``python -m toyworld.zoo --only scorers --out toyworld/zoo/scorers --seed 0`` (the project CLI calls
`train_scorers`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from contracts.digests import sha256_file
from models.scorers import (
    BUNDLED_OPEN_CLIP_CONFIG_DIR,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AestheticConfig,
    AestheticMLP,
    ClipConfig,
    ImageTextScorer,
    ScorersConfig,
    WatermarkConfig,
    WatermarkDetector,
    build_clip,
    save_weights,
    to_normalised_tensor,
)
from toyworld.degrade import add_noise, add_watermark, blur, near_duplicate
from toyworld.scenes import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    SceneSpec,
    caption_for,
    mismatched_caption,
    render_scene,
    sample_scene,
)
from toyworld.videos import DIRECTIONS, render_clip, video_caption

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCORERS_DIR = Path(__file__).resolve().parent / "zoo" / "scorers"
"""Where the committed toy scorer weights live."""

TOY_CLIP_MODEL = "alcm-toy-clip"
TOY_IMAGE_SIZE = 64
TOY_EMBED_DIM = 64
TOY_AESTHETIC_HIDDEN = (128, 64, 32, 16)

KINDS = ("clean", "watermark", "blur", "noise", "near_duplicate")
"""Image kinds in the training pool; every kind keeps the scene's true caption."""

_DEGRADE: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "watermark": add_watermark,
    "blur": blur,
    "noise": add_noise,
    "near_duplicate": near_duplicate,
}
_LOW_QUALITY = ("blur", "noise")


def toy_scorers_config(
    scorers_dir: str = "toyworld/zoo/scorers", *, model_config_dir: str = "models/open_clip_configs", **overrides: Any
) -> ScorersConfig:
    """The toy profile's ScorersConfig: committed zoo weights, paths relative to the repository root by default."""
    cfg = ScorersConfig(
        clip=ClipConfig(
            model=TOY_CLIP_MODEL,
            weights=f"{scorers_dir}/clip.safetensors",
            model_config_dir=model_config_dir,
            image_size=TOY_IMAGE_SIZE,
        ),
        aesthetic=AestheticConfig(
            weights=f"{scorers_dir}/aesthetic.safetensors", input_dim=TOY_EMBED_DIM, hidden=TOY_AESTHETIC_HIDDEN
        ),
        watermark=WatermarkConfig(
            arch="toy_cnn", weights=f"{scorers_dir}/watermark.safetensors", input_size=TOY_IMAGE_SIZE, positive_index=0
        ),
        device="cpu",
        batch_size=64,
        torch_threads=1,
    )
    return dataclasses.replace(cfg, **overrides)


@dataclass(frozen=True)
class ScorerTrainingConfig:
    """Settings of one `train_scorers` run (all recorded in the manifest)."""

    seed: int = 0
    """Seeds the training pool ([seed, 0]), the validation set ([seed, 1]) and torch."""
    pool_scenes: int = 9000
    """Scenes rendered for training; each gives a clean image, and a subset also degraded copies."""
    degraded_fraction: tuple[tuple[str, float], ...] = (
        ("watermark", 0.45),
        ("blur", 0.15),
        ("noise", 0.15),
        ("near_duplicate", 0.1),
    )
    """Per degradation, the fraction of pool scenes that also get a copy degraded that way."""
    clip_batch_weights: tuple[tuple[str, float], ...] = (
        ("clean", 0.6),
        ("watermark", 0.15),
        ("blur", 0.08),
        ("noise", 0.08),
        ("near_duplicate", 0.09),
    )
    """Sampling weight of each image kind in a CLIP training batch."""
    pool_clips: int = 4000
    """Moving-shape clips rendered for training (clip i from ``[seed, 20, i]``); one random frame of each, clean."""
    batch_video: int = 32
    """Clip frames added to each CLIP step next to its ``batch_clip`` images (32 of 160: 20% of the batch), with
    their video captions and colour/shape-swapped hard negatives."""
    steps_clip: int = 700
    """CLIP (+ joint aesthetic) optimisation steps."""
    batch_clip: int = 128
    """Images per CLIP step; the text side holds each one's true caption, one `mismatched_caption` and
    ``shape_negatives`` shape-swapped captions."""
    lr_clip: float = 2e-3
    """Peak AdamW learning rate of the CLIP step (linear warm-up, cosine decay)."""
    shape_negatives: int = 1
    """Extra hard negatives per image with a shape word swapped (shape is what a tiny CLIP learns last)."""
    calibration_weight: float = 1.0
    """Weight of the fixed-threshold sigmoid loss on true vs mismatched pairs."""
    aesthetic_weight: float = 3.0
    """Weight of the joint aesthetic MSE in the CLIP step."""
    steps_aesthetic: int = 600
    """Head-only aesthetic steps on frozen embeddings of the saved CLIP."""
    steps_watermark: int = 400
    """Watermark CNN steps (batches of half watermarked, half other images)."""
    batch_watermark: int = 128
    """Images per watermark step."""
    lr_watermark: float = 2e-3
    """Peak AdamW learning rate of the watermark CNN."""
    watermark_grey_fraction: float = 0.25
    """Share of watermark training images (either class) turned greyscale, so that greyscale images (L, 16-bit)
    are judged on their watermark, not flagged for being out of distribution."""
    clip_keep_quantile: float = 0.03
    """``clip_min`` is this quantile of correct-caption scores on clean validation images: the share of correct
    pairs the CLIP filter may reject (3% of the 5% false-rejection budget)."""
    val_scenes: int = 1200
    """Validation scenes (fresh seed); each gives clean, watermarked, blurred, noisy and near-duplicate images."""
    val_clips: int = 1200
    """Validation clips (clip i from ``[seed, 21, i]``); one random clean frame of each, with its true video caption
    and a colour- or shape-swapped one."""
    threads: int = 2
    """torch threads while training."""

    def __post_init__(self) -> None:
        for name in (
            "pool_scenes",
            "pool_clips",
            "steps_clip",
            "batch_clip",
            "steps_aesthetic",
            "steps_watermark",
            "val_scenes",
            "val_clips",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be a positive integer")
        if not isinstance(self.shape_negatives, int) or self.shape_negatives < 0:
            raise ValueError(f"shape_negatives={self.shape_negatives!r}: must be an integer >= 0")
        if not isinstance(self.batch_video, int) or self.batch_video < 0:
            raise ValueError(f"batch_video={self.batch_video!r}: must be an integer >= 0")
        for name in ("degraded_fraction", "clip_batch_weights"):
            for kind, _ in getattr(self, name):
                if kind not in KINDS:
                    raise ValueError(f"{name}: kind {kind!r} unknown; must be one of {', '.join(KINDS)}")


# --------------------------------------------------------------------------------------------------- data


@dataclass
class ImagePool:
    """Rendered toy images with their scene, true caption and kind."""

    images: np.ndarray
    """uint8 (N, 64, 64, 3)."""
    scenes: list[SceneSpec]
    """The scene each image was rendered from."""
    captions: list[str]
    """The scene's true caption."""
    kinds: np.ndarray
    """int index into KINDS, (N,)."""

    def __len__(self) -> int:
        return len(self.captions)

    def indices(self, kind: str) -> np.ndarray:
        return np.flatnonzero(self.kinds == KINDS.index(kind))


def make_pool(rng: np.random.Generator, n_scenes: int, degraded_fraction: Sequence[tuple[str, float]]) -> ImagePool:
    """Render ``n_scenes`` clean images plus degraded copies of random subsets (see ``degraded_fraction``)."""
    images, scenes, kinds = [], [], []
    for _ in range(n_scenes):
        scene = sample_scene(rng)
        clean = render_scene(scene, size=TOY_IMAGE_SIZE)
        images.append(np.asarray(clean))
        scenes.append(scene)
        kinds.append(KINDS.index("clean"))
        for kind, fraction in degraded_fraction:
            if rng.uniform() < fraction:
                images.append(np.asarray(_DEGRADE[kind](clean, rng)))
                scenes.append(scene)
                kinds.append(KINDS.index(kind))
    return ImagePool(np.stack(images), scenes, [caption_for(s) for s in scenes], np.asarray(kinds))


def make_validation_set(rng: np.random.Generator, n_scenes: int) -> dict[str, Any]:
    """Fresh scenes, each rendered clean, watermarked, blurred and noisy, with true and mismatched captions."""
    out: dict[str, Any] = {k: [] for k in ("clean", "watermark", "blur", "noise", "near_duplicate")}
    captions, mismatched = [], []
    for _ in range(n_scenes):
        scene = sample_scene(rng)
        clean = render_scene(scene, size=TOY_IMAGE_SIZE)
        out["clean"].append(np.asarray(clean))
        for kind in ("watermark", "blur", "noise", "near_duplicate"):
            out[kind].append(np.asarray(_DEGRADE[kind](clean, rng)))
        captions.append(caption_for(scene))
        mismatched.append(mismatched_caption(scene, rng))
    out["captions"], out["mismatched"] = captions, mismatched
    return out


def shape_swapped_caption(scene: SceneSpec, rng: np.random.Generator) -> str:
    """The true caption with one object's shape word replaced by a wrong one (a shape-only `mismatched_caption`)."""
    index = int(rng.integers(len(scene.objects)))
    obj = scene.objects[index]
    wrong_shapes = [shape for shape in SHAPES if shape != obj.shape]
    changed = dataclasses.replace(obj, shape=wrong_shapes[int(rng.integers(len(wrong_shapes)))])
    objects = scene.objects[:index] + (changed,) + scene.objects[index + 1 :]
    return caption_for(dataclasses.replace(scene, objects=objects))


VIDEO_TRAIN_STREAM = 20
"""Clip i of the CLIP training pool is rendered from ``default_rng([seed, 20, i])``."""
VIDEO_VAL_STREAM = 21
"""Clip i of the video validation set is rendered from ``default_rng([seed, 21, i])``."""
VIDEO_FRAMES = 16
"""Frames per rendered clip (the toy world's default); training and validation use one random frame of each."""


@dataclass(frozen=True)
class ClipSpec:
    """What a toy clip shows (as ``toyworld.videos`` draws it): one shape of one colour in motion on a background."""

    shape: str
    colour: str
    direction: str
    background: str

    @property
    def caption(self) -> str:
        return video_caption(self.shape, self.colour, self.direction, self.background)


@dataclass
class VideoFramePool:
    """One clean frame per rendered clip, with the clip and its true video caption."""

    images: np.ndarray
    """uint8 (N, 64, 64, 3)."""
    clips: list[ClipSpec]
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)


def sample_clip_frame(rng: np.random.Generator, *, frames: int = VIDEO_FRAMES) -> tuple[np.ndarray, ClipSpec]:
    """Draw a clip as the toy world does (shape, colour, direction, background, then `render_clip`) and return one
    random frame of it with the clip."""
    clip = ClipSpec(
        shape=SHAPES[int(rng.integers(len(SHAPES)))],
        colour=COLOURS[int(rng.integers(len(COLOURS)))],
        direction=DIRECTIONS[int(rng.integers(len(DIRECTIONS)))],
        background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
    )
    video = render_clip(
        clip.shape, clip.colour, clip.direction, clip.background, rng, frames=frames, size=TOY_IMAGE_SIZE
    )
    return video[int(rng.integers(frames))], clip


def video_mismatched_caption(clip: ClipSpec, rng: np.random.Generator, *, shape_only: bool = False) -> str:
    """The clip's caption with its colour or its shape word (50/50; only the shape if ``shape_only``) replaced by
    another word of the vocabulary, as the toy world's ``mismatched`` clips. Never the direction: one frame cannot
    show where a shape is heading, so a direction-swapped caption is not a wrong caption for a frame."""
    if shape_only or rng.uniform() < 0.5:
        others = [shape for shape in SHAPES if shape != clip.shape]
        wrong = dataclasses.replace(clip, shape=others[int(rng.integers(len(others)))])
    else:
        others = [colour for colour in COLOURS if colour != clip.colour]
        wrong = dataclasses.replace(clip, colour=others[int(rng.integers(len(others)))])
    return wrong.caption


def make_video_pool(seed: int, n_clips: int, *, stream: int = VIDEO_TRAIN_STREAM) -> VideoFramePool:
    """One random clean frame of each of ``n_clips`` clips, clip i from ``default_rng([seed, stream, i])``."""
    images, clips = [], []
    for i in range(n_clips):
        frame, clip = sample_clip_frame(np.random.default_rng([seed, stream, i]))
        images.append(frame)
        clips.append(clip)
    return VideoFramePool(np.stack(images), clips, [clip.caption for clip in clips])


def make_video_validation_set(seed: int, n_clips: int) -> dict[str, Any]:
    """Fresh clips (stream ``VIDEO_VAL_STREAM``): one clean frame each, its true caption and a colour- or
    shape-swapped one (``swapped`` says which word changed)."""
    frames, clips, mismatched, swapped = [], [], [], []
    for i in range(n_clips):
        rng = np.random.default_rng([seed, VIDEO_VAL_STREAM, i])
        frame, clip = sample_clip_frame(rng)
        wrong = video_mismatched_caption(clip, rng)
        frames.append(frame)
        clips.append(clip)
        mismatched.append(wrong)
        swapped.append("shape" if clip.shape not in wrong.split() else "colour")
    return {
        "frames": frames,
        "clips": clips,
        "captions": [clip.caption for clip in clips],
        "mismatched": mismatched,
        "swapped": swapped,
    }


class _TokenCache:
    """Tokenises each distinct caption once (the toy vocabulary is closed, so captions repeat a lot)."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            for caption, tokens in zip(missing, self.tokenizer(missing), strict=True):
                self.cache[caption] = tokens
        return torch.stack([self.cache[c] for c in captions])


def _clip_pixels(images: np.ndarray) -> torch.Tensor:
    return to_normalised_tensor(list(images), open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, "cpu")


def _watermark_pixels(images: np.ndarray) -> torch.Tensor:
    return to_normalised_tensor(list(images), IMAGENET_MEAN, IMAGENET_STD, "cpu")


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _adamw(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    # no decay on biases, norms, embeddings' scalars (the usual CLIP recipe)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


# --------------------------------------------------------------------------------------------------- training


def _caption_ids(captions: Sequence[str]) -> np.ndarray:
    ids: dict[str, int] = {}
    return np.asarray([ids.setdefault(c, len(ids)) for c in captions])


def _orthogonal_init(mlp: AestheticMLP) -> None:
    """Norm-preserving init for LAION's MLP, which has no activations: it is a product of five linear maps, and
    PyTorch's default init shrinks the signal ~1.7x per layer, which leaves such a deep linear net on a long
    plateau (measured: MSE stuck at 0.25 for hundreds of steps). Training-time choice only; the layout is unchanged."""
    for layer in mlp.layers:
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight)
            nn.init.zeros_(layer.bias)
    nn.init.constant_(mlp.layers[-1].bias, 0.5)


def train_clip(
    pool: ImagePool,
    cfg: ScorerTrainingConfig,
    rng: np.random.Generator,
    *,
    log_every: int,
    videos: VideoFramePool | None = None,
) -> tuple[nn.Module, AestheticMLP]:
    """Train the toy CLIP with hard negatives and a fixed-threshold calibration term, jointly with the aesthetic MLP.

    Each step holds ``cfg.batch_clip`` pool images and, if ``videos`` is given, ``cfg.batch_video`` clip frames with
    their video captions; the frames take part in both contrastive terms (with colour/shape-swapped negatives), not
    in the aesthetic term."""
    torch.manual_seed(cfg.seed)
    model, _, tokenizer = build_clip(ClipConfig(model=TOY_CLIP_MODEL, weights=None, image_size=TOY_IMAGE_SIZE))
    aesthetic = AestheticMLP(TOY_EMBED_DIM, TOY_AESTHETIC_HIDDEN)
    _orthogonal_init(aesthetic)
    # scale (log) and bias of the sigmoid calibration term; training-only, not saved
    calibration = nn.Parameter(torch.tensor([math.log(10.0), 0.3]))
    model.train()
    aesthetic.train()
    params = [p for p in model.parameters() if p.requires_grad] + list(aesthetic.parameters()) + [calibration]
    opt = _adamw(params, cfg.lr_clip, weight_decay=0.05)
    tokens = _TokenCache(tokenizer)

    by_kind = {kind: pool.indices(kind) for kind in KINDS}
    kinds, weights = zip(*[(k, w) for k, w in cfg.clip_batch_weights if len(by_kind[k])], strict=True)
    weights = np.asarray(weights) / np.sum(weights)
    aesthetic_target = torch.tensor([0.0 if k in _LOW_QUALITY else 1.0 for k in KINDS])
    low_quality_ids = [KINDS.index(k) for k in _LOW_QUALITY]
    b = cfg.batch_clip
    v = cfg.batch_video if videos is not None and len(videos) else 0
    n = b + v  # images first, then clip frames
    warmup = max(1, cfg.steps_clip // 20)
    t_log, seen = time.monotonic(), 0
    for step in range(cfg.steps_clip):
        lr = cfg.lr_clip * _lr_factor(step, cfg.steps_clip, warmup)
        _set_lr(opt, lr)
        counts = rng.multinomial(b, weights)
        idx = np.concatenate([rng.choice(by_kind[k], size=c) for k, c in zip(kinds, counts, strict=True)])
        pixels = pool.images[idx]
        true_captions = [pool.captions[i] for i in idx]
        wrong_captions = [mismatched_caption(pool.scenes[i], rng) for i in idx]
        shape_wrong = [[shape_swapped_caption(pool.scenes[i], rng) for i in idx] for _ in range(cfg.shape_negatives)]
        if v:
            assert videos is not None
            vidx = rng.choice(len(videos), size=v)
            pixels = np.concatenate([pixels, videos.images[vidx]])
            true_captions += [videos.captions[i] for i in vidx]
            wrong_captions += [video_mismatched_caption(videos.clips[i], rng) for i in vidx]
            for wrong in shape_wrong:
                wrong += [video_mismatched_caption(videos.clips[i], rng, shape_only=True) for i in vidx]
        for wrong in shape_wrong:
            wrong_captions += wrong
        all_ids = _caption_ids(true_captions + wrong_captions)
        # a caption identical to image i's own caption is not a negative for image i
        same = torch.from_numpy(all_ids[None, :] == all_ids[:n, None])
        same[torch.arange(n), torch.arange(n)] = False

        image = F.normalize(model.encode_image(_clip_pixels(pixels)), dim=-1)
        text = F.normalize(model.encode_text(tokens(true_captions + wrong_captions)), dim=-1)
        text_true, text_wrong = text[:n], text[n:]
        scale = model.logit_scale.exp().clamp(max=100.0)
        target = torch.arange(n)
        image_to_text = (scale * image @ text.T).masked_fill(same, float("-inf"))
        text_to_image = (scale * text_true @ image.T).masked_fill(same[:, :n], float("-inf"))
        contrastive = 0.5 * (F.cross_entropy(image_to_text, target) + F.cross_entropy(text_to_image, target))

        kind_ids = torch.from_numpy(pool.kinds[idx])
        # clip frames are clean, so always decidable
        decidable = torch.cat([(~torch.isin(kind_ids, torch.tensor(low_quality_ids))).float(), torch.ones(v)])
        a, bias = calibration[0].exp(), calibration[1]
        cos_true = (image * text_true).sum(-1)
        cos_wrong = (image[None] * text_wrong.view(-1, n, image.shape[-1])).sum(-1)  # (negatives per image, n)
        sigmoid_loss = F.softplus(-a * (cos_true - bias)) + F.softplus(a * (cos_wrong - bias)).mean(0)
        calibration_loss = (decidable * sigmoid_loss).sum() / decidable.sum().clamp(min=1.0) / 2

        aesthetic_loss = F.mse_loss(aesthetic(image[:b]).squeeze(-1), aesthetic_target[kind_ids])
        loss = contrastive + cfg.calibration_weight * calibration_loss + cfg.aesthetic_weight * aesthetic_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += n
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps_clip:
            now = time.monotonic()
            with torch.no_grad():
                gap = (cos_true - cos_wrong.max(0).values)[decidable.bool()].mean().item()
            logger.info(
                "clip step %d/%d loss %.4f (contrastive %.4f calibration %.4f aesthetic %.4f) true-hardest gap %.3f "
                "scale %.1f lr %.2e %.1f samples/s",
                step + 1, cfg.steps_clip, loss.item(), contrastive.item(), calibration_loss.item(),
                aesthetic_loss.item(), gap, scale.item(), lr, seen / (now - t_log),
            )  # fmt: skip
            t_log, seen = now, 0
    return model.eval(), aesthetic.eval()


@torch.inference_mode()
def _embed(model: nn.Module, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    chunks = [model.encode_image(_clip_pixels(images[s : s + batch])) for s in range(0, len(images), batch)]
    return F.normalize(torch.cat(chunks).float(), dim=-1)


def finetune_aesthetic(
    aesthetic: AestheticMLP,
    embeddings: torch.Tensor,
    kinds: np.ndarray,
    cfg: ScorerTrainingConfig,
    rng: np.random.Generator,
    *,
    log_every: int,
) -> AestheticMLP:
    """Fit the aesthetic head alone on fixed embeddings (of the CLIP weights as saved), every image kind equally."""
    torch.manual_seed(cfg.seed + 1)
    # every kind equally often (64 each): near-duplicates and watermarked images are rare in the pool but must not
    # read as low quality (they are the dedup and watermark filters' business)
    by_kind = [np.flatnonzero(kinds == KINDS.index(k)) for k in KINDS]
    target = torch.tensor([0.0 if k in _LOW_QUALITY else 1.0 for k in KINDS]).repeat_interleave(64)
    aesthetic.train()
    opt = _adamw(list(aesthetic.parameters()), 1e-3, weight_decay=0.01)
    t_log, seen = time.monotonic(), 0
    for step in range(cfg.steps_aesthetic):
        _set_lr(opt, 1e-3 * _lr_factor(step, cfg.steps_aesthetic, 10))
        idx = np.concatenate([rng.choice(members, 64) for members in by_kind])
        loss = F.mse_loss(aesthetic(embeddings[idx]).squeeze(-1), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(idx)
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps_aesthetic:
            now = time.monotonic()
            logger.info(
                "aesthetic step %d/%d loss %.4f %.0f samples/s", step + 1, cfg.steps_aesthetic, loss.item(),
                seen / (now - t_log),
            )  # fmt: skip
            t_log, seen = now, 0
    return aesthetic.eval()


def to_greyscale(images: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Copy of uint8 (N, H, W, 3) ``images`` with the rows selected by ``which`` replaced by their luma (ITU-R 601)."""
    out = images.copy()
    if which.any():
        luma = np.clip(np.rint(images[which].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)), 0, 255)
        out[which] = luma.astype(np.uint8)[..., None].repeat(3, axis=-1)
    return out


def train_watermark(
    pool: ImagePool, cfg: ScorerTrainingConfig, rng: np.random.Generator, *, log_every: int
) -> WatermarkDetector:
    """Train the toy_cnn detector: watermarked (label = positive_index 0) vs every other pool image."""
    torch.manual_seed(cfg.seed + 2)
    detector = WatermarkDetector("toy_cnn", positive_index=0)
    detector.train()
    opt = _adamw(list(detector.parameters()), cfg.lr_watermark, weight_decay=0.01)
    positives = pool.indices("watermark")
    negatives = np.flatnonzero(pool.kinds != KINDS.index("watermark"))
    half = cfg.batch_watermark // 2
    labels = torch.cat([torch.zeros(half, dtype=torch.long), torch.ones(half, dtype=torch.long)])
    warmup = max(1, cfg.steps_watermark // 20)
    t_log, seen = time.monotonic(), 0
    for step in range(cfg.steps_watermark):
        lr = cfg.lr_watermark * _lr_factor(step, cfg.steps_watermark, warmup)
        _set_lr(opt, lr)
        idx = np.concatenate([rng.choice(positives, half), rng.choice(negatives, half)])
        images = to_greyscale(pool.images[idx], rng.uniform(size=len(idx)) < cfg.watermark_grey_fraction)
        loss = F.cross_entropy(detector.logits(_watermark_pixels(images)), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(idx)
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps_watermark:
            now = time.monotonic()
            logger.info(
                "watermark step %d/%d loss %.4f lr %.2e %.1f samples/s", step + 1, cfg.steps_watermark, loss.item(),
                lr, seen / (now - t_log),
            )  # fmt: skip
            t_log, seen = now, 0
    return detector.eval()


# --------------------------------------------------------------------------------------------------- validation


def validate_scorers(
    scorer: ImageTextScorer, val: dict[str, Any], *, clip_keep_quantile: float = 0.03
) -> tuple[dict[str, Any], dict[str, float]]:
    """Score the validation set; return (metrics, recommended thresholds)."""
    captions, mismatched = val["captions"], val["mismatched"]
    scores = {
        kind: scorer.score(val[kind], captions) for kind in ("clean", "watermark", "blur", "noise", "near_duplicate")
    }
    wrong = scorer.score(val["clean"], mismatched)
    every = np.ones(len(captions), dtype=bool)
    grey_clean = scorer.score(list(to_greyscale(np.stack(val["clean"]), every)), captions)
    grey_watermarked = scorer.score(list(to_greyscale(np.stack(val["watermark"]), every)), captions)
    wrong_watermarked = scorer.score(val["watermark"], mismatched)

    clip_true = scores["clean"]["clip_score"]
    clip_min = math.floor(float(np.quantile(clip_true, clip_keep_quantile)) * 100) / 100

    def below(values: np.ndarray, threshold: float) -> float:
        return float(np.mean(values < threshold))

    clip_metrics = {
        "threshold_rule": f"{clip_keep_quantile:.0%} quantile of correct-caption clip_score on clean validation "
        "images (reject below)",
        "clip_min": clip_min,
        "correct_kept_clean": 1.0 - below(clip_true, clip_min),
        "mismatch_recall_clean": below(wrong["clip_score"], clip_min),
        "correct_kept_watermarked": 1.0 - below(scores["watermark"]["clip_score"], clip_min),
        "mismatch_recall_watermarked": below(wrong_watermarked["clip_score"], clip_min),
        "correct_kept_near_duplicate": 1.0 - below(scores["near_duplicate"]["clip_score"], clip_min),
        "correct_kept_blur": 1.0 - below(scores["blur"]["clip_score"], clip_min),
        "correct_kept_noise": 1.0 - below(scores["noise"]["clip_score"], clip_min),
        "mean_correct_clean": float(clip_true.mean()),
        "mean_mismatched_clean": float(wrong["clip_score"].mean()),
        "top1_caption_accuracy_clean": float(np.mean(clip_true > wrong["clip_score"])),
    }

    aesthetic_clean = scores["clean"]["aesthetic_score"]
    low_quality = np.concatenate([scores["blur"]["aesthetic_score"], scores["noise"]["aesthetic_score"]])
    clean_q03, low_q97 = float(np.quantile(aesthetic_clean, 0.03)), float(np.quantile(low_quality, 0.97))
    aesthetic_min = math.floor(min(clean_q03, 0.5 * (clean_q03 + low_q97)) * 1000) / 1000
    aesthetic_metrics = {
        "threshold_rule": "middle of the gap between the 3rd percentile of clean and the 97th percentile of "
        "blurred/noisy aesthetic_score, at most the clean 3rd percentile (reject below)",
        "aesthetic_min": aesthetic_min,
        "clean_p03": clean_q03,
        "blur_noise_p97": low_q97,
        "clean_false_rejection": below(aesthetic_clean, aesthetic_min),
        "blur_noise_recall": below(low_quality, aesthetic_min),
        "blur_recall": below(scores["blur"]["aesthetic_score"], aesthetic_min),
        "noise_recall": below(scores["noise"]["aesthetic_score"], aesthetic_min),
        "watermarked_false_rejection": below(scores["watermark"]["aesthetic_score"], aesthetic_min),
        "near_duplicate_false_rejection": below(scores["near_duplicate"]["aesthetic_score"], aesthetic_min),
        "mean_clean": float(aesthetic_clean.mean()),
        "mean_blur_noise": float(low_quality.mean()),
    }

    threshold = 0.5
    positive = scores["watermark"]["watermark_prob"] >= threshold
    clean_flagged = scores["clean"]["watermark_prob"] >= threshold
    true_pos, false_pos = int(positive.sum()), int(clean_flagged.sum())
    watermark_metrics = {
        "threshold_rule": "0.5 on watermark_prob (reject at or above); watermarked vs clean, 1:1",
        "watermark_max": threshold,
        "recall": true_pos / len(positive),
        "precision": true_pos / max(1, true_pos + false_pos),
        "clean_false_positive_rate": false_pos / len(clean_flagged),
        "blur_false_positive_rate": float(np.mean(scores["blur"]["watermark_prob"] >= threshold)),
        "noise_false_positive_rate": float(np.mean(scores["noise"]["watermark_prob"] >= threshold)),
        "near_duplicate_false_positive_rate": float(np.mean(scores["near_duplicate"]["watermark_prob"] >= threshold)),
        "recall_at_0.8": float(np.mean(scores["watermark"]["watermark_prob"] >= 0.8)),
        "clean_false_positive_rate_at_0.8": float(np.mean(scores["clean"]["watermark_prob"] >= 0.8)),
        "greyscale_clean_false_positive_rate": float(np.mean(grey_clean["watermark_prob"] >= threshold)),
        "greyscale_watermarked_recall": float(np.mean(grey_watermarked["watermark_prob"] >= threshold)),
    }
    metrics = {
        "validation_scenes": len(captions),
        "clip": clip_metrics,
        "aesthetic": aesthetic_metrics,
        "watermark": watermark_metrics,
    }
    thresholds = {"clip_min": clip_min, "aesthetic_min": aesthetic_min, "watermark_max": threshold}
    return metrics, thresholds


def validate_video_clip(
    scorer: ImageTextScorer,
    val: dict[str, Any],
    *,
    clip_keep_quantile: float = 0.03,
    image_clip_min: float | None = None,
) -> tuple[dict[str, Any], float]:
    """Score clean clip frames against their true video caption and a colour/shape-swapped one; return (metrics,
    recommended ``curate_videos.filters.clip_min``), chosen like the image ``clip_min``."""
    right = scorer.score(val["frames"], val["captions"])["clip_score"]
    wrong = scorer.score(val["frames"], val["mismatched"])["clip_score"]
    clip_min = math.floor(float(np.quantile(right, clip_keep_quantile)) * 100) / 100
    swapped = np.asarray(val["swapped"])
    directions = np.asarray([clip.direction for clip in val["clips"]])

    def below(values: np.ndarray, threshold: float) -> float:
        return float(np.mean(values < threshold))

    metrics: dict[str, Any] = {
        "threshold_rule": f"{clip_keep_quantile:.0%} quantile of correct-caption clip_score on clean validation clip "
        "frames (reject below)",
        "validation_clips": len(right),
        "clip_min": clip_min,
        "correct_p03": float(np.quantile(right, 0.03)),
        "correct_p05": float(np.quantile(right, 0.05)),
        "correct_median": float(np.median(right)),
        "mismatched_p95": float(np.quantile(wrong, 0.95)),
        "mismatched_median": float(np.median(wrong)),
        "mismatch_recall": below(wrong, clip_min),
        "mismatch_recall_colour_swapped": below(wrong[swapped == "colour"], clip_min),
        "mismatch_recall_shape_swapped": below(wrong[swapped == "shape"], clip_min),
        "clean_false_rejection": below(right, clip_min),
        "top1_caption_accuracy": float(np.mean(right > wrong)),
        "correct_p05_by_direction": {d: float(np.quantile(right[directions == d], 0.05)) for d in DIRECTIONS},
    }
    if image_clip_min is not None:
        metrics["at_image_clip_min"] = {
            "clip_min": image_clip_min,
            "mismatch_recall": below(wrong, image_clip_min),
            "clean_false_rejection": below(right, image_clip_min),
        }
    return metrics, clip_min


# --------------------------------------------------------------------------------------------------- entry point


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path.resolve())


def train_scorers(
    out_dir: Path = DEFAULT_SCORERS_DIR,
    *,
    seed: int = 0,
    steps_clip: int = ScorerTrainingConfig.steps_clip,
    log_every: int = 50,
    **settings: Any,
) -> dict:
    """Train the toy CLIP, aesthetic head and watermark CNN; write weights + ``manifest.json`` to ``out_dir``.

    ``settings`` overrides other `ScorerTrainingConfig` fields (e.g. ``steps_watermark``, ``pool_scenes``). Files are
    written to a temporary folder next to ``out_dir`` and moved into place at the end, so a failed run leaves the
    previous weights intact. Returns the manifest.
    """
    cfg = ScorerTrainingConfig(seed=seed, steps_clip=steps_clip, **settings)
    if log_every < 1:
        raise ValueError(f"log_every={log_every!r}: must be a positive integer")
    out_dir = Path(out_dir)
    previous_threads = torch.get_num_threads()
    previous_deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    t_start = time.monotonic()
    wall: dict[str, float] = {}
    try:
        logger.info("toy scorers: rendering a pool of %d scenes (seed [%d, 0])", cfg.pool_scenes, seed)
        t = time.monotonic()
        pool = make_pool(np.random.default_rng([seed, 0]), cfg.pool_scenes, cfg.degraded_fraction)
        counts = {kind: int(len(pool.indices(kind))) for kind in KINDS}
        videos = make_video_pool(seed, cfg.pool_clips)
        counts["video_frames"] = len(videos)
        wall["pool_s"] = time.monotonic() - t
        logger.info("pool: %d images %s in %.1f s", len(pool), counts, wall["pool_s"])

        train_rng = np.random.default_rng([seed, 2])
        t = time.monotonic()
        clip_model, aesthetic = train_clip(pool, cfg, train_rng, log_every=log_every, videos=videos)
        wall["clip_s"] = time.monotonic() - t

        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        save_weights(clip_model, tmp / "clip.safetensors", dtype=torch.float16)
        # the head is fitted to the CLIP weights as they ship (fp16-rounded), not to the fp32 ones in memory
        scorers_cfg = toy_scorers_config(str(tmp), model_config_dir=str(BUNDLED_OPEN_CLIP_CONFIG_DIR))
        shipped_clip, _, _ = build_clip(scorers_cfg.clip)
        t = time.monotonic()
        embeddings = _embed(shipped_clip, pool.images)
        aesthetic = finetune_aesthetic(aesthetic, embeddings, pool.kinds, cfg, train_rng, log_every=log_every)
        wall["aesthetic_s"] = time.monotonic() - t
        save_weights(aesthetic, tmp / "aesthetic.safetensors", dtype=torch.float16)

        t = time.monotonic()
        detector = train_watermark(pool, cfg, train_rng, log_every=log_every)
        wall["watermark_s"] = time.monotonic() - t
        save_weights(detector.net, tmp / "watermark.safetensors", dtype=torch.float16)
        del pool, embeddings, videos

        t = time.monotonic()
        logger.info("validating on %d fresh scenes (seed [%d, 1])", cfg.val_scenes, seed)
        val = make_validation_set(np.random.default_rng([seed, 1]), cfg.val_scenes)
        scorer = ImageTextScorer(dataclasses.replace(scorers_cfg, torch_threads=cfg.threads, batch_size=256))
        metrics, thresholds = validate_scorers(scorer, val, clip_keep_quantile=cfg.clip_keep_quantile)
        logger.info("validating on %d fresh clips (seed [%d, %d, i])", cfg.val_clips, seed, VIDEO_VAL_STREAM)
        val_videos = make_video_validation_set(seed, cfg.val_clips)
        metrics["video_clip"], video_clip_min = validate_video_clip(
            scorer, val_videos, clip_keep_quantile=cfg.clip_keep_quantile, image_clip_min=thresholds["clip_min"]
        )
        wall["validation_s"] = time.monotonic() - t
        wall["total_s"] = time.monotonic() - t_start

        files = {}
        for name in ("clip", "aesthetic", "watermark"):
            path = tmp / f"{name}.safetensors"
            files[name] = {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = {
            "name": "toyworld-scorers",
            "description": "toy CLIP (alcm-toy-clip), aesthetic MLP and toy_cnn watermark detector for toy curation",
            "seed": seed,
            "training": _jsonable(dataclasses.asdict(cfg)),
            "steps": {"clip": cfg.steps_clip, "aesthetic": cfg.steps_aesthetic, "watermark": cfg.steps_watermark},
            "pool_counts": counts,
            "wall_time_s": {k: round(v, 1) for k, v in wall.items()},
            "scorers_config": toy_scorers_config(_relative(out_dir)).to_dict(),
            "files": files,
            "thresholds": thresholds,
            "video_thresholds": {"clip_min": video_clip_min},
            "metrics": metrics,
            "code": {
                rel: sha256_file(REPO_ROOT / rel)
                for rel in (
                    "toyworld/zoo.py",
                    "models/scorers.py",
                    "models/open_clip_configs/alcm-toy-clip.json",
                    "toyworld/scenes.py",
                    "toyworld/degrade.py",
                    "toyworld/videos.py",
                )
            },  # fmt: skip
            "environment": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "open_clip": open_clip.__version__,
                "numpy": np.__version__,
                "torch_threads": cfg.threads,
            },
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(tmp.iterdir()):
            path.chmod(0o644)  # files in a mkdtemp folder are private; the zoo is shared, read-only data
            os.replace(path, out_dir / path.name)
        shutil.rmtree(tmp)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic[0], warn_only=previous_deterministic[1])
    logger.info(
        "toy scorers written to %s in %.0f s; thresholds %s, video clip_min %.2f; clip mismatch recall %.3f "
        "(videos %.3f), aesthetic blur/noise recall %.3f, watermark recall %.3f precision %.3f",
        out_dir, wall["total_s"], thresholds, video_clip_min, metrics["clip"]["mismatch_recall_clean"],
        metrics["video_clip"]["mismatch_recall"], metrics["aesthetic"]["blur_noise_recall"],
        metrics["watermark"]["recall"], metrics["watermark"]["precision"],
    )  # fmt: skip
    return manifest


def publish_part(tmp: Path, out_dir: Path, manifest: dict) -> None:
    """Finish a zoo part written into the temporary folder ``tmp`` (next to ``out_dir``): write its
    ``manifest.json``, make it world-readable (a mkdtemp folder is private; the zoo is shared, read-only data) and
    move it into place, replacing the previous version."""
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for path in tmp.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    tmp.chmod(0o755)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train the toy model zoo.")
    parser.add_argument("--only", choices=["scorers"], default="scorers", help="which zoo members to train")
    parser.add_argument("--out", type=Path, default=DEFAULT_SCORERS_DIR, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps-clip", type=int, default=ScorerTrainingConfig.steps_clip)
    parser.add_argument("--steps-watermark", type=int, default=ScorerTrainingConfig.steps_watermark)
    parser.add_argument("--steps-aesthetic", type=int, default=ScorerTrainingConfig.steps_aesthetic)
    parser.add_argument("--pool-scenes", type=int, default=ScorerTrainingConfig.pool_scenes)
    parser.add_argument("--val-scenes", type=int, default=ScorerTrainingConfig.val_scenes)
    parser.add_argument("--pool-clips", type=int, default=ScorerTrainingConfig.pool_clips)
    parser.add_argument("--val-clips", type=int, default=ScorerTrainingConfig.val_clips)
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("__main__", "toyworld", "models"):
        logging.getLogger(name).setLevel(logging.INFO)
    if args.only == "scorers":
        train_scorers(
            args.out,
            seed=args.seed,
            steps_clip=args.steps_clip,
            log_every=args.log_every,
            steps_watermark=args.steps_watermark,
            steps_aesthetic=args.steps_aesthetic,
            pool_scenes=args.pool_scenes,
            val_scenes=args.val_scenes,
            pool_clips=args.pool_clips,
            val_clips=args.val_clips,
        )
    else:
        raise ValueError(f"--only={args.only!r}: must be one of scorers")
