"""Typed, nested, frozen configuration: profiles (``configs/<name>.yaml``) plus ``key=value`` overrides.

Each component owns a frozen dataclass next to its code (``models.scorer_config.ScorersConfig``,
``filters.rules.FilterConfig``, ...), validates its own values in ``__post_init__`` and receives only its own
config. This module composes them into :class:`Config` and builds it from YAML strictly:

- an unknown key, a missing required key or a value of the wrong type raises :class:`ConfigError` naming the full
  dotted key, the bad value and the fix (e.g. the valid keys); a float must be finite (no ``.nan``, ``.inf``) and a
  string must not be blank (use null where a field allows it), except the fields in :data:`BLANK_ALLOWED`;
- a component's own ``ValueError`` is re-raised as :class:`ConfigError` naming full dotted keys: every ``name=``
  of one of its fields in the message becomes ``dotted.key.name=``, and the message is prefixed with the dotted path;
- :data:`LOADER_CHECKS` adds checks to components owned by other modules, before they are built;
- overrides ``a.b.c=value`` are parsed as YAML scalars/lists (``true``, ``0.5``, ``[1, 2]``, ``null``);
- relative local paths in fields named ``weights``, ``*_dir``, ``*_path`` or ``*_file`` are made absolute against
  the project root, so Ray workers (whose working directory differs) resolve them the same way. URIs
  (``scheme://...``) are left alone.

Profiles are complete configs: every profile file spells out every component. A test builds every shipped profile.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from contracts.gate import DIRECTIONS, GateRule
from filters.decode import DecodeConfig
from filters.dedup import DedupConfig
from filters.rules import FilterConfig
from filters.video_rules import VideoFilterConfig
from models.captioner_config import CaptionerConfig, GenerationConfig
from models.consistency_config import TARGETS, ConsistencyConfig
from models.pose import PoseConfig
from models.scorer_config import ScorersConfig
from models.teacher_config import TeacherConfig
from pipelines.train_config import TrainConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"


class ConfigError(ValueError):
    """A configuration value is missing, unknown, mistyped or invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class RayConfig:
    """How jobs reach Ray."""

    address: str | None = None
    """Cluster address (``ray://host:10001`` or ``auto``); null means ``$RAY_ADDRESS`` if set, else a local Ray."""
    num_cpus: int | None = None
    """CPUs of the local Ray started for a job (null: all of this machine's). Ignored for a cluster."""
    dashboard_address: str | None = None
    """Ray Jobs API address (``http://host:8265``) used by ``--submit``; null means ``$RAY_ADDRESS``."""

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus={self.num_cpus!r}: must be ≥ 1, or null for all CPUs")


@dataclass(frozen=True)
class ToyWorldConfig:
    """Size and seed of the generated toy world."""

    seed: int = 0
    """Seed of the generator; the same seed gives byte-identical data."""
    images: int = 2000
    """Number of image-text rows (clean and degraded)."""
    videos: int = 50
    """Number of text-video clips of moving shapes."""
    dancers: int = 10
    """Number of TikTok-style dancer sequences."""
    image_size: int = 64
    """Side of the square toy images, in pixels."""

    def __post_init__(self) -> None:
        # numpy's generators (default_rng([seed, stream, ...])) reject negative seeds.
        for name in ("seed", "images", "videos", "dancers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 0")
        if self.image_size < 16:
            raise ValueError(f"image_size={self.image_size!r}: must be ≥ 16 pixels")


