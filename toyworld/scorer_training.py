"""Training the toy scorers: the image pool they learn from, and the training loops of the toy CLIP (jointly with
the aesthetic head), the aesthetic head alone and the watermark CNN. The why of each choice is in `toyworld.scorers`."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from models.scorers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AestheticMLP,
    ClipConfig,
    WatermarkDetector,
    build_clip,
    to_normalised_tensor,
)
from toyworld.clip_frames import VideoFramePool, video_mismatched_caption
from toyworld.degrade import add_noise, add_watermark, blur, near_duplicate
from toyworld.scenes import SHAPES, SceneSpec, caption_for, mismatched_caption, render_scene, sample_scene
from toyworld.scorer_config import (
    KINDS,
    TOY_AESTHETIC_HIDDEN,
    TOY_CLIP_MODEL,
    TOY_EMBED_DIM,
    TOY_IMAGE_SIZE,
    ScorerTrainingConfig,
)
from toyworld.zoo_common import warmup_cosine_lr

logger = logging.getLogger(__name__)

_DEGRADE: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "watermark": add_watermark,
    "blur": blur,
    "noise": add_noise,
    "near_duplicate": near_duplicate,
}
_LOW_QUALITY = ("blur", "noise")


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
        lr = warmup_cosine_lr(step, cfg.steps_clip, warmup, cfg.lr_clip)
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
def embed_images(model: nn.Module, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """L2-normalised float32 CLIP image embeddings of uint8 (N, H, W, 3) ``images``, ``batch`` at a time."""
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
        _set_lr(opt, warmup_cosine_lr(step, cfg.steps_aesthetic, 10, 1e-3))
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
        lr = warmup_cosine_lr(step, cfg.steps_watermark, warmup, cfg.lr_watermark)
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
