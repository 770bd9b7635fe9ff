"""Configuration of the training stages: the shared loop (:class:`TrainConfig`, run by :mod:`pipelines.train_loop`)
and each stage's own section (its Task, data step and training). Imports neither torch nor Ray, so that a profile
loads without either."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.consistency_config import TARGETS
from models.teacher_config import BETA_SCHEDULES

PRECISIONS = ("auto", "fp32", "bf16")
RESUMABLE_FIELDS = ("steps", "log_every", "checkpoint_every", "keep_checkpoints", "max_failures")
"""Training settings that may change between a run and its resumption (more steps, other logging or checkpointing):
they are not part of a run's name."""


@dataclass(frozen=True)
class TrainConfig:
    """The shared loop: scale, optimisation, DeepSpeed, logging, checkpoints."""

    name: str = "run"
    """Run name under ``storage_path``; re-running with the same name resumes from its latest checkpoint."""
    storage_path: str = "data/runs"
    """Where Ray Train keeps checkpoints: a local directory or an object-store URI (``s3://bucket/prefix``)."""
    num_workers: int = 2
    """Ray Train workers (DeepSpeed ranks)."""
    use_gpu: bool = False
    """One GPU per worker."""
    cpus_per_worker: float = 1.0
    """CPUs reserved by each worker."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each worker also reserves, e.g. ``{gpu_node: 0.01}`` to keep CPU training on the nodes
    of the cluster's GPU group (the KubeRay groups declare ``gpu_node`` / ``cpu_node``)."""
    steps: int = 100
    """Optimiser steps."""
    micro_batch_size: int = 4
    """Samples per worker per forward (DeepSpeed ``train_micro_batch_size_per_gpu``)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warmup steps from 0 to ``lr``."""
    grad_clip: float = 1.0
    """Gradient-norm clipping (0 = off)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1, 2 or 3."""
    offload_optimizer: bool = False
    """Keep optimizer states in CPU memory (ZeRO-Offload; builds DeepSpeed's CPU Adam on first use)."""
    precision: str = "auto"
    """``auto`` (bf16 on GPUs, fp32 on CPUs), ``fp32`` or ``bf16``."""
    log_every: int = 10
    """Log a line every N steps (rank 0)."""
    checkpoint_every: int = 100
    """Checkpoint every N steps (and always at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept by Ray Train (the newest)."""
    max_failures: int = 0
    """Worker failures Ray Train recovers from (restarting from the latest checkpoint)."""
    seed: int = 0
    """Seed of each worker's torch RNG (offset by rank)."""
    replay_mb: float = 256.0
    """A worker whose whole data shard fits in this many MB keeps the first pass's micro-batches and replays them
    on later passes instead of reading the shard again (0 = always read). Same batches, same order; it saves the
    Ray Data pass set-up (1–5 s per pass) that dominates training on small datasets."""

    def __post_init__(self) -> None:
        for name in ("num_workers", "steps", "micro_batch_size", "grad_accum", "log_every", "checkpoint_every",
                     "keep_checkpoints"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        # seed: the Tasks draw noise through numpy SeedSequence([seed, rank, step, ...]), which rejects negatives.
        for name in ("warmup_steps", "max_failures", "seed", "weight_decay", "grad_clip", "replay_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 0")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr!r}: must be > 0")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker={self.cpus_per_worker!r}: must be > 0")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage={self.zero_stage!r}: choose 0, 1, 2 or 3")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if any(v < 0 for v in self.resources.values()) or {"CPU", "GPU"} & set(self.resources):
            raise ValueError(f"resources={self.resources!r}: custom resources ≥ 0 only (CPU and GPU have their keys)")


@dataclass(frozen=True)
class StageSection:
    """What every training stage's own section has: its EMA target's decay, the encode step (frame size, latent cache,
    actor pool), the preview's steps and the shared loop's settings. Each stage's section adds its own fields and
    validates them, then these (``super().__post_init__()``)."""

    ema_decay: float = 0.95
    """μ of the EMA target."""
    resolution: int = 512
    """Training frames are resized (shorter side) and centre-cropped to this square size."""
    cache_dir: str = "data/cache"
    """Latent cache root (:mod:`pipelines.latent_cache`; on a cluster, a filesystem every node mounts)."""
    encode_batch_size: int = 8
    """Images or clips per batch of the encode step."""
    encode_actors: int = 1
    """Actors of the encode step (each loads the VAE and text encoder once)."""
    encode_cpus: float = 1.0
    """CPUs reserved by each encode actor."""
    encode_gpus: float = 0.0
    """GPUs reserved by each encode actor."""
    preview_steps: int = 4
    """Consistency sampling steps of the preview."""
    gradient_checkpointing: bool = False
    """Recompute the trainable networks' activations in the backward pass instead of keeping them (diffusers'
    gradient checkpointing): far less activation memory for about one more forward pass of compute. On in sd15
    (``bench/sd15_fake_gpu.py`` measures both)."""
    train: TrainConfig = TrainConfig()
    """The shared training loop (workers, steps, DeepSpeed, checkpoints); the run name gets the output's name."""

    def __post_init__(self) -> None:
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
        if any(not p.strip() for p in getattr(self, "preview_prompts", ())):
            raise ValueError("preview_prompts: an empty prompt; remove it")