@dataclass(frozen=True)
class CurationConfig:
    """The image-text curation job (``pipelines.curate_images``)."""

    dataset_name: str = "curated-images"
    """Name recorded in the output manifest."""
    decode: DecodeConfig = DecodeConfig()
    """Safe-decoding limits and the scorer thumbnail size."""
    filters: FilterConfig = FilterConfig()
    """Thresholds of the rule filters."""
    dedup: DedupConfig = DedupConfig()
    """Exact and near-duplicate detection."""
    batch_size: int = 64
    """Rows per batch in the decode and scoring stages."""
    scorer_actors: int = 2
    """Size of the Ray Data actor pool running the model scorers (each actor loads the models once)."""
    scorer_cpus: float = 1.0
    """CPUs reserved by each scorer actor."""
    scorer_gpus: float = 0.0
    """GPUs reserved by each scorer actor (0 on CPU machines)."""
    decode_cpus: float = 0.5
    """CPUs reserved by each read+decode task."""
    folder_chunk: int = 256
    """Image files of a plain folder input read per task."""
    rows_per_file: int = 5000
    """Largest number of rows in one output Parquet file."""

    def __post_init__(self) -> None:
        if not self.dataset_name.strip():
            raise ValueError("dataset_name='': must be a non-empty name")
        for name in ("batch_size", "scorer_actors", "folder_chunk", "rows_per_file"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        if self.decode_cpus <= 0:
            raise ValueError(f"decode_cpus={self.decode_cpus!r}: must be > 0")
        if self.scorer_cpus <= 0:
            raise ValueError(f"scorer_cpus={self.scorer_cpus!r}: must be > 0")
        if self.scorer_gpus < 0:
            raise ValueError(f"scorer_gpus={self.scorer_gpus!r}: must be ≥ 0")


@dataclass(frozen=True)
class ClipConfig:
    """How clips are decoded and sampled from videos and frame sequences."""

    frames: int = 16
    """Frames per clip."""
    stride: int = 4
    """Source frames between two sampled frames."""
    short_side: int = 512
    """Shorter side of the stored frames, in pixels (aspect kept)."""
    square: bool = False
    """Centre-crop the stored frames to ``short_side`` × ``short_side``."""
    frame_folder_fps: float = 30.0
    """Frame rate assumed for frame-folder (TikTok) sequences, which carry none."""
    max_bytes: int = 536_870_912
    """Largest video file read (bytes); larger ones are quarantined as ``too_large``."""
    max_pixels: int = 8_294_400
    """Largest frame (width × height) decoded; larger ones are quarantined as ``too_large`` (3840×2160 default)."""
    max_decode_frames: int = 18_000
    """Most frames decoded from one input; longer inputs are rejected as ``too_long``."""
    analysis_size: int = 32
    """Side of the grey thumbnails used for motion and scene-cut statistics."""
    chunk: int = 64
    """Video files or sequences read per task."""

    def __post_init__(self) -> None:
        for name in ("frames", "stride", "short_side", "max_bytes", "max_pixels", "max_decode_frames", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        if self.analysis_size < 4:
            raise ValueError(f"analysis_size={self.analysis_size!r}: must be ≥ 4 pixels")
        if self.frame_folder_fps <= 0:
            raise ValueError(f"frame_folder_fps={self.frame_folder_fps!r}: must be > 0")

    @property
    def span(self) -> int:
        """Source frames covered by one clip."""
        return (self.frames - 1) * self.stride + 1


AGGREGATIONS = ("clip_best", "first", "most_common")
"""How one caption is chosen among a clip's candidates."""


@dataclass(frozen=True)
class RecaptionConfig:
    """The recaptioning job (``pipelines.recaption``): BLIP captions for video clips (e.g. TikTok dances)."""

    dataset_name: str = "recaptioned-videos"
    """Name recorded in the output manifest."""
    frames_at: tuple[float, ...] = (0.1, 0.5, 0.9)
    """Positions in the sampled clip (0 = first frame, 1 = last) of the frames that get a candidate caption."""
    aggregation: str = "clip_best"
    """``clip_best`` (the candidate with the highest CLIP score against the middle frame), ``first``, or
    ``most_common`` (ties go to the candidate of the frame nearest the middle)."""
    control: PoseConfig = PoseConfig()
    """Control frames (pose maps) stored with each clip."""
    batch_size: int = 8
    """Clips per captioning batch."""
    actors: int = 2
    """Size of the Ray Data actor pool running the captioner (each actor loads the model once)."""
    actor_cpus: float = 1.0
    """CPUs reserved by each captioner actor."""
    actor_gpus: float = 0.0
    """GPUs reserved by each captioner actor."""
    ingest_cpus: float = 0.5
    """CPUs reserved by each read+ingest task."""
    rows_per_file: int = 1000
    """Largest number of clips in one output Parquet file."""

    def __post_init__(self) -> None:
        if not self.dataset_name.strip():
            raise ValueError("dataset_name='': must be a non-empty name")
        if not self.frames_at or any(not 0.0 <= f <= 1.0 for f in self.frames_at):
            raise ValueError(f"frames_at={list(self.frames_at)!r}: give one or more positions in [0, 1]")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={self.aggregation!r}: choose one of {', '.join(AGGREGATIONS)}")
        for name in ("batch_size", "actors", "rows_per_file"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        for name in ("actor_cpus", "ingest_cpus"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be > 0")
        if self.actor_gpus < 0:
            raise ValueError(f"actor_gpus={self.actor_gpus!r}: must be ≥ 0")


@dataclass(frozen=True)
class VideoCurationConfig:
    """The text-video curation job (``pipelines.curate_videos``)."""

    dataset_name: str = "curated-videos"
    """Name recorded in the output manifest."""
    filters: VideoFilterConfig = VideoFilterConfig()
    """Thresholds of the video filters and the scene-cut policy."""
    score_frames_at: tuple[float, ...] = (0.0, 0.5, 1.0)
    """Positions in the sampled clip of the frames scored for watermark (max) and aesthetic (mean); the CLIP
    score uses the middle sampled frame."""
    batch_size: int = 8
    """Clips per scoring batch."""
    scorer_actors: int = 2
    """Size of the Ray Data actor pool running the scorers."""
    scorer_cpus: float = 1.0
    """CPUs reserved by each scorer actor."""
    scorer_gpus: float = 0.0
    """GPUs reserved by each scorer actor."""
    ingest_cpus: float = 0.5
    """CPUs reserved by each read+ingest task."""
    rows_per_file: int = 1000
    """Largest number of clips in one output Parquet file."""

    def __post_init__(self) -> None:
        if not self.dataset_name.strip():
            raise ValueError("dataset_name='': must be a non-empty name")
        if not self.score_frames_at or any(not 0.0 <= f <= 1.0 for f in self.score_frames_at):
            raise ValueError(f"score_frames_at={list(self.score_frames_at)!r}: give one or more positions in [0, 1]")
        for name in ("batch_size", "scorer_actors", "rows_per_file"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        for name in ("scorer_cpus", "ingest_cpus"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be > 0")
        if self.scorer_gpus < 0:
            raise ValueError(f"scorer_gpus={self.scorer_gpus!r}: must be ≥ 0")


@dataclass(frozen=True)
class ImageDistillConfig:
    """Stage 1, image consistency distillation (``pipelines.distill_image``): its Task, data step and training."""

    target: str = "ema"
    """Consistency target: ``ema`` (an EMA of the student's LoRA, the default) or ``student`` (no separate target)."""
    ema_decay: float = 0.95
    """Decay of the EMA target."""
    resolution: int = 512
    """Training images are resized (shorter side) and centre-cropped to this square size (the teacher's)."""
    precompute_latents: bool = True
    """Encode every image with the frozen VAE once, in a Ray Data step, and cache the latents."""
    precompute_text: bool = True
    """Encode every caption with the frozen text encoder in the same step (else the workers encode token ids)."""
    cache_dir: str = "data/cache/stage1"
    """Where precomputed latents are cached, keyed by the dataset digest, the VAE/text encoder digests and settings."""
    encode_batch_size: int = 32
    """Images per batch in the encode step."""
    encode_actors: int = 1
    """Actors of the encode step (each loads the VAE and text encoder once)."""
    encode_cpus: float = 1.0
    """CPUs reserved by each encode actor."""
    encode_gpus: float = 0.0
    """GPUs reserved by each encode actor."""
    preview_prompts: tuple[str, ...] = ()
    """Prompts sampled with the exported LoRA (LCM scheduler, ``preview_steps`` steps) into ``preview.png``; empty:
    no preview (the driver samples on CPU, so keep it for small teachers)."""
    preview_steps: int = 4
    """Consistency sampling steps of the preview."""
    train: TrainConfig = TrainConfig()
    """The shared training loop (workers, steps, DeepSpeed, checkpoints); the run name gets the output's name."""

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target={self.target!r}: choose one of {', '.join(TARGETS)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay!r}: must be in [0, 1)")
        for name in ("resolution", "encode_batch_size", "encode_actors", "preview_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        if self.resolution % 8:
            raise ValueError(f"resolution={self.resolution!r}: must be a multiple of 8")
        if self.encode_cpus <= 0:
            raise ValueError(f"encode_cpus={self.encode_cpus!r}: must be > 0")
        if self.encode_gpus < 0:
            raise ValueError(f"encode_gpus={self.encode_gpus!r}: must be ≥ 0")
        if any(not p.strip() for p in self.preview_prompts):
            raise ValueError("preview_prompts: an empty prompt; remove it")


VIDEO_INITS = ("online_only", "both", "none")
"""Stage 2's ``init``: where the stage-1 LoRA starts (``models.stage2``)."""
ADAPTERS = ("control", "image_to_video")
"""Stage 3's adapters."""


@dataclass(frozen=True)
class VideoDistillConfig:
    """Stage 2, video consistency distillation (``alcm distill video``)."""

    motion_adapter_dir: str = "toyworld/zoo/motion_teacher"
    """The teacher's pretrained motion module: a diffusers MotionAdapter directory (AnimateDiff for SD v1-5)."""
    init: str = "online_only"
    """Where the stage-1 LoRA starts: ``online_only`` (the paper: online model only, the EMA target receives it),
    ``both``, or ``none`` (not used)."""
    decoupled: bool = True
    """False: the coupled baseline (no stage-1 LoRA; a spatial LoRA and the motion layers train jointly on video from
    the raw teacher; needs ``init: none``)."""
    lora_ema: str = "scale"
    """``online_only``: the target's LoRA as the online LoRA at scale (1 − μⁿ)² (``scale``) or an explicit EMA of
    zero-initialised factors (``explicit``); they agree."""
    motion_init: str = "teacher"
    """The online temporal layers start from the teacher's motion module (``teacher``) or zero-initialised
    (``zero``)."""
    ema_decay: float = 0.95
    """μ of the target's EMA."""
    frames: int = 16
    """Frames per training clip (the first ``frames`` of each curated clip's sampled frames)."""
    resolution: int = 512
    """Square frame size the VAE encodes."""
    precompute_text: bool = True
    """Cache caption embeddings with the latents (else token ids; the workers run the text encoder)."""
    cache_dir: str = "data/cache/stage2"
    """Latent cache root (keyed by dataset, VAE/text-encoder digests and settings)."""
    encode_batch_size: int = 8
    """Clips per encode batch."""
    encode_actors: int = 1
    """Encode actors."""
    encode_cpus: float = 1.0
    """CPUs per encode actor."""
    encode_gpus: float = 0.0
    """GPUs per encode actor."""
    preview_prompts: tuple[str, ...] = ()
    """Prompts of ``preview.png`` (teacher DDIM 25 with CFG vs the distilled pipeline at ``preview_steps``); empty:
    no preview."""
    preview_steps: int = 4
    """LCM steps of the preview."""
    train: TrainConfig = TrainConfig()
    """The shared loop's settings."""

    def __post_init__(self) -> None:
        if self.init not in VIDEO_INITS:
            raise ValueError(f"init={self.init!r}: choose one of {', '.join(VIDEO_INITS)}")
        if self.lora_ema not in ("scale", "explicit"):
            raise ValueError(f"lora_ema={self.lora_ema!r}: choose scale or explicit")
        if self.motion_init not in ("teacher", "zero"):
            raise ValueError(f"motion_init={self.motion_init!r}: choose teacher or zero")
        if not self.decoupled and self.init != "none":
            raise ValueError("decoupled=false trains the spatial LoRA from scratch: set init: none")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay!r}: must be in [0, 1)")
        for name in ("frames", "resolution", "encode_batch_size", "encode_actors", "preview_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        if self.resolution % 8:
            raise ValueError(f"resolution={self.resolution!r}: must be a multiple of 8")
        if self.encode_cpus <= 0:
            raise ValueError(f"encode_cpus={self.encode_cpus!r}: must be > 0")
        if self.encode_gpus < 0:
            raise ValueError(f"encode_gpus={self.encode_gpus!r}: must be ≥ 0")
        if any(not p.strip() for p in self.preview_prompts):
            raise ValueError("preview_prompts: an empty prompt; remove it")


@dataclass(frozen=True)
class AdaptConfig:
    """Stage 3, teacher-free adaptation of the control and image-to-video adapters (``alcm adapt``)."""

    adapters: tuple[str, ...] = ADAPTERS
    """Which adapters to train: ``control`` (ControlNet on pose frames) and/or ``image_to_video``."""
    control_init_dir: str | None = None
    """An image ControlNet directory to adapt (diffusers ``ControlNetModel``); null: a new ControlNet copied from the
    image UNet's encoder (from scratch)."""
    control_scale: float = 1.0
    """ControlNet residual scale, in training and in the preview."""
    motion_scale: float = 1.0
    """Image-to-video adapter: scale of its frame position embedding."""
    tune_lora: bool = False
    """Also tune a LoRA (stage 1's LoRA settings, spatial layers) with the adapter, as the paper does for
    compatibility; exported next to the adapter."""
    ema_decay: float = 0.95
    """μ of the EMA target of the adapter (consistency training's target)."""
    frames: int = 16
    """Frames per training clip."""
    resolution: int = 512
    """Square frame size."""
    cache_dir: str = "data/cache/stage3"
    """Latent cache root."""
    encode_batch_size: int = 8
    """Clips per encode batch."""
    encode_actors: int = 1
    """Encode actors."""
    encode_cpus: float = 1.0
    """CPUs per encode actor."""
    encode_gpus: float = 0.0
    """GPUs per encode actor."""
    preview_steps: int = 4
    """LCM steps of the preview."""
    train: TrainConfig = TrainConfig()
    """The shared loop's settings (one run per adapter, named ``<name>-<adapter>-...``)."""

    def __post_init__(self) -> None:
        if not self.adapters or any(a not in ADAPTERS for a in self.adapters):
            raise ValueError(f"adapters={list(self.adapters)!r}: choose from {', '.join(ADAPTERS)}")
        if len(set(self.adapters)) != len(self.adapters):
            raise ValueError(f"adapters={list(self.adapters)!r}: an adapter is listed twice")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay!r}: must be in [0, 1)")
        for name in ("control_scale", "motion_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 0")
        for name in ("frames", "resolution", "encode_batch_size", "encode_actors", "preview_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        if self.resolution % 8:
            raise ValueError(f"resolution={self.resolution!r}: must be a multiple of 8")
        if self.encode_cpus <= 0:
            raise ValueError(f"encode_cpus={self.encode_cpus!r}: must be > 0")
        if self.encode_gpus < 0:
            raise ValueError(f"encode_gpus={self.encode_gpus!r}: must be ≥ 0")


EVAL_TEACHER_METHODS = ("ddim", "dpmsolver++")
FVD_EXTRACTORS = ("toy_clip", "i3d")
FVD_REFERENCES = ("real", "teacher")


@dataclass(frozen=True)
class EvaluateConfig:
    """Checkpoint evaluation (``alcm eval``): few-step tables of the checkpoint against the teacher's samplers."""

    prompts: str = "toy"
    """``toy`` (held-out toy prompts with ground-truth renders) or a YAML file: a list of prompts (strings or
    ``{caption: ...}``), e.g. the UCF-101 class prompts."""
    num_prompts: int = 8
    """How many prompts (toy: generated held-out prompts; YAML: the first N, 0 = all)."""
    videos_per_prompt: int = 1
    """Noise seeds per prompt (videos or images per prompt)."""
    seed: int = 1
    """Prompt and noise seed (the toy teachers were validated on seed 0)."""
    student_steps: tuple[int, ...] = (1, 2, 4, 8)
    """Consistency-sampling steps of the checkpoint (no CFG, as the paper reports)."""
    teacher_steps: tuple[int, ...] = (1, 2, 4, 8, 25, 50)
    """Steps of the teacher's samplers (with CFG)."""
    teacher_methods: tuple[str, ...] = EVAL_TEACHER_METHODS
    """Teacher samplers: ``ddim`` (trailing) and/or ``dpmsolver++`` (second order, trailing)."""
    reference_steps: int = 50
    """The teacher's DDIM steps whose output is the reference for "distance to the teacher" (one of
    teacher_steps)."""
    guidance_scale: float | None = None
    """Teacher CFG scale; null: 1 + the middle of the distillation's w range (what the student learned)."""
    frames: int | None = None
    """Frames per video; null: distill_video.frames."""
    resolution: int | None = None
    """Square frame size; null: distill_video.resolution (videos) or the teacher's native size (images)."""
    fvd_extractor: str = "toy_clip"
    """FVD features: ``toy_clip`` (the scorer CLIP's image tower pooled over time) or ``i3d`` (i3d_path)."""
    i3d_path: str | None = None
    """TorchScript I3D (Kinetics-400) file, for ``fvd_extractor: i3d``."""
    fvd_reference: str = "real"
    """What FVD compares with: ``real`` (ground-truth renders of the toy prompts) or ``teacher`` (the teacher's
    reference_steps DDIM output, when no real videos exist for the prompts)."""
    grid_prompts: int = 3
    """Prompts shown in the sample grid (GIF for videos, PNG for images)."""
    workers: int = 2
    """Ray actors generating in parallel (each loads the pipelines once)."""
    cpus_per_worker: float = 1.0
    """CPUs per actor."""
    gpus_per_worker: float = 0.0
    """GPUs per actor (1 on a GPU cluster)."""
    torch_threads: int = 1
    """torch threads per actor (CPU)."""

    def __post_init__(self) -> None:
        if self.prompts != "toy" and not self.prompts.endswith((".yaml", ".yml")):
            raise ValueError(f"prompts={self.prompts!r}: use toy, or a YAML file (.yaml, .yml) that lists the prompts")
        for name in ("student_steps", "teacher_steps"):
            steps = getattr(self, name)
            if not steps or any(s < 1 for s in steps) or len(set(steps)) != len(steps):
                raise ValueError(f"{name}={list(steps)!r}: distinct step counts ≥ 1, e.g. [1, 2, 4, 8]")
        if not self.teacher_methods or any(m not in EVAL_TEACHER_METHODS for m in self.teacher_methods):
            raise ValueError(f"teacher_methods={list(self.teacher_methods)!r}: choose from "
                             f"{', '.join(EVAL_TEACHER_METHODS)}")  # fmt: skip
        if "ddim" not in self.teacher_methods:
            raise ValueError(f"teacher_methods={list(self.teacher_methods)!r}: must include ddim (the reference is the "
                             "teacher's DDIM output)")  # fmt: skip
        if self.reference_steps not in self.teacher_steps:
            steps, wanted = list(self.teacher_steps), sorted([*self.teacher_steps, self.reference_steps])
            add = f" or add it: teacher_steps={wanted}" if self.reference_steps >= 1 else ""
            raise ValueError(f"reference_steps={self.reference_steps}: must be one of teacher_steps {steps}; pick "
                             f"one of them{add}")  # fmt: skip
        if self.fvd_extractor not in FVD_EXTRACTORS:
            raise ValueError(f"fvd_extractor={self.fvd_extractor!r}: choose one of {', '.join(FVD_EXTRACTORS)}")
        if self.fvd_extractor == "i3d" and not self.i3d_path:
            raise ValueError("fvd_extractor=i3d needs i3d_path (a TorchScript I3D file)")
        if self.fvd_reference not in FVD_REFERENCES:
            raise ValueError(f"fvd_reference={self.fvd_reference!r}: choose one of {', '.join(FVD_REFERENCES)}")
        if self.fvd_reference == "real" and self.prompts != "toy":
            raise ValueError(f"fvd_reference=real needs prompts: toy (ground-truth renders), not prompts="
                             f"{self.prompts!r}; use fvd_reference: teacher for a prompt file")  # fmt: skip
        # seed: the noise seeds and the toy prompts come from numpy generators, which reject negative seeds.
        for name in ("num_prompts", "seed", "grid_prompts"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 0")
        for name in ("videos_per_prompt", "workers", "torch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        if self.prompts == "toy" and self.num_prompts * self.videos_per_prompt < 2:
            raise ValueError(f"num_prompts={self.num_prompts} × videos_per_prompt={self.videos_per_prompt}: a Fréchet "
                             "distance needs at least 2 samples")  # fmt: skip
        for name in ("frames", "resolution"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1, or null for the default")
        if self.resolution is not None and self.resolution % 8:
            raise ValueError(f"resolution={self.resolution!r}: must be a multiple of 8, or null")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker={self.cpus_per_worker!r}: must be > 0")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker={self.gpus_per_worker!r}: must be ≥ 0")
        if self.guidance_scale is not None and self.guidance_scale < 1.0:
            raise ValueError(f"guidance_scale={self.guidance_scale}: must be ≥ 1 (1 = no guidance) or null")


@dataclass(frozen=True)
class PromotionConfig:
    """The promotion gate (``alcm registry promote``, the eval flow's ``promote``): rules per checkpoint kind."""

    video: tuple[GateRule, ...] = (GateRule("fvd@4", "lower", 0.0), GateRule("clipsim@4", "higher", 0.0))
    """Rules for video checkpoints (stage 2): metric@steps of the eval headline, direction, margin."""
    image: tuple[GateRule, ...] = (GateRule("fid@4", "lower", 0.0), GateRule("clipsim@4", "higher", 0.0))
    """Rules for image checkpoints (stage 1)."""

    def __post_init__(self) -> None:
        for name in ("video", "image"):
            if not getattr(self, name):
                raise ValueError(f"{name}=[]: give one or more rules, e.g. [{{metric: fvd@4, direction: lower, "
                                 "margin: 0.0}]; an empty gate cannot promote")  # fmt: skip


@dataclass(frozen=True)
class Config:
    """The whole platform configuration (one profile, fully resolved)."""

    profile: str
    """Profile name (``toy`` or ``sd15``)."""
    data_dir: str
    """Root of the platform's data (datasets, runs); relative paths are under the project root."""
    ray: RayConfig
    """How jobs reach Ray."""
    toyworld: ToyWorldConfig
    """The toy world generator."""
    scorers: ScorersConfig
    """Model scorers used by curation (CLIP, aesthetic, watermark)."""
    curation: CurationConfig
    """The image-text curation job."""
    video: ClipConfig
    """How clips are decoded and sampled (recaptioning and video curation)."""
    captioner: CaptionerConfig
    """The BLIP captioner (backend, weights, generation settings)."""
    recaption: RecaptionConfig
    """The recaptioning job."""
    video_curation: VideoCurationConfig
    """The text-video curation job."""
    teacher: TeacherConfig
    """The frozen Stable-Diffusion teacher (local diffusers directory) and the student's LoRA."""
    consistency: ConsistencyConfig
    """Consistency-distillation math: DDIM grid, boundary scalings, guidance range, loss."""
    distill_image: ImageDistillConfig
    """Stage 1, image consistency distillation."""
    distill_video: VideoDistillConfig
    """Stage 2, video consistency distillation."""
    adapt: AdaptConfig
    """Stage 3, teacher-free adaptation of the control and image-to-video adapters."""
    evaluate: EvaluateConfig
    """Checkpoint evaluation: prompts, methods × steps, FVD extractor, workers."""
    promotion: PromotionConfig
    """The promotion gate's rules."""


# ----------------------------------------------------------------------------------------------- building


BLANK_ALLOWED = {(GenerationConfig, "prompt")}
"""(component, field) whose value may be a blank string: BLIP also captions from an empty prompt."""

_CAPTIONER_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def _check_generation(v: dict[str, Any]) -> None:
    if v["seed"] < 0:
        raise ValueError(f"seed={v['seed']!r}: must be ≥ 0")
    if v["min_new_tokens"] > v["max_new_tokens"]:
        raise ValueError(f"min_new_tokens={v['min_new_tokens']!r}, max_new_tokens={v['max_new_tokens']!r}: need "
                         "min_new_tokens ≤ max_new_tokens")  # fmt: skip


def _check_captioner(v: dict[str, Any]) -> None:
    if not _CAPTIONER_DEVICE.fullmatch(v["device"]):
        raise ValueError(f"device={v['device']!r}: choose cpu, cuda or cuda:N")


def _check_gate_rule(v: dict[str, Any]) -> None:
    if "@" not in v["metric"]:
        raise ValueError(f"metric={v['metric']!r}: expected metric@steps, e.g. fvd@4")
    if v["direction"] not in DIRECTIONS:
        raise ValueError(f"direction={v['direction']!r}: choose one of {', '.join(DIRECTIONS)}")
    if v["margin"] < 0:
        raise ValueError(f"margin={v['margin']!r}: must be ≥ 0 (how much better than production, in metric units)")


LOADER_CHECKS: dict[type, Callable[[dict[str, Any]], None]] = {
    GenerationConfig: _check_generation,
    CaptionerConfig: _check_captioner,
    GateRule: _check_gate_rule,
}
"""Checks run on a component owned by another module (given all its field values) before it is built: ones it
lacks (a seed ≥ 0 like every other seed, min ≤ max, a strict device), or ones whose own message does not name the
field as ``name=value``, so that the error would not name the dotted key."""


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _qualify(message: str, cls: type, key: str) -> str:
    """A component's error message with its fields named by full dotted key: ``rank=0`` → ``teacher.lora.rank=0``."""
    if not key:
        return message
    own = key.rsplit(".", 1)[-1] + "."
    if message.startswith(own):  # a component that names itself: clip.weights=... under scorers.clip
        message = message[len(own) :]
    names = "|".join(re.escape(f.name) for f in dataclasses.fields(cls))
    message = re.sub(rf"(?<![\w.])(?:{names})=", lambda m: f"{key}.{m[0]}", message)
    if message.startswith(f"{key}."):
        return message
    return f"{key}.{message}" if re.match(rf"(?:{names})\b", message) else f"{key}: {message}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _is_path_field(name: str) -> bool:
    return name == "weights" or name == "data_dir" or name.endswith(("_dir", "_path", "_file"))


def _resolve_path(value: str) -> str:
    if "://" in value:
        return value
    p = Path(value).expanduser()
    # normpath, not resolve(): a venv's bin/python is a symlink whose target is a different interpreter.
    return os.path.normpath(p if p.is_absolute() else PROJECT_ROOT / p)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}=null: a value is required ({_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}={value!r}: expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping, e.g. {{gpu_node: 1}}")
        key_type, value_type = typing.get_args(tp)
        return {_convert(key_type, k, key): _convert(value_type, v, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}={value!r}: expected a list, e.g. [1024, 128]")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r}: expected a number")
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value!r}: expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string (quote it in YAML)")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported config type {_type_name(tp)}")


def build(cls: type, data: Any, key: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from a plain mapping, strictly (see the module docstring)."""
    where = key or "<root>"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}={data!r}: expected a mapping of {cls.__name__} fields")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        bad = f"{key}.{unknown[0]}" if key else unknown[0]
        raise ConfigError(f"unknown key {bad!r}; valid keys of {where}: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name not in data:
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if has_default:
                continue
            raise ConfigError(f"missing key {sub!r} ({_type_name(hints[name])}); add it to the profile or --set it")
        value = _convert(hints[name], data[name], sub)
        if (cls, name) not in BLANK_ALLOWED:
            _check_not_blank(value, sub, nullable=type(None) in typing.get_args(hints[name]))
        if isinstance(value, str) and _is_path_field(name):
            value = _resolve_path(value)
        kwargs[name] = value
    try:
        if cls in LOADER_CHECKS:
            LOADER_CHECKS[cls]({**_defaults(cls), **kwargs})
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(_qualify(str(exc), cls, key)) from exc


def _check_not_blank(value: Any, key: str, *, nullable: bool) -> None:
    texts = [(key, value)] if isinstance(value, str) else []
    if isinstance(value, tuple):
        texts = [(f"{key}[{i}]", v) for i, v in enumerate(value) if isinstance(v, str)]
    for where, text in texts:
        if not text.strip():
            raise ConfigError(f"{where}={text!r}: blank; give a value{', or null' if nullable else ''}")


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and its YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. curation.filters.min_side=48")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: the key must be a dotted path, e.g. curation.batch_size")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of ``data`` with each ``key=value`` override applied (intermediate mappings created)."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: i + 1])} is a value, not a section")
            node = nxt
        node[path[-1]] = value
    return out


def profile_path(profile: str) -> Path:
    """The YAML file of a profile name (``toy``) or an explicit path to a YAML file."""
    candidate = Path(profile)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"profile file {candidate} does not exist")
        return candidate
    path = CONFIG_DIR / f"{profile}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"profile={profile!r}: no {path}; shipped profiles: {shipped} (or pass a .yaml path)")
    return path


def shipped_profiles() -> list[str]:
    """Names of the profiles under ``configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(profile: str = "toy", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a profile, apply overrides, and build the validated :class:`Config`."""
    path = profile_path(profile)
    try:
        data = _parse_profile(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"profile file {path}: not valid YAML ({exc})") from exc
    return build(Config, apply_overrides(data, list(overrides)))


@functools.lru_cache(maxsize=16)
def _parse_profile(text: str) -> Any:
    # Cached by content: never mutate the result (apply_overrides copies it).
    return yaml.safe_load(text) or {}


def config_from_dict(data: dict) -> Config:
    """Rebuild a :class:`Config` from :func:`to_dict` output (e.g. a manifest or a submitted job's environment)."""
    return build(Config, data)


def to_dict(obj: Any) -> dict:
    """Plain, JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))
