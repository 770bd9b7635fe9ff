"""The toy scorers' profile and training settings: the toy ``ScorersConfig`` that curation loads from the committed
zoo, and `ScorerTrainingConfig`, the settings of a `toyworld.scorers.train_scorers` run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.scorers import AestheticConfig, ClipConfig, ScorersConfig, WatermarkConfig

DEFAULT_SCORERS_DIR = Path(__file__).resolve().parent / "zoo" / "scorers"
"""Where the committed toy scorer weights live."""

TOY_CLIP_MODEL = "alcm-toy-clip"
TOY_IMAGE_SIZE = 64
TOY_EMBED_DIM = 64
TOY_AESTHETIC_HIDDEN = (128, 64, 32, 16)

KINDS = ("clean", "watermark", "blur", "noise", "near_duplicate")
"""Image kinds in the training pool; every kind keeps the scene's true caption."""


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