@dataclass(frozen=True)
class DistillImageConfig(StageSection):
    """Stage 1, image consistency distillation (``pipelines.distill_image``): its Task, data step and training."""

    target: str = "ema"
    """Consistency target: ``ema`` (an EMA of the student's LoRA, the default) or ``student`` (no separate target)."""
    precompute_latents: bool = True
    """Encode every image with the frozen VAE once, in a Ray Data step, and cache the latents."""
    precompute_text: bool = True
    """Encode every caption with the frozen text encoder in the same step (else the workers encode token ids)."""
    preview_prompts: tuple[str, ...] = ()
    """Prompts sampled with the exported LoRA (LCM scheduler, ``preview_steps`` steps) into ``preview.png``; empty:
    no preview (the driver samples on CPU, so keep it for small teachers)."""

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target={self.target!r}: choose one of {', '.join(TARGETS)}")
        super().__post_init__()


VIDEO_INITS = ("online_only", "both", "none")
"""Stage 2's ``init``: where the stage-1 LoRA starts (``models.stage2``)."""
ADAPTERS = ("control", "image_to_video")
"""Stage 3's adapters."""


@dataclass(frozen=True)
class DistillVideoConfig(StageSection):
    """Stage 2, video consistency distillation (``pipelines.distill_video``): its Task, data step and training."""

    motion_adapter_dir: str = "toyworld/zoo/motion_teacher"
    """The teacher's pretrained motion module: a diffusers MotionAdapter directory (AnimateDiff for SD v1-5)."""
    beta_schedule: str | None = None
    """The noise schedule the motion module was trained on, which the video teacher, the distilled pipeline and
    stage 3 use: ``linear`` for AnimateDiff (its training and inference configs), while SD v1-5's own scheduler says
    ``scaled_linear``. A ``scheduler_config.json`` shipped in ``motion_adapter_dir`` takes precedence (a different
    value here is an error); null: the teacher's (``teacher.pretrained_dir``'s scheduler)."""
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
    frames: int = 16
    """Frames per training clip (the first ``frames`` of each curated clip's sampled frames)."""
    precompute_text: bool = True
    """Cache caption embeddings with the latents (else token ids; the workers run the text encoder)."""
    preview_prompts: tuple[str, ...] = ()
    """Prompts of ``preview.png`` (teacher DDIM 25 with CFG vs the distilled pipeline at ``preview_steps``); empty:
    no preview."""

    def __post_init__(self) -> None:
        if self.init not in VIDEO_INITS:
            raise ValueError(f"init={self.init!r}: choose one of {', '.join(VIDEO_INITS)}")
        if self.lora_ema not in ("scale", "explicit"):
            raise ValueError(f"lora_ema={self.lora_ema!r}: choose scale or explicit")
        if self.motion_init not in ("teacher", "zero"):
            raise ValueError(f"motion_init={self.motion_init!r}: choose teacher or zero")
        if not self.decoupled and self.init != "none":
            raise ValueError("decoupled=false trains the spatial LoRA from scratch: set init: none")
        if self.frames < 1:
            raise ValueError(f"frames={self.frames!r}: must be ≥ 1")
        if self.beta_schedule is not None and self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule={self.beta_schedule!r}: choose one of {', '.join(BETA_SCHEDULES)}, or "
                             "null for the teacher's")  # fmt: skip
        super().__post_init__()


@dataclass(frozen=True)
class AdaptConfig(StageSection):
    """Stage 3, teacher-free adaptation of the control and image-to-video adapters (``pipelines.adapt``); one run per
    adapter, named ``<train.name>-<adapter>-...``."""

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
    frames: int = 16
    """Frames per training clip."""

    def __post_init__(self) -> None:
        if not self.adapters or any(a not in ADAPTERS for a in self.adapters):
            raise ValueError(f"adapters={list(self.adapters)!r}: choose from {', '.join(ADAPTERS)}")
        if len(set(self.adapters)) != len(self.adapters):
            raise ValueError(f"adapters={list(self.adapters)!r}: an adapter is listed twice")
        for name in ("control_scale", "motion_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 0")
        if self.frames < 1:
            raise ValueError(f"frames={self.frames!r}: must be ≥ 1")
        super().__post_init__()
